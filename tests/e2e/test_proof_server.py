"""Proof against the real `kroma serve` process: SIGKILL at random moments loses nothing that was
acknowledged; many clients mutating one project lose and duplicate nothing; live streams are
bounded per token; and a really full filesystem (a tiny tmpfs) answers 503 and recovers by itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from kroma.cli import main
from kroma.projections.catalog import all_projections
from tests.e2e.conftest import Server, free_port
from tests.e2e.test_runs_server import BASE, SLUG, setup_project, wait_for

ERROR_KEYS = {"ok", "error", "error_kind", "error_code"}
UNFINISHED = ("queued", "running", "canceling")


def _contract_error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) >= ERROR_KEYS and body["ok"] is False, body
    return body


def _dump(readmodels: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every projection's tables, rows sorted (what a rebuild must reproduce exactly)."""
    tables = sorted({t for p in all_projections() for t in p.tables})
    with contextlib.closing(sqlite3.connect(readmodels)) as db:
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


# -- crash ---------------------------------------------------------------------------------------------


class Writer(threading.Thread):
    """Creates style guides one after another until told to stop; remembers what was acknowledged."""

    def __init__(self, url: str, tag: str) -> None:
        super().__init__(daemon=True)
        self.url, self.tag = url, tag
        self.acknowledged: list[tuple[str, str]] = []  # (name, audit_id)
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            n = 0
            while not self.stop.is_set():
                name = f"{self.tag}-{n}"
                n += 1
                try:
                    response = http.post(f"{BASE}/style-guides", json={"name": name, "instructions": "ink"})
                except httpx.TransportError:
                    return  # the server died mid-request: not acknowledged
                if response.status_code == 200:
                    self.acknowledged.append((name, response.json()["audit_id"]))


