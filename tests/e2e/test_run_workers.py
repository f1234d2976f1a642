"""Runs over several real processes on one SQLite data folder: `kroma serve` (its own engine) and
`kroma worker` processes claim a run's jobs, each job is done by exactly one of them (the fake
OpenAI server counts the calls), a worker SIGKILLed mid-job has its job taken over, and a cancel
made on the server stops the worker's jobs too."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from kroma.cli import main
from tests.e2e.conftest import Server, WorkerProcess
from tests.e2e.test_runs_server import BASE, ENGINE_TABLES, _dump, setup_project, wait_for
from tests.fakes.openai_server import FakeOpenAI


class RunWorker(WorkerProcess):
    """A `kroma worker --no-agents` process (a run engine only), started and working."""

    ready = "run engine"

    def __init__(self, data_dir: Path, env: dict[str, str], worker_id: str, *options: str) -> None:
        super().__init__(data_dir, worker_id, "--no-agents", *options, env=env)
        self.wait_started()


@pytest.fixture
def openai() -> Iterator[tuple[FakeOpenAI, dict[str, str]]]:
    with FakeOpenAI(api_key="sk-workers-test", default=("slow", 0.4)) as fake:
        env = {
            "OPENAI_API_KEY": fake.api_key,
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_IMAGE_MODEL": "gpt-image-1",
            "OPENAI_IMAGE_SIZE": "1024x1536",
            "OPENAI_IMAGE_QUALITY": "high",
            "KROMA_RUN_JOBS_IN_FLIGHT": "1",  # each process takes one job at a time: they share
            "KROMA_RUN_PROVIDER_CALLS": "1",
            "KROMA_RUN_LEASE_SECONDS": "3",
        }
        yield fake, env


def _trigger(http: httpx.Client, scenes: list[str], candidates: int) -> str:
    body = {
        "mode": "run",
        "confirm_spend": True,
        "scene_refs": scenes,
        "candidates": candidates,
        "provider": "openai",
    }
    accepted = http.post(f"{BASE}/runs/trigger", json=body, headers={"Prefer": "respond-async"})
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["run_id"])


def _events(http: httpx.Client) -> list[dict[str, Any]]:
    page = http.get("/api/events?limit=1000").json()
    assert page["count"] < 1000
    return list(page["events"])


def _of(events: list[dict[str, Any]], kind: str, run_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind and e["data"].get("run_id") == run_id]


def _finished(http: httpx.Client, run_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        run = http.get(f"{BASE}/runs/{run_id}").json()["run"]
        return run if run["status"] not in ("queued", "running", "canceling") else None

    return dict(wait_for(done, timeout=60))


def _more_scenes(http: httpx.Client) -> list[str]:
    from tests.e2e.test_runs_server import png

    files = [("file", ("three.png", png((60, 160, 90)), "image/png"))]
    uploaded = http.post(f"{BASE}/assets", files=files)
    assert uploaded.status_code == 200, uploaded.text
    return [a["rel_path"] for a in uploaded.json()["assets"]]


def test_the_server_and_a_worker_share_a_run_and_each_job_is_done_once(
    start_server: Callable[..., Server],
    tmp_path: Path,
    workers: list[RunWorker],
    openai: tuple[FakeOpenAI, dict[str, str]],
) -> None:
    fake, env = openai
    data = tmp_path / "data"
    server = start_server(data, **env, KROMA_RUN_WORKER_ID="serve")
    with httpx.Client(base_url=server.url, timeout=30) as http:
        scenes = setup_project(http) + _more_scenes(http)
        worker = RunWorker(data, env, "w-1")
        workers.append(worker)
        run_id = _trigger(http, scenes, 2)
        run = _finished(http, run_id)
        events = _events(http)
    summary = worker.stop()
    server.stop()

    assert run["status"] == "ok" and summary == {"ok": True, "worker_id": "w-1", "processed": 0}
    generated = _of(events, "candidate.generated", run_id)
    pairs = Counter((e["data"]["job_key"], e["data"]["candidate_index"]) for e in generated)
    assert len(pairs) == 6 and set(pairs.values()) == {1}
    assert len(fake.edit_requests) == 6  # each candidate paid for once, across both processes
    claimed = _of(events, "job.claimed", run_id)
    assert sorted(Counter(e["data"]["job_id"] for e in claimed).values()) == [1, 1, 1]
    assert {e["data"]["worker_id"] for e in claimed} == {"serve", "w-1"}
    stream = [e["type"] for e in events if e["stream_id"] == f"run:{run_id}"]
    assert stream.count("run.started") == 1 and stream.count("run.completed") == 1
    assert stream[-1] == "run.completed"

    # the claims fold into nothing: a rebuild gives the same tables
    readmodels = data / "readmodels.db"
    before = _dump(readmodels)
    db = sqlite3.connect(readmodels)
    with db:
        for table in ENGINE_TABLES:
            db.execute(f"DELETE FROM {table}")
    db.close()
    result = CliRunner().invoke(main, ["projections", "rebuild", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert all(before[t] for t in ENGINE_TABLES) and _dump(readmodels) == before


def test_a_worker_killed_mid_job_has_its_job_taken_over_and_nothing_is_generated_twice(
    start_server: Callable[..., Server],
    tmp_path: Path,
    workers: list[RunWorker],
    openai: tuple[FakeOpenAI, dict[str, str]],
) -> None:
    fake, env = openai
    data = tmp_path / "data"
    server = start_server(data, **env, KROMA_RUN_WORKER_ID="serve")
    with httpx.Client(base_url=server.url, timeout=30) as http:
        scenes = setup_project(http) + _more_scenes(http)
        worker = RunWorker(data, env, "w-dies")
        workers.append(worker)
        run_id = _trigger(http, scenes, 3)

        def worker_mid_job() -> str | None:
            events = _events(http)
            held = {
                e["data"]["job_id"]
                for e in _of(events, "job.claimed", run_id)
                if e["data"]["worker_id"] == "w-dies"
            }
            done = {e["data"]["job_id"] for e in _of(events, "job.winner_selected", run_id)}
            started = {e["data"]["job_id"] for e in _of(events, "candidate.generated", run_id)}
            return next(iter((held & started) - done), None)

        job_id = wait_for(worker_mid_job, timeout=30)
        worker.kill()  # SIGKILL: no release, a provider call in flight
        run = _finished(http, run_id)
        events = _events(http)

    assert run["status"] == "ok"
    claims = [e for e in _of(events, "job.claimed", run_id) if e["data"]["job_id"] == job_id]
    assert [c["data"]["worker_id"] for c in claims] == ["w-dies", "serve"]
    assert claims[1]["data"]["taken_over"]["worker_id"] == "w-dies"
    # the worker ran on this host and its process is gone: taken at once, not after the lease
    assert claims[1]["data"]["taken_over"]["reason"] == "process_gone"
    generated = _of(events, "candidate.generated", run_id)
    pairs = Counter((e["data"]["job_key"], e["data"]["candidate_index"]) for e in generated)
    assert len(pairs) == 9 and set(pairs.values()) == {1}  # every candidate recorded once
    in_flight_at_kill = 1  # the worker's KROMA_RUN_PROVIDER_CALLS
    assert len(generated) <= len(fake.edit_requests) <= len(generated) + in_flight_at_kill
    assert {e["data"]["request_id"] for e in generated} <= {r.request_id for r in fake.edit_requests}
    stream = [e["type"] for e in events if e["stream_id"] == f"run:{run_id}"]
    assert stream.count("run.started") == 1 and stream.count("run.completed") == 1


def test_a_cancel_on_the_server_stops_the_jobs_a_worker_holds(
    start_server: Callable[..., Server],
    tmp_path: Path,
    workers: list[RunWorker],
    openai: tuple[FakeOpenAI, dict[str, str]],
) -> None:
    fake, env = openai
    data = tmp_path / "data"
    server = start_server(data, **env, KROMA_RUN_ENGINE="0")  # only the worker works runs
    with httpx.Client(base_url=server.url, timeout=30) as http:
        scenes = setup_project(http)
        worker = RunWorker(data, env, "w-1")
        workers.append(worker)
        run_id = _trigger(http, scenes, 4)
        wait_for(lambda: _of(_events(http), "candidate.generated", run_id), timeout=30)
        assert http.post(f"{BASE}/runs/{run_id}/cancel").status_code == 200
        run = _finished(http, run_id)
        events = _events(http)
    worker.stop()

    assert run["status"] == "canceled"
    stream = [e for e in events if e["stream_id"] == f"run:{run_id}"]
    assert stream[-1]["type"] == "run.canceled" and [e["type"] for e in stream].count("run.canceled") == 1
    released = _of(events, "job.released", run_id)
    assert released and {e["data"]["reason"] for e in released} <= {"stopped", "decided"}
    assert len(_of(events, "candidate.generated", run_id)) < 8  # stopped early
    assert len(fake.edit_requests) <= len(_of(events, "candidate.generated", run_id)) + 1
