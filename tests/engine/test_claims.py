"""Several run engines on one log (in process, one SQLite data folder): jobs are claimed with
leases, each job is worked by exactly one engine, a job whose engine stopped without letting go is
taken over after its lease from its last recorded step, and the run's own events are appended
once. Provider calls are counted on the offline local provider."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from litestar.testing import TestClient

from kroma.clock import iso_micro
from kroma.config import Settings
from kroma.domain import runs as ev
from kroma.engine import claims as cl
from kroma.engine.providers.base import GenerationRequest, GenerationResult
from kroma.engine.providers.local import LocalProvider
from kroma.events.envelope import Event, Metadata, NewEvent
from kroma.http.app import create_app
from kroma.processes import this_host
from kroma.services import Services
from tests.engine.test_engine_http import GRAY, RED, app_root, create_project, trigger, upload

NOW = datetime(2026, 1, 1, tzinfo=UTC)


# -- the claim rules -------------------------------------------------------------------------------


def _claimed(
    claim_id: str, worker: str, expires: datetime, host: str = "h", pid: int = 1, version: int = 1
) -> Event:
    data = {
        "run_id": "r",
        "project_id": "p",
        "job_id": "j",
        "job_key": "k",
        "claim_id": claim_id,
        "worker_id": worker,
        "attempt": version,
        "lease_expires_at": iso_micro(expires),
        "host": host,
        "pid": pid,
        "taken_over": None,
    }
    return Event(
        position=version,
        event_id=f"e{version}",
        stream_id="job:j",
        stream_version=version,
        type=cl.JOB_CLAIMED,
        schema_version=1,
        data=data,
        metadata=Metadata(),
        recorded_at=iso_micro(NOW),
        hash="",
    )


HOLDER = cl.Holder("me", "h", 2, 10.0)
BASE = {"run_id": "r", "project_id": "p", "job_id": "j", "job_key": "k"}


def test_a_live_claim_holds_the_job_and_an_expired_one_is_taken_over() -> None:
    live = cl.fold_claims("j", [_claimed("c1", "other", NOW + timedelta(seconds=5))])
    assert cl.decide_claim(live, BASE, HOLDER, "c2", NOW, Metadata()) is None
    expired = cl.fold_claims("j", [_claimed("c1", "other", NOW - timedelta(seconds=1))])
    event = cl.decide_claim(expired, BASE, HOLDER, "c2", NOW, Metadata())
    assert event is not None and event.stream_id == "job:j"
    assert event.data["attempt"] == 2 and event.data["worker_id"] == "me"
    assert event.data["lease_expires_at"] == iso_micro(NOW + timedelta(seconds=10))
    assert event.data["taken_over"] == {
        "claim_id": "c1",
        "worker_id": "other",
        "reason": "lease_expired",
        "lease_expires_at": iso_micro(NOW - timedelta(seconds=1)),
    }


def test_a_claim_whose_process_is_gone_on_this_host_is_taken_at_once() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    claims = cl.fold_claims(
        "j", [_claimed("c1", "other", NOW + timedelta(hours=1), this_host(), dead.pid)]
    )
    holder = cl.Holder("me", this_host(), 2, 10.0)
    event = cl.decide_claim(claims, BASE, holder, "c2", NOW, Metadata())
    assert event is not None and event.data["taken_over"]["reason"] == "process_gone"
    # another host's process table says nothing about the holder: its lease decides
    elsewhere = cl.fold_claims(
        "j", [_claimed("c1", "other", NOW + timedelta(hours=1), "other-host", dead.pid)]
    )
    assert cl.decide_claim(elsewhere, BASE, holder, "c2", NOW, Metadata()) is None


def test_a_released_claim_frees_the_job_and_keeps_the_first_failure() -> None:
    release = Event(
        position=2,
        event_id="e2",
        stream_id="job:j",
        stream_version=2,
        type=cl.JOB_RELEASED,
        schema_version=1,
        data={
            **BASE,
            "claim_id": "c1",
            "worker_id": "other",
            "reason": "failed",
            "failure": {"status": "failed"},
        },
        metadata=Metadata(),
        recorded_at=iso_micro(NOW),
        hash="",
    )
    claims = cl.fold_claims("j", [_claimed("c1", "other", NOW + timedelta(hours=1)), release])
    assert claims.version == 2 and claims.failure == {"status": "failed"} and claims.failure_event_id == "e2"
    assert cl.open_claim(claims, NOW, "h", 2) == (None, None)


# -- engines on one data folder --------------------------------------------------------------------


class Calls:
    """The local provider, slowed down a little, counting its calls per candidate seed."""

    def __init__(self, delay: float) -> None:
        self.seeds: Counter[int] = Counter()
        self.delay = delay

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = LocalProvider.generate

        async def counted(provider: LocalProvider, request: GenerationRequest) -> GenerationResult:
            self.seeds[request.seed] += 1
            await anyio.sleep(self.delay)
            return await original(provider, request)

        monkeypatch.setattr(LocalProvider, "generate", counted)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    counted = Calls(0.15)
    counted.install(monkeypatch)
    yield counted


def _settings(tmp_path: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "workspace_root": str(app_root(tmp_path)),
        "auth_dev_bypass": True,
        "agent_dispatch": False,
        "run_jobs_in_flight": 1,  # an engine takes one job at a time: the others are left to share
        "run_lease_seconds": 1.0,
    }
    return Settings(**{**values, **extra})


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """The log's backend: the data folder's SQLite file, or a schema of its own on the test
    PostgreSQL server (skipped, saying why, when none answers)."""
    if request.param == "sqlite":
        yield {}
        return
    from tests.events.postgres_server import POSTGRES_URL, connect_or_skip, drop_schemas

    admin = await connect_or_skip()
    name = f"kroma_test_{uuid.uuid4().hex[:12]}"
    try:
        yield {"event_store_url": POSTGRES_URL, "event_store_schema": name}
    finally:
        await drop_schemas(admin, name)  # the log's schema and its `_rm` and `_keys` siblings
        await admin.close()


def _queued_run(tmp_path: Path, scenes: int, candidates: int, **extra: Any) -> str:
    """A run in mode `run`, requested while no engine runs: it stays queued."""
    with TestClient(create_app(_settings(tmp_path, run_engine=False, **extra))) as client:
        create_project(client)
        colours = [GRAY, RED, (90, 120, 150), (150, 120, 90)]
        refs = upload(client, **{f"s{i}": colours[i % 4] for i in range(scenes)})
        response = trigger(client, refs, candidates, headers={"Prefer": "respond-async"})
        assert response.status_code == 202, response.text
        return str(response.json()["run_id"])


async def _engine(tmp_path: Path, worker_id: str, **extra: Any) -> Services:
    services = Services(_settings(tmp_path, run_worker_id=worker_id, **extra))
    await services.open(follow=True, engine=False, dispatch=False)
    return services


async def _log(services: Services) -> list[Event]:
    return await services.store.read_all(0, 100_000)


def _generated(events: list[Event], run_id: str) -> list[Event]:
    return [e for e in events if e.type == ev.CANDIDATE_GENERATED and e.data["run_id"] == run_id]


async def test_two_engines_share_a_run_and_each_job_is_done_by_exactly_one(
    tmp_path: Path, calls: Calls, backend: dict[str, Any]
) -> None:
    run_id = _queued_run(tmp_path, scenes=4, candidates=2, **backend)
    a, b = await _engine(tmp_path, "engine-a", **backend), await _engine(tmp_path, "engine-b", **backend)
    try:
        a.engine.start()
        b.engine.start()
        end = await a.engine.wait_for_end(run_id, timeout=30)
        assert end is not None and end.type == ev.RUN_COMPLETED and end.data["status"] == "ok"
        await anyio.sleep(0.3)  # the other engine notices the end and lets go of the run
        events = await _log(a)
    finally:
        await a.close()
        await b.close()

    generated = _generated(events, run_id)
    pairs = Counter((e.data["job_key"], e.data["candidate_index"]) for e in generated)
    assert len(pairs) == 8 and set(pairs.values()) == {1}
    assert len(calls.seeds) == 8 and set(calls.seeds.values()) == {1}  # no candidate paid for twice
    run = [e.type for e in events if e.stream_id == f"run:{run_id}"]
    assert run.count(ev.RUN_STARTED) == 1 and run.count(ev.RUN_COMPLETED) == 1 and run[-1] == ev.RUN_COMPLETED
    assert run.count(ev.JOB_WINNER_SELECTED) == 4

    claimed = [e for e in events if e.type == cl.JOB_CLAIMED]
    assert sorted(Counter(e.data["job_id"] for e in claimed).values()) == [1, 1, 1, 1]  # one holder a job
    assert {e.data["worker_id"] for e in claimed} == {"engine-a", "engine-b"}  # both took part
    released = [e for e in events if e.type == cl.JOB_RELEASED]
    assert sorted(e.data["reason"] for e in released) == ["decided"] * 4
    holder = {e.data["job_id"]: e.data["claim_id"] for e in claimed}
    assert all(e.data["claim_id"] == holder[e.data["job_id"]] for e in released)
    # every step of a job comes after its claim and before its release
    for job_id, claim_id in holder.items():
        window = [
            e.position
            for e in events
            if e.data.get("claim_id") == claim_id and e.type != cl.JOB_LEASE_RENEWED
        ]
        steps = [e.position for e in generated if e.data["job_id"] == job_id]
        assert min(window) < min(steps) and max(steps) < max(window)


async def test_an_engine_that_stops_mid_job_without_letting_go_is_taken_over_after_its_lease(
    tmp_path: Path, calls: Calls, backend: dict[str, Any]
) -> None:
    run_id = _queued_run(tmp_path, scenes=2, candidates=3, **backend)
    a = await _engine(tmp_path, "engine-a", run_provider_calls=1, **backend)

    async def crash_without_release(context: Any, held: Any) -> None:
        return None  # a crash: the claim stays as it was until its lease ends

    a.engine._release = crash_without_release  # type: ignore[method-assign]
    a.engine.start()
    with anyio.fail_after(20):
        while not _generated(await _log(a), run_id):
            await a.store.wait_for_append(await a.store.head(), 0.5)
    await a.engine.close()  # mid-job: the next candidate's call is in flight
    before = await _log(a)
    await a.close()
    recorded_before = {e.data["seed"] for e in _generated(before, run_id)}
    a_claims = [e for e in before if e.type in cl.CLAIM_EVENTS]
    assert a_claims and all(e.type != cl.JOB_RELEASED for e in a_claims)
    lease_end = max(e.data["lease_expires_at"] for e in a_claims)

    b = await _engine(tmp_path, "engine-b", **backend)
    try:
        b.engine.start()
        end = await b.engine.wait_for_end(run_id, timeout=30)
        assert end is not None and end.type == ev.RUN_COMPLETED and end.data["status"] == "ok"
        events = await _log(b)
    finally:
        await b.close()

    taken = [e for e in events if e.type == cl.JOB_CLAIMED and e.data["taken_over"]]
    assert len(taken) == 1 and taken[0].data["worker_id"] == "engine-b"
    assert taken[0].data["taken_over"]["worker_id"] == "engine-a"
    assert taken[0].data["taken_over"]["reason"] == "lease_expired"  # same process: no shortcut
    assert taken[0].recorded_at >= lease_end  # not before the lease ended
    generated = _generated(events, run_id)
    pairs = Counter((e.data["job_key"], e.data["candidate_index"]) for e in generated)
    assert len(pairs) == 6 and set(pairs.values()) == {1}  # every candidate recorded once
    for seed in recorded_before:
        assert calls.seeds[seed] == 1  # a generation recorded before the crash is never redone
    assert len(calls.seeds) == 6 and sum(calls.seeds.values()) <= 6 + 1  # + the call the crash cut short
    run = [e.type for e in events if e.stream_id == f"run:{run_id}"]
    assert run.count(ev.RUN_STARTED) == 1 and run.count(ev.RUN_COMPLETED) == 1


async def test_a_step_of_a_job_taken_over_is_refused(tmp_path: Path) -> None:
    """The fence: once another engine has claimed the job, the old holder's appends fail."""
    services = Services(_settings(tmp_path))
    await services.open(follow=False)
    try:
        engine = services.engine
        stream = cl.job_stream("j")
        past = datetime.now(UTC) - timedelta(seconds=5)
        first = cl.decide_claim(cl.JobClaims("j"), BASE, cl.Holder("me", "h", 2, 1.0), "c1", past, Metadata())
        assert first is not None
        appended = await services.store.append([first], {stream: 0})
        held = cl.HeldClaim(
            dict(BASE), "c1", "me", appended.stream_versions[stream], first.data["lease_expires_at"], "e"
        )
        claims = cl.fold_claims("j", await services.store.read_stream(stream))
        second = cl.decide_claim(
            claims, BASE, cl.Holder("other", "h", 3, 10.0), "c2", datetime.now(UTC), Metadata()
        )
        assert second is not None
        await services.store.append([second], {stream: claims.version})
        step = NewEvent("run:r", ev.CANDIDATE_GENERATED, {"run_id": "r", "project_id": "p"}, Metadata())
        with pytest.raises(cl.JobLost):
            await engine._append([step], "run:r/job:k/candidate:1/generated", held)
        assert held.lost and await services.store.stream_version("run:r") == 0
    finally:
        await services.close()


