"""Running commands: load the aggregate, decide, append atomically, retry on a lost race.

This is the domain's one door to the event store. Decisions themselves stay pure (the decide
functions in the feature modules); this module only loads state and appends what they return.

Commands on one stream do not race each other in this process: each stream has a lane, a queue
that one task works through in arrival order. A project's commands (`on_project`) are taken from
its lane in groups: each is decided against the state its predecessors in the group leave behind
(their events folded in before they are written), and the whole group is submitted at once with
chained expected versions, so it lands in one group commit of the store. Before deciding, a lane
waits for this process's own appends still queued on the stream (the run engine's links), and it
reads the log only when the store saw the stream's version move. So only another process (or an
`execute` command's first try) can make a group's append conflict; then the state is folded from
the log again and the command decided again, up to `MAX_ATTEMPTS` times, after which the caller
gets `Conflict` (409), never an internal error. `execute` decides outside the lanes (its decision
may touch any streams); a try that loses a race is retried in the lost stream's lane.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from kroma.clock import Clock
from kroma.domain import catalog as _catalog  # noqa: F401  (registers evolvers)
from kroma.domain.aggregate import ProjectState, fold, project_stream, slug_stream
from kroma.domain.errors import Conflict
from kroma.domain.slugs import normalize_slug
from kroma.events import codec
from kroma.events.envelope import Event, Metadata, NewEvent
from kroma.events.store import AppendResult, ConcurrencyConflict, EventStore

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_ATTEMPTS = 8  # decisions per command before a lost race becomes a 409
MAX_GROUP = 256  # commands of one project decided and submitted together


@dataclass(frozen=True)
class Actor:
    """Who is acting: the user and token behind a request (both None for dev bypass)."""

    user_id: str | None = None
    token_id: str | None = None
    project_id: str | None = None  # a project-scoped token's project
    principal: str = "anonymous"


@dataclass(frozen=True)
class RequestContext:
    actor: Actor = field(default_factory=Actor)
    request_id: str | None = None
    idempotency_key: str | None = None
    fingerprint: str = ""


# Set by the HTTP layer for the duration of a request.
current_request: contextvars.ContextVar[RequestContext] = contextvars.ContextVar(
    "kroma_request",
    default=RequestContext(),  # noqa: B039 (frozen, never mutated)
)


@dataclass
class Decision:
    """What a command decided: the events to append (all or none), the streams' expected versions,
    and a value for the caller (an id, say)."""

    events: list[NewEvent]
    expected: dict[str, int] = field(default_factory=dict)
    result: Any = None


@dataclass
class Outcome:
    append: AppendResult
    result: Any

    @property
    def audit_id(self) -> str:
        """The id of the first event the command appended (the audit trail's entry)."""
        return self.append.event_ids[0]


ProjectDecide = Callable[[ProjectState, Metadata], Sequence[NewEvent] | Decision]
GeneralDecide = Callable[[Metadata], Awaitable[Decision]]


@dataclass(eq=False)
class _Job:
    """A command waiting in a stream's lane: a project decision (`project`) or any decision
    (`general`, decided alone)."""

    ctx: RequestContext
    correlation_id: str
    future: asyncio.Future[Outcome]
    project: ProjectDecide | None = None
    general: GeneralDecide | None = None
    attempts: int = 0


@dataclass(eq=False)
class _Lane:
    jobs: deque[_Job] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


class Commands:
    """Executes commands against the event store with a cache of folded project states."""

    def __init__(self, store: EventStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._projects: dict[str, tuple[int, ProjectState | None]] = {}
        self._slugs: dict[str, str] = {}
        self._load_locks: dict[str, asyncio.Lock] = {}
        self._lanes: dict[str, _Lane] = {}

    def metadata(self, correlation_id: str, causation_id: str | None = None) -> Metadata:
        return _metadata(current_request.get(), correlation_id, causation_id)

    async def project_id_for_slug(self, slug: str | None) -> str | None:
        """The id of the project holding `slug` (normalised first), or None."""
        normal = normalize_slug(slug)
        if normal is None:
            return None
        cached = self._slugs.get(normal)
        if cached is not None:
            return cached
        events = await self.store.read_stream(slug_stream(normal))
        if not events:
            return None
        project_id = events[0].data["project_id"]
        self._slugs[normal] = project_id  # a slug never moves to another project
        return project_id

    async def load_project(self, project_id: str) -> tuple[ProjectState | None, int]:
        """The project's current state and stream version (0 and None when it does not exist)."""
        stream = project_stream(project_id)
        # One loader per stream at a time: two loaders folding the same new events into the
        # shared cached state would apply them twice. A lane holds the lock while its group's
        # events are folded in but not yet committed, so no loader sees them early.
        async with self._load_lock(stream):
            return await self._refresh(stream)

    def _load_lock(self, stream: str) -> asyncio.Lock:
        lock = self._load_locks.get(stream)
        if lock is None:
            lock = self._load_locks[stream] = asyncio.Lock()
        return lock

    async def _refresh(self, stream: str) -> tuple[ProjectState | None, int]:
        version, state = self._projects.get(stream, (0, None))
        events = await self.store.read_stream(stream, after_version=version)
        if events:
            state = fold(state, events)
            version = events[-1].stream_version
            self._projects[stream] = (version, state)
        return state, version

    async def project_by_slug(self, slug: str | None) -> tuple[ProjectState | None, int]:
        project_id = await self.project_id_for_slug(slug)
        if project_id is None:
            return None, 0
        return await self.load_project(project_id)

    async def execute(self, decide: GeneralDecide) -> Outcome:
        """Decide and append; when another command won a race on one of the streams, decide
        again on the new state, in that stream's lane (so no command of this process races it
        again). Raises whatever the decision raises (a KromaError), or `Conflict`."""
        ctx = current_request.get()
        correlation_id = self.clock.new_id()
        decision = await decide(_metadata(ctx, correlation_id))
        try:
            appended = await self.store.append(
                decision.events,
                decision.expected,
                idempotency_key=ctx.idempotency_key,
                fingerprint=ctx.fingerprint,
            )
        except ConcurrencyConflict as lost:
            job = _Job(ctx, correlation_id, asyncio.get_running_loop().create_future(), general=decide)
            job.attempts = 1
            return await self._enqueue(lost.stream_id, job)
        return Outcome(appended, decision.result)

    async def on_project(self, project_id: str, decide: ProjectDecide) -> Outcome:
        """Run a decision against one existing project's state, guarded by its stream version.

        `decide` must be pure (it may run again, and its events are folded into the state before
        they are written); it returns the events, or a Decision for a result or other streams."""
        job = _Job(
            current_request.get(),
            self.clock.new_id(),
            asyncio.get_running_loop().create_future(),
            project=decide,
        )
        return await self._enqueue(project_stream(project_id), job)

    # -- lanes -------------------------------------------------------------------------------

    def _enqueue(self, stream: str, job: _Job) -> asyncio.Future[Outcome]:
        lane = self._lanes.get(stream)
        if lane is None:
            lane = self._lanes[stream] = _Lane()
        lane.jobs.append(job)
        if lane.task is None:
            lane.task = asyncio.create_task(self._drain(stream, lane), name=f"kroma-lane-{stream}")
        return job.future

    async def _drain(self, stream: str, lane: _Lane) -> None:
        """Work through a lane until it is empty; every job's future is resolved, whatever fails."""
        try:
            while lane.jobs:
                if lane.jobs[0].general is not None:
                    group = [lane.jobs.popleft()]
                    work = self._run_general(lane, group[0])
                else:
                    group = []
                    while lane.jobs and lane.jobs[0].general is None and len(group) < MAX_GROUP:
                        group.append(lane.jobs.popleft())
                    work = self._run_group(stream, lane, group)
                try:
                    await work
                except Exception as exc:  # a bug: fail this group, keep the lane going
                    log.exception("commands on %s failed", stream)
                    _fail(group, exc)
        finally:
            lane.task = None
            for job in lane.jobs:  # cancelled (shutdown) with work left: nobody will decide it
                job.future.cancel()
            lane.jobs.clear()
            if self._lanes.get(stream) is lane:
                del self._lanes[stream]

    def _retry(self, lane: _Lane, jobs: list[_Job]) -> None:
        """Put jobs that lost a race back at the head of the lane, in order; past the limit, 409."""
        again = []
        for job in jobs:
            job.attempts += 1
            if job.attempts >= MAX_ATTEMPTS:
                _fail([job], Conflict())
            else:
                again.append(job)
        lane.jobs.extendleft(reversed(again))

    async def _run_general(self, lane: _Lane, job: _Job) -> None:
        """One command decided alone (its decision loads what it needs); a lost race retries it."""
        if job.future.done():
            return
        assert job.general is not None
        try:
            decision = await job.general(_metadata(job.ctx, job.correlation_id))
            appended = await self.store.append(
                decision.events,
                decision.expected,
                idempotency_key=job.ctx.idempotency_key,
                fingerprint=job.ctx.fingerprint,
            )
        except ConcurrencyConflict:
            self._retry(lane, [job])
        except Exception as exc:
            _fail([job], exc)
        else:
            if not job.future.done():
                job.future.set_result(Outcome(appended, decision.result))

    async def _run_group(self, stream: str, lane: _Lane, group: list[_Job]) -> None:
        """Decide a group of project commands in order, each on the state its predecessors leave,
        submit them together, and keep the folded state only if every one of them committed."""
        async with self._load_lock(stream):
            state, version = await self._current(stream)
            if state is None:
                _fail(group, AssertionError("on_project needs an existing project"))
                return
            wait_for_room = getattr(self.store, "wait_for_room", None)  # the writer's back-pressure
            if wait_for_room is not None:
                await wait_for_room()
            head, decided = self._submit_group(stream, state, version, group)
            pending = [entry.pending for entry in decided if entry.pending is not None]
            results = iter(await asyncio.gather(*pending, return_exceptions=True))
            exact = True  # every command so far was written as decided: the state equals the log's
            again: list[_Job] = []
            for entry in decided:
                if entry.pending is None:  # refused: final if it was decided on the log's state
                    if exact:
                        _fail([entry.job], entry.refusal or Conflict())
                    else:
                        again.append(entry.job)
                    continue
                result = next(results)
                if isinstance(result, ConcurrencyConflict):
                    again.append(entry.job)
                elif isinstance(result, BaseException):
                    _fail([entry.job], result)
                elif not entry.job.future.done():
                    entry.job.future.set_result(Outcome(result, entry.decision.result))
                exact = exact and isinstance(result, AppendResult) and not result.replayed
            if exact:
                self._projects[stream] = (head, state)
            else:  # the state holds events that were not written: fold it from the log again
                self._projects.pop(stream, None)
            self._retry(lane, again)

    async def _current(self, stream: str) -> tuple[ProjectState | None, int]:
        """The stream's state for a group to decide on, with no append of this process pending on
        it (the run engine's links, say), so the group's chained expected versions hold unless
        another process writes; the log is read only when the store saw the version move."""
        wait_for_stream = getattr(self.store, "wait_for_stream", None)
        for _ in range(3):
            if wait_for_stream is not None:
                await wait_for_stream(stream)
            version, state = self._projects.get(stream, (0, None))
            known = _known_version(self.store, stream)
            if state is not None and known == version:
                break
            await self._refresh(stream)  # someone else appended (or the store cannot tell): read it
            if known is None:
                break
        version, state = self._projects.get(stream, (0, None))
        return state, version

    def _submit_group(
        self, stream: str, state: ProjectState, version: int, group: list[_Job]
    ) -> tuple[int, list[_Decided]]:
        """Decide and submit each job in turn, with no await between them (so the store writes
        them in this order, chained by expected version); returns the stream's version after
        them and each job's fate, in order. A job whose decision refuses it queues nothing."""
        recorded_at = self.clock.now_iso()
        decided = []
        head = version
        for job in group:
            if job.future.done():  # the caller went away before its turn
                continue
            assert job.project is not None
            try:
                decision = _as_decision(job.project(state, _metadata(job.ctx, job.correlation_id)))
                decision.expected.setdefault(stream, head)
                pending = self.store.submit(
                    decision.events,
                    decision.expected,
                    idempotency_key=job.ctx.idempotency_key,
                    fingerprint=job.ctx.fingerprint,
                    recorded_at=recorded_at,
                )
            except Exception as exc:  # the decision's answer (a KromaError): nothing was queued
                decided.append(_Decided(job, refusal=exc))
                continue
            head = _fold_ahead(state, stream, head, decision.events, recorded_at)
            decided.append(_Decided(job, decision, pending))
        return head, decided


@dataclass(eq=False)
class _Decided:
    """A job of a group once decided: submitted (`pending`), or refused by its decision."""

    job: _Job
    decision: Decision = field(default_factory=lambda: Decision([]))
    pending: asyncio.Future[AppendResult] | None = None
    refusal: Exception | None = None


def _fail(jobs: list[_Job], exc: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)


def _known_version(store: EventStore, stream: str) -> int | None:
    """The store's version of `stream` without I/O, when the backend keeps one (a hint: an append
    decided on a stale one conflicts and is decided again)."""
    known = getattr(store, "known_version", None)
    return None if known is None else known(stream)


def _metadata(ctx: RequestContext, correlation_id: str, causation_id: str | None = None) -> Metadata:
    return Metadata(
        actor_user_id=ctx.actor.user_id,
        token_id=ctx.actor.token_id,
        request_id=ctx.request_id,
        correlation_id=correlation_id,
        causation_id=causation_id,
    )


def _as_decision(decided: Sequence[NewEvent] | Decision) -> Decision:
    return decided if isinstance(decided, Decision) else Decision(list(decided))


def _fold_ahead(
    state: ProjectState, stream: str, version: int, events: list[NewEvent], recorded_at: str
) -> int:
    """Fold a submitted command's events on `stream` into `state` as they will be stored (same data
    bytes, same `recorded_at`), so the next command of the group decides on it; returns the
    stream's version after them."""
    stored = []
    for e in events:
        if e.stream_id != stream:
            continue
        version += 1
        stored.append(
            Event(
                position=0,  # not known before the commit; evolvers never read it
                event_id=e.event_id or "",
                stream_id=stream,
                stream_version=version,
                type=e.type,
                schema_version=e.schema_version,
                data=msgspec.json.decode(codec.encode(e.data)),
                metadata=e.metadata,
                recorded_at=recorded_at,
                hash="",
            )
        )
    if stored:
        fold(state, stored)
    return version
