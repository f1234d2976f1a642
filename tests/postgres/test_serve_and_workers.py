"""Two `kroma serve` and two `kroma worker` processes on one PostgreSQL database (one schema set,
one data folder for the projects' files, as machines mounting the same storage would share): a run
triggered through one server is worked by all four engines, each job by exactly one of them and
each candidate paid for once, and both servers answer the finished run."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import httpx

from kroma.crypto import encode_key
from tests.e2e.conftest import Server, workers  # noqa: F401

# fixtures of tests/e2e/test_run_workers.py, used here by name
from tests.e2e.test_run_workers import (  # noqa: F401
    RunWorker,
    _events,
    _finished,
    _more_scenes,
    _of,
    _trigger,
    openai,
)
from tests.e2e.test_runs_server import BASE, setup_project, wait_for
from tests.events.postgres_server import POSTGRES_URL
from tests.fakes.openai_server import FakeOpenAI


def test_two_servers_and_two_workers_share_a_run_on_postgresql(
    pg_schema: str,
    tmp_path: Path,
    workers: list[RunWorker],  # noqa: F811
    openai: tuple[FakeOpenAI, dict[str, str]],  # noqa: F811
) -> None:
    fake, env = openai
    env = {
        **env,
        "KROMA_API_AUTH_DEV_BYPASS": "1",
        "KROMA_EVENT_STORE_URL": POSTGRES_URL,
        "KROMA_EVENT_STORE_SCHEMA": pg_schema,
        "KROMA_MASTER_KEY": encode_key(os.urandom(32)),
    }
    data = tmp_path / "data"
    data.mkdir()
    servers = [Server(data, {**env, "KROMA_RUN_WORKER_ID": f"serve-{i}"}) for i in (1, 2)]
    try:
        for server in servers:
            server.start()
        first, second = servers
        with (
            httpx.Client(base_url=first.url, timeout=30) as a,
            httpx.Client(base_url=second.url, timeout=30) as b,
        ):
            scenes = setup_project(a) + _more_scenes(a)
            workers.extend(RunWorker(data, env, f"w-{i}") for i in (1, 2))
            wait_for(lambda: b.get(f"{BASE}/runs").status_code == 200)  # b has caught up on the project
            run_id = _trigger(b, scenes, 2)
            run = _finished(a, run_id)
            assert run["status"] == "ok", run
            assert _finished(b, run_id)["status"] == "ok"
            events = _events(a)
        summaries = [worker.stop() for worker in workers]
    finally:
        for server in servers:
            server.stop()

    assert all(s["ok"] for s in summaries)
    generated = _of(events, "candidate.generated", run_id)
    pairs = Counter((e["data"]["job_key"], e["data"]["candidate_index"]) for e in generated)
    assert len(pairs) == 6 and set(pairs.values()) == {1}
    assert len(fake.edit_requests) == 6  # each candidate paid for once, across four processes
    claimed = _of(events, "job.claimed", run_id)
    assert sorted(Counter(e["data"]["job_id"] for e in claimed).values()) == [1, 1, 1]
    assert {e["data"]["worker_id"] for e in claimed} <= {"serve-1", "serve-2", "w-1", "w-2"}
    stream = [e["type"] for e in events if e["stream_id"] == f"run:{run_id}"]
    assert stream.count("run.started") == 1 and stream.count("run.completed") == 1