def test_the_worker_id_and_lease_come_from_the_settings(tmp_path: Path) -> None:
    async def build() -> tuple[str, float]:
        services = Services(_settings(tmp_path, run_worker_id="w-1", run_lease_seconds=12.0))
        return services.engine.worker_id, services.engine.holder.lease_seconds

    assert asyncio.run(build()) == ("w-1", 12.0)


async def test_a_job_failure_on_one_engine_ends_the_run_failed_once_and_stops_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kroma.engine.providers.base import ProviderError

    original = LocalProvider.generate

    async def failing(provider: LocalProvider, request: GenerationRequest) -> GenerationResult:
        await anyio.sleep(0.15)
        if request.input_images[0].endswith("s1.png"):
            raise ProviderError("the provider said no")
        return await original(provider, request)

    monkeypatch.setattr(LocalProvider, "generate", failing)
    run_id = _queued_run(tmp_path, scenes=4, candidates=2)
    a, b = await _engine(tmp_path, "engine-a"), await _engine(tmp_path, "engine-b")
    try:
        a.engine.start()
        b.engine.start()
        end = await a.engine.wait_for_end(run_id, timeout=30)
        await anyio.sleep(0.3)
        events = await _log(a)
    finally:
        await a.close()
        await b.close()

    assert end is not None and end.type == ev.RUN_FAILED
    assert (
        end.data["error"] == "the provider said no" and end.data["error_code"] == "planning_preflight_failed"
    )
    run = [e for e in events if e.stream_id == f"run:{run_id}"]
    assert [e.type for e in run].count(ev.RUN_FAILED) == 1 and run[-1].type == ev.RUN_FAILED
    assert not [e for e in run if e.type in (ev.RUN_COMPLETED, ev.RUN_CANCELED)]
    failed = [e for e in events if e.type == cl.JOB_RELEASED and e.data["reason"] == "failed"]
    assert failed and failed[0].data["failure"]["error"] == "the provider said no"
    # nothing of the run is recorded after its end, and no job stayed claimed
    assert [e.type for e in events if e.position > end.position and e.data.get("run_id") == run_id] == []
    claims = [e for e in events if e.type in cl.CLAIM_EVENTS]
    last = {e.data["job_id"]: e.type for e in claims if e.type != cl.JOB_LEASE_RENEWED}
    assert set(last.values()) == {cl.JOB_RELEASED}


