"""The post-run S3 sync (pipeline spec §4.9 steps 6-7): a run in mode `run` with `storage_sync_s3`
syncs the project after `run.completed`; a failure is an event on the run's stream and a line in
the trigger's stderr, never a change of the run's outcome; a sync cut short resumes on restart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from kroma.domain.storage_sync import POST_RUN_PREFIX, S3_DISABLED
from kroma.storage import post_run
from tests.engine.test_engine_http import GRAY, SEPIA, configure, trigger, upload, wait_for
from tests.storage.conftest import BASE, PREFIX, objects


def run_stream(client: TestClient, run_id: str) -> list[dict[str, Any]]:
    events = client.get("/api/events?limit=1000").json()["events"]
    return [e for e in events if e["stream_id"] == f"run:{run_id}"]


def sync_run(client: TestClient, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    configure(tmp_path, SEPIA)
    scenes = upload(client, alpha=GRAY)
    response = trigger(client, scenes, 2, storage_sync_s3=True, **extra)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_run_with_storage_sync_s3_sends_its_files_after_it_completes(
    client: TestClient, s3_project: dict, tmp_path: Path, project_root: Path, moto_url: str
) -> None:
    body = sync_run(client, tmp_path)
    assert body["pipeline_trigger"]["stderr"] == ""
    stream = run_stream(client, body["run_id"])
    assert [e["type"] for e in stream[-2:]] == ["run.completed", "run.storage_synced"]
    outcome = stream[-1]
    assert outcome["metadata"]["causation_id"] == stream[-2]["event_id"]
    stored = objects(moto_url, s3_project["bucket"])
    base = f"{PREFIX}/{s3_project['id']}/"
    local = {p.relative_to(project_root).as_posix() for p in project_root.rglob("*") if p.is_file()}
    assert {k.removeprefix(base) for k in stored} == local
    assert outcome["data"]["uploaded"] == len(local) and outcome["data"]["destination"] == f"s3://{s3_project['bucket']}/{base}"
    started = client.get("/api/events?limit=1000&type=storage_sync.started").json()["events"]
    assert [(e["data"]["trigger"], e["data"]["run_id"]) for e in started] == [("run", body["run_id"])]
    assert client.get(f"{BASE}/runs/{body['run_id']}").json()["run"]["status"] == "ok"


def test_a_failed_post_run_sync_is_a_stderr_line_and_an_event_not_a_failed_run(
    client: TestClient, s3_project: dict, tmp_path: Path
) -> None:
    client.put(f"{BASE}/storage/s3", json={"enabled": False})
    body = sync_run(client, tmp_path)
    assert body["ok"] is True
    assert body["pipeline_trigger"]["stderr"] == POST_RUN_PREFIX + S3_DISABLED
    stream = run_stream(client, body["run_id"])
    failed = stream[-1]
    assert failed["type"] == "run.storage_sync_failed"
    assert (failed["data"]["error"], failed["data"]["error_code"]) == (S3_DISABLED, "s3_disabled")
    assert client.get(f"{BASE}/runs/{body['run_id']}").json()["run"]["status"] == "ok"

    client.put(f"{BASE}/storage/s3", json={"enabled": True, "bucket": "no-such-bucket-for-runs"})
    stderr = sync_run(client, tmp_path)["pipeline_trigger"]["stderr"]
    assert stderr.startswith(POST_RUN_PREFIX + "S3 bucket 'no-such-bucket-for-runs' does not exist")


def test_a_run_without_storage_sync_s3_records_no_sync(client: TestClient, s3_project: dict, tmp_path: Path) -> None:
    configure(tmp_path, SEPIA)
    body = trigger(client, upload(client, alpha=GRAY), 1).json()
    assert run_stream(client, body["run_id"])[-1]["type"] == "run.completed"
    assert client.get("/api/events?limit=10&type=storage_sync.started").json()["count"] == 0


def test_a_post_run_sync_cut_short_runs_when_the_engine_starts_again(
    make_client: Callable[..., TestClient],
    tmp_path: Path,
    moto_url: str,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data_dir = str(tmp_path / "data-restart")
    first = make_client(data_dir=data_dir)
    project = first.post("/api/projects", json={"name": "Demo", "slug": "demo"}).json()["project"]
    first.put(f"{BASE}/storage/s3", json={"enabled": True, "bucket": bucket, "prefix": PREFIX, "endpoint_url": moto_url})

    async def stopped(services: Any, run_id: str) -> None:  # the engine stops before its sync
        return None

    real = post_run.sync_after_run
    monkeypatch.setattr(post_run, "sync_after_run", stopped)
    configure(tmp_path, SEPIA)
    response = trigger(first, upload(first, alpha=GRAY), 1, storage_sync_s3=True, headers={"Prefer": "respond-async"})
    run_id = response.json()["run_id"]
    wait_for(lambda: run_stream(first, run_id)[-1]["type"] == "run.completed")
    first.__exit__(None, None, None)
    monkeypatch.setattr(post_run, "sync_after_run", real)

    second = make_client(data_dir=data_dir)
    wait_for(lambda: run_stream(second, run_id)[-1]["type"] == "run.storage_synced")
    assert any(k.startswith(f"{PREFIX}/{project['id']}/outputs/") for k in objects(moto_url, bucket))
