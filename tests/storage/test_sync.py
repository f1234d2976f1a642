"""S3 sync through the HTTP API against a real S3-compatible server (moto on 127.0.0.1): what is sent,
what is recorded, what a later sync sends, and the errors (pipeline spec §8.3; issue 13)."""

from __future__ import annotations

import hashlib
import io
import socket
from pathlib import Path
from typing import Any

from litestar.testing import TestClient
from PIL import Image

from kroma.domain.storage_sync import S3_DISABLED, S3_NO_BUCKET
from tests.http.log_seed import rows, services_of
from tests.storage.conftest import BASE, PREFIX, objects

SYNC = f"{BASE}/storage/s3/sync"


def write(root: Path, relative: str, data: bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (24, 16), color).save(out, format="PNG")
    return out.getvalue()


def events(client: TestClient, kind: str | None = None) -> list[dict[str, Any]]:
    query = f"&type={kind}" if kind else ""
    return client.get(f"/api/events?limit=1000{query}").json()["events"]


def head(client: TestClient) -> int:
    return client.blocking_portal.call(services_of(client).store.head)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def test_sync_uploads_records_and_resync_sends_nothing(
    client: TestClient, s3_project: dict, project_root: Path, moto_url: str
) -> None:
    files = {
        "outputs/a.png": png((10, 10, 10)),
        "outputs/b.png": png((200, 200, 200)),
        ".kroma/pipeline.settings.json": b'{"pipeline": {}}',
        "notes/readme.txt": b"hello",
    }
    for relative, data in files.items():
        write(project_root, relative, data)
    write(project_root, "exports/half.tar.gz.partial", b"not yet")  # never sent
    uploaded = client.post(f"{BASE}/assets", files=[("file", ("scene.png", png((90, 0, 0)), "image/png"))]).json()
    asset = uploaded["assets"][0]
    files["inputs/scene.png"] = (project_root / "inputs/scene.png").read_bytes()

    response = client.post(SYNC, json={})
    assert response.status_code == 200, response.text
    body = response.json()
    base = f"{PREFIX}/{s3_project['id']}/"
    assert set(body) == {"ok", "sync", "audit_id"}
    sync = body["sync"]
    assert sync["destination"] == f"s3://{s3_project['bucket']}/{base}"
    assert (sync["uploaded"], sync["skipped"], sync["dry_run"]) == (5, 0, False)
    assert sync["bytes"] == sum(len(d) for d in files.values())
    assert {f["path"] for f in sync["files"]} == set(files)

    stored = objects(moto_url, s3_project["bucket"])
    assert stored == {base + relative: data for relative, data in files.items()}

    synced = events(client, "asset.synced")
    assert len(synced) == 5
    for e in synced:
        d = e["data"]
        data = files[d["path"]]
        assert d["key"] == base + d["path"] and d["size"] == len(data) and d["sha256"] == sha(data)
        assert d["etag"] == md5(data)  # what S3 answered for these exact bytes
        assert d["project_id"] == s3_project["id"] and e["stream_id"] == f"storage_sync:{sync['sync_id']}"
    by_path = {e["data"]["path"]: e["data"] for e in synced}
    assert by_path["inputs/scene.png"]["asset_ids"] == [asset["id"]]
    started = [e for e in events(client, "storage_sync.started")]
    assert [e["event_id"] for e in started] == [body["audit_id"]]
    assert started[0]["data"]["files"] == 5
    assert [e["data"]["status"] for e in events(client, "storage_sync.completed")] == ["completed"]

    listed = client.get(f"{BASE}/storage/s3/objects").json()
    assert listed["count"] == 5
    assert {o["key"]: o["sha256"] for o in listed["objects"]} == {base + p: sha(d) for p, d in files.items()}

    again = client.post(SYNC, json={}).json()
    assert (again["sync"]["uploaded"], again["sync"]["skipped"], again["sync"]["bytes"]) == (0, 5, 0)
    assert again["sync"]["files"] == [] and again["audit_id"] != body["audit_id"]
    assert len(events(client, "asset.synced")) == 5


def test_a_changed_file_is_sent_again(client: TestClient, s3_project: dict, project_root: Path, moto_url: str) -> None:
    write(project_root, "outputs/a.png", png((1, 1, 1)))
    write(project_root, "outputs/b.png", png((2, 2, 2)))
    assert client.post(SYNC, json={}).json()["sync"]["uploaded"] == 2
    changed = write(project_root, "outputs/b.png", png((250, 0, 0))).read_bytes()
    write(project_root, "outputs/c.png", png((3, 3, 3)))

    dry = client.post(SYNC, json={"dry_run": True}).json()
    reasons = {f["path"]: f["reason"] for f in dry["sync"]["files"]}
    assert reasons == {"outputs/b.png": "changed", "outputs/c.png": "new"}

    body = client.post(SYNC, json={}).json()["sync"]
    assert (body["uploaded"], body["skipped"]) == (2, 1)
    assert {f["path"] for f in body["files"]} == {"outputs/b.png", "outputs/c.png"}
    key = f"{PREFIX}/{s3_project['id']}/outputs/b.png"
    assert objects(moto_url, s3_project["bucket"])[key] == changed
    last = [e["data"] for e in events(client, "asset.synced") if e["data"]["path"] == "outputs/b.png"]
    assert [d["sha256"] for d in last] == [sha(png((2, 2, 2))), sha(changed)]


