"""Agent dispatch end to end: real `kroma serve` and `kroma worker` processes on one data folder and
a fake agent API, a worker killed mid-dispatch, and the server and a worker competing."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import Server, WorkerProcess
from tests.fakes.agent_server import FakeAgent

TOKEN = "e2e-agent-token-42"
BASE = "/api/projects/demo/agent/instructions"


class Worker(WorkerProcess):
    """A `kroma worker` delivering to the fake agent API."""

    def __init__(self, data_dir: Path, agent: FakeAgent, worker_id: str, *options: str) -> None:
        super().__init__(
            data_dir, worker_id, "--agent-api-url", agent.url, *options, env={"KROMA_AGENT_API_TOKEN": TOKEN}
        )


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return dict(response.json())


def _confirmed(server: Server, count: int) -> list[str]:
    ids = []
    for i in range(count):
        created = _ok(httpx.post(f"{server.url}{BASE}", json={"instruction_text": f"task {i}"}))
        ids.append(created["instruction"]["id"])
    for instruction_id in ids:
        _ok(httpx.post(f"{server.url}{BASE}/{instruction_id}/confirm", json={}))
    return ids


def _status(server: Server, instruction_id: str) -> str:
    return str(_ok(httpx.get(f"{server.url}{BASE}/{instruction_id}"))["instruction"]["status"])


def _wait_status(server: Server, ids: list[str], status: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_status(server, i) != status for i in ids):
        assert time.monotonic() < deadline, {i: _status(server, i) for i in ids}
        time.sleep(0.1)


def _reservations(server: Server) -> list[dict[str, Any]]:
    page = _ok(
        httpx.get(f"{server.url}/api/events", params={"type": "agent_instruction.reserved", "limit": 500})
    )
    return [e["data"] for e in page["events"]]


def test_a_worker_killed_mid_dispatch_is_taken_over_by_the_server_after_its_lease(
    start_server: Callable[..., Server], tmp_path: Path, workers: list[Worker]
) -> None:
    data_dir = tmp_path / "data"
    with FakeAgent(token=TOKEN) as agent:
        agent.enqueue(("hang",))
        server = start_server(data_dir, KROMA_AGENT_DISPATCH="0")
        _ok(httpx.post(f"{server.url}/api/projects", json={"name": "Demo", "slug": "demo"}))
        [instruction_id] = _confirmed(server, 1)

        # lease = max(1, 2 s timeout x 1 try + 5 s margin) = 7 s
        options = ("--dispatch-timeout", "2", "--dispatch-retries", "0", "--max-locked-seconds", "1")
        dying = Worker(data_dir, agent, "w-dies", *options, "--poll-interval-seconds", "0.2")
        workers.append(dying)
        agent.wait_for_requests(1, timeout=20)
        dying.kill()  # SIGKILL while the agent has not answered
        _wait_status(server, [instruction_id], "running", timeout=5)  # the server polls the log
        server.stop()

        server = start_server(
            data_dir,
            KROMA_AGENT_DISPATCH="1",
            KROMA_AGENT_API_URL=agent.url,
            KROMA_AGENT_API_TOKEN=TOKEN,
            KROMA_AGENT_WORKER_ID="serve",
            KROMA_AGENT_POLL_INTERVAL_SECONDS="0.2",
            KROMA_AGENT_RETRY_BACKOFF_SECONDS="1",
        )
        _wait_status(server, [instruction_id], "done", timeout=25)

        first, second = agent.requests
        assert first.instruction_id == second.instruction_id == instruction_id
        assert second.arrived - first.arrived >= 6.5  # not before the lease ended
        events = _ok(httpx.get(f"{server.url}{BASE}/{instruction_id}/events"))["events"]
        listed = [(e["event_type"], e["message"]) for e in events]
        assert listed[:2] == [("created", "Instruction created"), ("confirmed", "Instruction confirmed")]
        assert listed[2][0] == "retry_scheduled"
        assert listed[2][1].startswith("error=lease_expired, attempts=1, max_attempts=3, next_attempt_at=")
        assert listed[3:] == [("result", "remote_status=done, attempts=2, http_status=200")]
        assert [r["worker_id"] for r in _reservations(server)] == ["w-dies", "serve"]


def test_the_server_and_a_worker_process_compete_and_dispatch_each_instruction_once(
    start_server: Callable[..., Server], tmp_path: Path, workers: list[Worker]
) -> None:
    data_dir = tmp_path / "data"
    with FakeAgent(token=TOKEN, default=("slow", 0.3)) as agent:
        server = start_server(
            data_dir,
            KROMA_AGENT_DISPATCH="1",
            KROMA_AGENT_API_URL=agent.url,
            KROMA_AGENT_API_TOKEN=TOKEN,
            KROMA_AGENT_WORKER_ID="serve",
            KROMA_AGENT_POLL_INTERVAL_SECONDS="0.1",
        )
        _ok(httpx.post(f"{server.url}/api/projects", json={"name": "Demo", "slug": "demo"}))
        worker = Worker(data_dir, agent, "w-proc", "--poll-interval-seconds", "0.1")
        workers.append(worker)
        worker.wait_started()

        ids = _confirmed(server, 8)
        _wait_status(server, ids, "done", timeout=30)
        summary = worker.stop()

        assert sorted(r.instruction_id for r in agent.requests) == sorted(ids)  # once each
        reservations = _reservations(server)
        assert sorted(r["instruction_id"] for r in reservations) == sorted(ids)
        by_worker = {w: sum(r["worker_id"] == w for r in reservations) for w in ("serve", "w-proc")}
        assert by_worker["serve"] >= 1 and by_worker["w-proc"] >= 1, by_worker
        assert summary == {"ok": True, "worker_id": "w-proc", "processed": by_worker["w-proc"]}
