"""`kroma storage sync` and `kroma export` on the data folder, an export uploaded to S3, and the sync
read models rebuilt from the log (issue 13)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from kroma.cli import main
from tests.engine.test_engine_http import GRAY, SEPIA, configure, trigger, upload
from tests.http.log_seed import rows, services_of
from tests.storage.conftest import BASE, PREFIX, SLUG, objects


@pytest.fixture
def cli(client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run `kroma ...` on the client's data folder and app root (as beside a running server)."""
    settings = services_of(client).settings
    monkeypatch.setenv("KROMA_WORKSPACE_ROOT", settings.workspace_root)

    def run(*args: str) -> Any:
        return CliRunner().invoke(main, [*args, "--data-dir", settings.data_dir], catch_exceptions=False)

    return run


def test_cli_sync_dry_run_then_sync_then_nothing_to_send(
    client: TestClient, cli: Any, s3_project: dict, project_root: Path, moto_url: str
) -> None:
    (project_root / "outputs").mkdir()
    (project_root / "outputs" / "a.png").write_bytes(b"a" * 100)
    (project_root / "b.txt").write_bytes(b"b")

    dry = cli("storage", "sync", SLUG, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "(dry run) upload outputs/a.png" in dry.output and "would send 2 file(s), 101 bytes" in dry.output
    assert objects(moto_url, s3_project["bucket"]) == {}

    done = cli("storage", "sync", SLUG, "--json")
    assert done.exit_code == 0, done.output
    body = json.loads(done.output)
    assert body["sync"]["uploaded"] == 2 and body["audit_id"]
    assert len(objects(moto_url, s3_project["bucket"])) == 2
    # the server sees what the CLI recorded
    assert client.post(f"{BASE}/storage/s3/sync", json={}).json()["sync"]["uploaded"] == 0

    again = cli("storage", "sync", SLUG)
    assert again.exit_code == 0 and "sent 0 file(s), 0 bytes" in again.output and "2 already in sync" in again.output


def test_cli_errors_are_one_line_and_exit_1(client: TestClient, cli: Any, s3_project: dict) -> None:
    missing = cli("storage", "sync", "nope")
    assert missing.exit_code == 1 and "Project not found" in missing.output
    client.put(f"{BASE}/storage/s3", json={"enabled": False})
    disabled = cli("storage", "sync", SLUG)
    assert disabled.exit_code == 1 and "S3 storage is disabled for this project" in disabled.output


def test_cli_export_and_an_export_uploaded_to_s3(
    client: TestClient, cli: Any, s3_project: dict, project_root: Path, tmp_path: Path, moto_url: str
) -> None:
    configure(tmp_path, SEPIA)
    assert trigger(client, upload(client, alpha=GRAY), 2).status_code == 200

    made = cli("export", SLUG, "--include", "all")
    assert made.exit_code == 0, made.output
    path = Path(made.output.strip().splitlines()[0])
    assert path.parent == project_root / "exports" and path.is_file()
    listed = client.get(f"{BASE}/exports").json()["exports"]
    assert [e["checksum_sha256"] for e in listed] == [hashlib.sha256(path.read_bytes()).hexdigest()]

    body = client.post(f"{BASE}/exports", json={"upload_s3": True}).json()
    export, sync = body["export"], body["sync"]
    assert sync["uploaded"] == 1 and [f["path"] for f in sync["files"]] == [export["rel_path"].split(f"{SLUG}/", 1)[1]]
    key = f"{PREFIX}/{s3_project['id']}/{sync['files'][0]['path']}"
    data = objects(moto_url, s3_project["bucket"])[key]
    assert hashlib.sha256(data).hexdigest() == export["checksum_sha256"]
    assert set(objects(moto_url, s3_project["bucket"])) == {key}  # only the package

    client.put(f"{BASE}/storage/s3", json={"bucket": "no-such-export-bucket"})
    failed = client.post(f"{BASE}/exports", json={"upload_s3": True})
    assert failed.status_code == 400 and failed.json()["error_code"] == "s3_bucket_not_found"
    assert client.get(f"{BASE}/exports/{failed.json()['export_id']}").json()["export"]["status"] == "completed"


def test_sync_read_models_rebuild_identically(
    client: TestClient, s3_project: dict, project_root: Path, tmp_path: Path
) -> None:
    configure(tmp_path, SEPIA)
    trigger(client, upload(client, alpha=GRAY), 2, storage_sync_s3=True)
    (project_root / "extra.txt").write_bytes(b"x")
    client.post(f"{BASE}/storage/s3/sync", json={})
    tables = {"s3_objects": "key", "s3_syncs": "id", "run_s3_syncs": "run_id"}
    before = {t: rows(client, f"SELECT * FROM {t} ORDER BY {k}") for t, k in tables.items()}
    assert all(before.values())
    assert [r["status"] for r in before["run_s3_syncs"]] == ["ok"]
    objects_answer = client.get(f"{BASE}/storage/s3/objects").json()
    services = services_of(client)
    client.blocking_portal.call(services.runner.rebuild, ["storage_sync"])
    assert {t: rows(client, f"SELECT * FROM {t} ORDER BY {k}") for t, k in tables.items()} == before
    assert client.get(f"{BASE}/storage/s3/objects").json() == objects_answer
