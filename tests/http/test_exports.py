"""Export packages (pipeline spec §8.4; issue 13): POST .../exports writes a .tar.gz of the project's
winners (or every candidate) with a manifest, the settings export and each run's contact sheet;
`export.created` records it; the list, detail and content routes show it."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from PIL import Image

from tests.engine.test_engine_http import GRAY, RED, SEPIA, configure, create_project, trigger, upload
from tests.http.log_seed import assert_error, rows, services_of

SLUG = "demo"
BASE = f"/api/projects/{SLUG}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unpack(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
        assert all(m.isfile() for m in members)
        return {m.name: tar.extractfile(m).read() for m in members}  # type: ignore[union-attr]


@pytest.fixture
def two_runs(client: TestClient, tmp_path: Path) -> list[str]:
    """Two runs on the local provider: 2 jobs x 2 candidates, then 1 job x 3 candidates."""
    create_project(client)
    configure(tmp_path, SEPIA)
    runs = []
    for scenes, candidates in ((upload(client, alpha=GRAY, beta=RED), 2), (upload(client, gamma=(90, 90, 90)), 3)):
        response = trigger(client, scenes, candidates)
        assert response.status_code == 200, response.text
        runs.append(response.json()["run_id"])
    return runs


def create(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post(f"{BASE}/exports", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_an_export_holds_every_winner_with_checksums_and_provenance(
    client: TestClient, two_runs: list[str], tmp_path: Path
) -> None:
    body = create(client)
    assert set(body) == {"ok", "export", "audit_id"}
    export = body["export"]
    assert export["status"] == "completed" and export["export_format"] == "tar.gz"
    assert export["rel_path"].startswith(f"var/projects/{SLUG}/exports/{SLUG}_") and export["rel_path"].endswith(".tar.gz")
    assert export["storage_uri"] == export["rel_path"] and export["run_id"] == ""
    assert export["created_at"] == export["completed_at"] != ""

    download = client.get(f"{BASE}/exports/{export['id']}/content")
    assert download.status_code == 200 and download.headers["content-type"] == "application/gzip"
    data = download.content
    assert sha(data) == export["checksum_sha256"] and len(data) == export["file_size_bytes"]
    assert (tmp_path / "app" / export["rel_path"]).read_bytes() == data

    files = unpack(data)
    [top] = {name.split("/")[0] for name in files}
    inside = {name.removeprefix(top + "/"): content for name, content in files.items()}
    manifest = json.loads(inside.pop("manifest.json"))
    assert manifest["schema_version"] == "kroma.export.v1" and manifest["export_id"] == export["id"]
    assert manifest["include"] == "winners" and manifest["missing"] == []
    assert [r["id"] for r in manifest["runs"]] == two_runs
    # every file but the manifest is listed, with the right checksum and size
    assert {f["path"] for f in manifest["files"]} == set(inside)
    for entry in manifest["files"]:
        assert sha(inside[entry["path"]]) == entry["sha256"] and len(inside[entry["path"]]) == entry["size"]

    # every winner is there: the bytes of each job's final output, with its provenance
    winners = {(f["provenance"]["run_id"], f["provenance"]["job_id"]): f for f in manifest["files"] if f["role"] == "winner"}
    jobs = 0
    for run_id in two_runs:
        run = client.get(f"{BASE}/runs/{run_id}").json()["run"]
        for job in client.get(f"{BASE}/runs/{run_id}/jobs").json()["jobs"]:
            jobs += 1
            entry = winners[(run_id, job["id"])]
            final = client.get(f"{BASE}/assets/{job['final_asset_id']}/content").content
            assert inside[entry["path"]] == final
            assert entry["path"] == f"runs/{run_id}/{job['job_key']}/winner.png"
            p = entry["provenance"]
            assert p["candidate_index"] == job["selected_candidate_index"]
            chosen = next(c for c in job["candidates"] if c["candidate_index"] == job["selected_candidate_index"])
            assert p["candidate_id"] == chosen["id"] and p["prompt"] == job["prompt_text"] and "sepia" in p["prompt"]
            assert (p["provider"], p["model"]) == (run["provider_code"], run["model_name"]) == ("local", run["model_name"])
            assert p["asset_id"] == job["final_asset_id"]
    assert len(winners) == jobs == 3
    assert not [f for f in manifest["files"] if f["role"] == "candidate"]

    # each run's contact sheet, and the settings export (contract §4.1)
    for run_id in two_runs:
        sheet = inside[f"runs/{run_id}/contact-sheet.png"]
        assert sheet == client.get(f"{BASE}/runs/{run_id}/contact-sheet.png").content
        with Image.open(io.BytesIO(sheet)) as image:
            assert image.format == "PNG"
    settings = json.loads(inside["settings.json"])
    assert settings["schema_version"] == "kroma.bootstrap.v1" and settings["project"]["slug"] == SLUG
    assert set(settings["settings"]) == {
        "provider_accounts", "style_guides", "characters", "reference_sets", "secrets", "prompt_templates"
    }

    # recorded once, and the list and detail routes show it
    created = client.get("/api/events?limit=1000&type=export.created").json()["events"]
    assert [e["event_id"] for e in created] == [body["audit_id"]]
    assert created[0]["stream_id"] == f"export:{export['id']}"
    assert client.get(f"{BASE}/exports/{export['id']}").json()["export"] == export
    listed = client.get(f"{BASE}/exports").json()
    assert listed["count"] == 1 and listed["exports"] == [export]
    summary = export["manifest_json"]
    assert summary["roles"] == {"winner": 3, "contact_sheet": 2, "settings": 1} and summary["files"] == 7


def test_include_all_adds_every_other_candidate_and_run_id_narrows_to_one_run(
    client: TestClient, two_runs: list[str]
) -> None:
    body = create(client, include="all", run_id=two_runs[0])
    export = body["export"]
    assert export["run_id"] == two_runs[0]
    files = unpack(client.get(f"{BASE}/exports/{export['id']}/content").content)
    top = next(iter(files)).split("/")[0]
    manifest = json.loads(files[f"{top}/manifest.json"])
    roles = [f["role"] for f in manifest["files"]]
    assert roles.count("winner") == 2 and roles.count("candidate") == 2 and roles.count("contact_sheet") == 1
    for entry in manifest["files"]:
        assert sha(files[f"{top}/{entry['path']}"]) == entry["sha256"]
        if entry["role"] in ("winner", "candidate"):
            assert entry["provenance"]["run_id"] == two_runs[0]
    jobs = client.get(f"{BASE}/runs/{two_runs[0]}/jobs").json()["jobs"]
    expected = {
        f"runs/{two_runs[0]}/{j['job_key']}/candidate_{c['candidate_index']}.png"
        for j in jobs
        for c in j["candidates"]
        if c["candidate_index"] != j["selected_candidate_index"]
    }
    assert {e["path"] for e in manifest["files"] if e["role"] == "candidate"} == expected


def test_validation_not_found_and_no_runs(client: TestClient) -> None:
    assert_error(
        client.post(f"{BASE}/exports", json={"include": "best"}), 400, "Field 'include' must be one of: winners, all"
    )
    assert_error(client.post(f"{BASE}/exports", json={}), 404, "Project not found")
    assert client.post(f"{BASE}/exports", json={"include": 3}).status_code == 400
    create_project(client)
    assert_error(client.post(f"{BASE}/exports", json={"run_id": "nope"}), 404, "Run not found")
    assert_error(client.get(f"{BASE}/exports/nope/content"), 404, "Project export not found")
    assert_error(client.get("/api/projects/other/exports/nope/content"), 404, "Project export not found")

    empty = create(client)["export"]  # no runs yet: the settings export alone
    assert empty["manifest_json"]["roles"] == {"settings": 1} and empty["manifest_json"]["runs"] == []


def test_content_etag_and_a_vanished_file(client: TestClient, two_runs: list[str], tmp_path: Path) -> None:
    export = create(client)["export"]
    url = f"{BASE}/exports/{export['id']}/content"
    cached = client.get(url, headers={"If-None-Match": f'"{export["checksum_sha256"]}"'})
    assert cached.status_code == 304 and cached.content == b""
    (tmp_path / "app" / export["rel_path"]).unlink()
    assert_error(client.get(url), 404, "Export file not found")


def test_exports_outside_the_write_roots_are_refused(make_client: Any, tmp_path: Path) -> None:
    client = make_client(allowed_roots=str(tmp_path / "elsewhere"))
    create_project(client)
    response = client.post(f"{BASE}/exports", json={})
    assert response.status_code == 400 and "outside the folders this server may write to" in response.json()["error"]
    assert not (tmp_path / "app" / "var" / "projects" / SLUG / "exports").exists()


def test_export_read_models_rebuild_identically(client: TestClient, two_runs: list[str]) -> None:
    create(client)
    create(client, include="all")
    tables = ("project_exports", "s3_objects", "s3_syncs", "run_s3_syncs", "runs", "assets")
    before = {t: rows(client, f"SELECT * FROM {t} ORDER BY 1, 2") for t in tables}
    answers = client.get(f"{BASE}/exports").json()
    services = services_of(client)
    client.blocking_portal.call(services.runner.rebuild)
    assert {t: rows(client, f"SELECT * FROM {t} ORDER BY 1, 2") for t in tables} == before
    assert client.get(f"{BASE}/exports").json() == answers