def test_dry_run_lists_what_it_would_send_and_appends_nothing(
    client: TestClient, s3_project: dict, project_root: Path, moto_url: str
) -> None:
    write(project_root, "outputs/a.png", b"a" * 10)
    write(project_root, "outputs/b.png", b"b" * 20)
    before = head(client)
    body = client.post(SYNC, json={"dry_run": True}).json()
    assert "audit_id" not in body
    sync = body["sync"]
    assert (sync["dry_run"], sync["uploaded"], sync["bytes"], sync["skipped"]) == (True, 2, 30, 0)
    assert "sync_id" not in sync
    assert [(f["path"], f["reason"], f["size"]) for f in sync["files"]] == [
        ("outputs/a.png", "new", 10),
        ("outputs/b.png", "new", 20),
    ]
    assert head(client) == before
    assert objects(moto_url, s3_project["bucket"]) == {}


def test_disabled_unconfigured_and_missing_root_give_the_spec_messages(
    client: TestClient, s3_project: dict, project_root: Path, moto_url: str
) -> None:
    def error(body: dict | None = None) -> tuple[int, dict]:
        response = client.post(SYNC, json=body or {})
        return response.status_code, response.json()

    before = head(client)
    client.put(f"{BASE}/storage/s3", json={"bucket": ""})
    status, body = error()
    assert (status, body["error"], body["error_code"]) == (400, S3_NO_BUCKET, "s3_not_configured")
    client.put(f"{BASE}/storage/s3", json={"enabled": False, "bucket": s3_project["bucket"]})
    status, body = error({"dry_run": True})
    assert (status, body["error"], body["error_code"], body["error_kind"]) == (
        400,
        S3_DISABLED,
        "s3_disabled",
        "validation",
    )
    client.put(f"{BASE}/storage/s3", json={"enabled": True})
    project_root.rmdir()
    status, body = error()
    assert (status, body["error"]) == (400, f"Local project root not found: {project_root}")
    project_root.write_text("a file")
    status, body = error()
    assert (status, body["error"]) == (400, f"Local project root is not a directory: {project_root}")
    after = head(client)
    assert [e["type"] for e in events(client)[before:after]] == ["storage.s3_updated"] * 3

    missing = client.post("/api/projects/nope/storage/s3/sync", json={})
    assert (missing.status_code, missing.json()["error"]) == (404, "Project not found")
    assert client.post(SYNC, json={"dry_run": "yes"}).status_code == 400


def test_missing_bucket_is_a_clear_400_and_records_nothing(
    client: TestClient, s3_project: dict, project_root: Path
) -> None:
    write(project_root, "outputs/a.png", b"a")
    client.put(f"{BASE}/storage/s3", json={"bucket": "no-such-bucket-here"})
    before = head(client)
    for dry_run in (False, True):
        response = client.post(SYNC, json={"dry_run": dry_run})
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["error_code"] == "s3_bucket_not_found" and body["error_kind"] == "provider"
        assert "no-such-bucket-here" in body["error"] and set(body) == {"ok", "error", "error_kind", "error_code"}
    assert head(client) == before


def test_unreachable_endpoint_is_a_502_and_records_nothing(
    client: TestClient, s3_project: dict, project_root: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no retries with backoff: the answer comes at once
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    write(project_root, "outputs/a.png", b"a")
    client.put(f"{BASE}/storage/s3", json={"endpoint_url": f"http://127.0.0.1:{port}"})
    before = head(client)
    response = client.post(SYNC, json={})
    assert response.status_code == 502, response.text
    body = response.json()
    assert body["error_code"] == "s3_unreachable" and body["error_kind"] == "provider"
    assert f"127.0.0.1:{port}" in body["error"]
    assert head(client) == before


def test_wrong_credentials_are_refused_and_nothing_is_recorded(
    client: TestClient, s3_project: dict, project_root: Path, moto_url: str, moto_auth: Any, monkeypatch: Any
) -> None:
    write(project_root, "outputs/a.png", b"a")
    key, secret = moto_auth()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + secret)
    before = head(client)
    response = client.post(SYNC, json={})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error_code"] == "s3_access_denied" and body["error_kind"] == "provider"
    assert secret not in response.text
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY0000000")
    assert client.post(SYNC, json={}).json()["error_code"] == "s3_access_denied"
    assert head(client) == before

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    assert client.post(SYNC, json={}).json()["sync"]["uploaded"] == 1


def test_no_credentials_is_a_clear_400(
    client: TestClient, s3_project: dict, project_root: Path, monkeypatch: Any
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    response = client.post(SYNC, json={})
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "s3_credentials_missing"


def test_objects_list_is_the_recorded_state(client: TestClient, s3_project: dict) -> None:
    assert client.get(f"{BASE}/storage/s3/objects").json() == {"ok": True, "count": 0, "objects": []}
    assert client.get("/api/projects/nope/storage/s3/objects").status_code == 404
    assert rows(client, "SELECT * FROM s3_syncs") == []