def test_sigkill_at_random_moments_loses_no_acknowledged_mutation(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    rng = random.Random(int(os.environ.get("KROMA_CRASH_SEED", "15")))
    data = tmp_path / "data"
    acknowledged: list[tuple[str, str]] = []
    runs: list[str] = []
    for round_ in range(3):
        server = start_server(data)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            if round_ == 0:
                scenes = setup_project(http)
            body = {
                "mode": "run",
                "confirm_spend": True,
                "scene_refs": scenes,
                "candidates": 2,
                "provider": "local",
            }
            accepted = http.post(f"{BASE}/runs/trigger", json=body, headers={"Prefer": "respond-async"})
            assert accepted.status_code == 202, accepted.text
            runs.append(accepted.json()["run_id"])
        writers = [Writer(server.url, f"r{round_}w{i}") for i in range(4)]
        for w in writers:
            w.start()
        time.sleep(rng.uniform(0.2, 1.5))
        server.kill()  # SIGKILL: no shutdown of any kind
        for w in writers:
            w.stop.set()
            w.join(15)
            acknowledged += w.acknowledged
    assert acknowledged, "no mutation was acknowledged before the kills"

    server = start_server(data)
    with httpx.Client(base_url=server.url, timeout=30) as http:

        def settled() -> list[dict[str, Any]] | None:
            listed = http.get(f"{BASE}/runs").json()["runs"]
            return None if any(r["status"] in UNFINISHED for r in listed) else listed

        final = wait_for(settled, timeout=120)
        # Interrupted runs resumed (or ended as failed/canceled): none is stuck as running.
        assert {r["id"] for r in final} >= set(runs)
        assert all(r["status"] in ("ok", "failed", "canceled") for r in final), final
        # Every acknowledged mutation is in the log, and in the read model.
        for _name, audit_id in acknowledged:
            assert http.get(f"/api/events/{audit_id}").status_code == 200, audit_id
        names = [s["name"] for s in http.get(f"{BASE}/style-guides").json()["style_guides"]]
        assert set(names) >= {name for name, _ in acknowledged}
        assert len(names) == len(set(names))  # nothing twice
    server.stop()

    verified = CliRunner().invoke(main, ["events", "verify", "--data-dir", str(data)])
    assert verified.exit_code == 0, verified.output
    readmodels = data / "readmodels.db"
    before = _dump(readmodels)
    rebuilt = CliRunner().invoke(main, ["projections", "rebuild", "--data-dir", str(data)])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert _dump(readmodels) == before  # the read models equal a rebuild from zero


# -- concurrency -------------------------------------------------------------------------------------------


def test_many_clients_mutating_one_project_lose_and_duplicate_nothing(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.post("/api/projects", json={"name": "Demo", "slug": SLUG}).status_code == 200
        target = http.post(f"{BASE}/style-guides", json={"name": "Shared", "instructions": "v0"}).json()
    target_id = target["style_guide"]["id"]
    names = [f"c{i}" for i in range(120)] + ["dup"] * 16  # 16 racers for one name

    def create(name: str) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            return http.post(f"{BASE}/characters", json={"name": name})

    def update(i: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            return http.put(f"{BASE}/style-guides/{target_id}", json={"instructions": f"v{i}"})

    with ThreadPoolExecutor(32) as pool:
        created = list(pool.map(create, names))
        updated = list(pool.map(update, range(1, 41)))

    for response in created + updated:
        assert response.status_code < 500, response.text
        if response.status_code != 200:
            body = _contract_error(response)
            assert response.status_code in (400, 409), body
    ok_names = [n for n, r in zip(names, created, strict=True) if r.status_code == 200]
    assert sorted(set(ok_names)) == sorted(set(names)) and ok_names.count("dup") == 1
    for n, r in zip(names, created, strict=True):
        if n == "dup" and r.status_code != 200:
            assert r.status_code == 400 and "already exists" in r.json()["error"]
    with httpx.Client(base_url=server.url, timeout=30) as http:
        listed = http.get(f"{BASE}/characters").json()["characters"]
        assert sorted(c["name"] for c in listed) == sorted(set(names))  # no loss, no duplicate
        acknowledged = [r.json()["audit_id"] for r in updated if r.status_code == 200]
        for audit_id in acknowledged:  # every acknowledged update is an event: none was lost
            event = http.get(f"/api/events/{audit_id}").json()["event"]
            assert event["type"] == "style_guide.updated" and target_id in event["data"].values()
        final = http.get(f"{BASE}/style-guides/{target_id}").json()["style_guide"]["instructions"]
        last = http.get("/api/events?type=style_guide.updated&limit=1000").json()["events"][-1]
        assert final == last["data"]["instructions"]  # the read model shows the last write


# -- live streams per token ------------------------------------------------------------------------------


def test_live_streams_are_bounded_per_token(start_server: Callable[..., Server]) -> None:
    server = start_server(KROMA_SSE_STREAMS_PER_TOKEN="2")
    url = f"{server.url}/api/events/stream"
    with httpx.Client(timeout=10) as a, httpx.Client(timeout=10) as b, httpx.Client(timeout=10) as c:
        with a.stream("GET", url) as first, b.stream("GET", url) as second:
            assert first.status_code == 200 and second.status_code == 200
            third = c.get(url)
            assert third.status_code == 429
            assert _contract_error(third)["error_code"] == "too_many_streams"
            assert third.json()["error_kind"] == "policy"
        # Closing a stream gives its slot back.
        deadline = time.monotonic() + 10
        while True:
            with c.stream("GET", url) as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "a closed stream never gave its slot back"
            time.sleep(0.2)


# -- a really full filesystem -------------------------------------------------------------------------------


def _tmpfs_allowed(mountpoint: Path) -> bool:
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs '{mountpoint}'"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def _fill(folder: Path) -> Path:
    ballast = folder / "ballast"
    with ballast.open("wb") as out:
        chunk = b"\0" * (64 * 1024)
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return ballast


def test_a_full_filesystem_answers_503_and_recovers_when_space_returns(tmp_path: Path) -> None:
    """The data folder on a 24 MiB tmpfs of its own (a user and mount namespace: no root needed
    where unprivileged namespaces are allowed; skipped where they are not). A ballast file fills
    it; deleting the ballast is space returning."""
    root = tmp_path / "fs"
    root.mkdir()
    if not _tmpfs_allowed(root):
        pytest.skip("no unprivileged user+mount namespace here to mount a tmpfs")
    port = free_port()
    script = f"mount -t tmpfs -o size=24m tmpfs '{root}' && cd '{root}' && exec '{sys.executable}' -m kroma.cli serve"
    env = {
        **os.environ,
        "KROMA_DATA_DIR": str(root / "data"),
        "KROMA_BIND": f"127.0.0.1:{port}",
        "KROMA_API_AUTH_DEV_BYPASS": "1",
        "KROMA_RUN_ENGINE": "0",
        "KROMA_AGENT_DISPATCH": "0",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        ["unshare", "-rm", "sh", "-c", script], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(url), timeout=30)
        inside = Path(f"/proc/{proc.pid}/root") / str(root).lstrip("/")  # the tmpfs, seen from here
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.post("/api/projects", json={"name": "Demo", "slug": SLUG}).status_code == 200
            assert (
                http.post(f"{BASE}/style-guides", json={"name": "Before", "instructions": "ink"}).status_code
                == 200
            )
            head = http.get("/api/events?limit=1000").json()["next_after"]
            ballast = _fill(inside)
            big = "x" * 200_000
            for i in range(3):
                refused = http.post(f"{BASE}/style-guides", json={"name": f"Full {i}", "instructions": big})
                assert refused.status_code == 503, refused.text
                assert _contract_error(refused)["error_code"] == "storage_unavailable"
                assert refused.headers["retry-after"]
            listed = http.get(f"{BASE}/style-guides").json()["style_guides"]  # reads still served
            assert [s["name"] for s in listed] == ["Before"]
            assert http.get("/api/events?limit=1000").json()["next_after"] == head
            ballast.unlink()  # space returns
            retried = wait_for(
                lambda: (
                    (
                        r := http.post(f"{BASE}/style-guides", json={"name": "Full 0", "instructions": big})
                    ).status_code
                    == 200
                    and r
                ),
                timeout=20,
            )
            assert retried.json()["style_guide"]["name"] == "Full 0"
            names = {s["name"] for s in http.get(f"{BASE}/style-guides").json()["style_guides"]}
            assert names == {"Before", "Full 0"}
        # The store is whole: a copy of its files (taken while the server idles; SQLite itself
        # cannot open a path through /proc/<pid>/root) passes the integrity check, and the hash
        # chain verifies end to end.
        copy = tmp_path / "copy"
        copy.mkdir()
        for name in ("events.db", "readmodels.db"):
            for suffix in ("", "-wal"):
                source = inside / "data" / f"{name}{suffix}"
                if source.exists():
                    shutil.copyfile(source, copy / f"{name}{suffix}")
            with contextlib.closing(sqlite3.connect(copy / name)) as db:
                assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        verified = CliRunner().invoke(main, ["events", "verify", "--data-dir", str(copy)])
        assert verified.exit_code == 0, verified.output
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=0.5).status_code == 200
    except httpx.TransportError:
        return False