async def test_an_engine_that_stops_cleanly_releases_its_job_for_another_at_once(
    tmp_path: Path, calls: Calls
) -> None:
    run_id = _queued_run(tmp_path, scenes=1, candidates=3)
    a = await _engine(tmp_path, "engine-a", run_provider_calls=1, run_lease_seconds=60.0)
    a.engine.start()
    with anyio.fail_after(20):
        while not _generated(await _log(a), run_id):
            await a.store.wait_for_append(await a.store.head(), 0.5)
    await a.close()  # a shutdown (SIGTERM): the claim is released, not left to its 60 s lease
    b = await _engine(tmp_path, "engine-b")
    try:
        b.engine.start()
        end = await b.engine.wait_for_end(run_id, timeout=15)
        events = await _log(b)
    finally:
        await b.close()
    assert end is not None and end.type == ev.RUN_COMPLETED
    claims = [e for e in events if e.type in (cl.JOB_CLAIMED, cl.JOB_RELEASED)]
    assert [(e.type, e.data["worker_id"], e.data.get("reason")) for e in claims] == [
        (cl.JOB_CLAIMED, "engine-a", None),
        (cl.JOB_RELEASED, "engine-a", "stopped"),
        (cl.JOB_CLAIMED, "engine-b", None),
        (cl.JOB_RELEASED, "engine-b", "decided"),
    ]
    assert claims[2].data["taken_over"] is None and claims[2].data["attempt"] == 2
    pairs = Counter(e.data["candidate_index"] for e in _generated(events, run_id))
    assert pairs == {1: 1, 2: 1, 3: 1}


def test_a_worker_with_nothing_to_do_is_a_usage_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kroma.cli import main

    result = CliRunner().invoke(main, ["worker", "--data-dir", str(tmp_path), "--no-runs", "--no-agents"])
    assert result.exit_code == 2 and "nothing to do" in result.output
