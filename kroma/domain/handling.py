"""Running commands: load the aggregate, decide, append atomically, retry on a lost race.

This is the domain's one door to the event store. Decisions themselves stay pure (the decide
functions in the feature modules); this module only loads state and appends what they return.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kroma.clock import Clock
from kroma.domain import catalog as _catalog  # noqa: F401  (registers evolvers)
from kroma.domain.aggregate import ProjectState, fold, project_stream, slug_stream
from kroma.domain.slugs import normalize_slug
from kroma.events.envelope import Metadata, NewEvent
from kroma.events.store import AppendResult, ConcurrencyConflict, EventStore

T = TypeVar("T")
MAX_ATTEMPTS = 8


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


class Commands:
    """Executes commands against the event store with a cache of folded project states."""

    def __init__(self, store: EventStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._projects: dict[str, tuple[int, ProjectState | None]] = {}
        self._slugs: dict[str, str] = {}
        self._load_locks: dict[str, asyncio.Lock] = {}

    def metadata(self, correlation_id: str, causation_id: str | None = None) -> Metadata:
        ctx = current_request.get()
        return Metadata(
            actor_user_id=ctx.actor.user_id,
            token_id=ctx.actor.token_id,
            request_id=ctx.request_id,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )

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
        # shared cached state would apply them twice.
        async with self._load_locks.setdefault(stream, asyncio.Lock()):
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

    async def execute(self, decide: Callable[[Metadata], Awaitable[Decision]]) -> Outcome:
        """Decide and append; when another command won a race on one of the streams, decide
        again on the new state. Raises whatever the decision raises (a KromaError)."""
        ctx = current_request.get()
        correlation_id = self.clock.new_id()
        for _attempt in range(MAX_ATTEMPTS):
            decision = await decide(self.metadata(correlation_id))
            try:
                appended = await self.store.append(
                    decision.events,
                    decision.expected,
                    idempotency_key=ctx.idempotency_key,
                    fingerprint=ctx.fingerprint,
                )
            except ConcurrencyConflict:
                continue
            return Outcome(appended, decision.result)
        raise ConcurrencyConflict("*", -1, -1)

    async def on_project(
        self,
        project_id: str,
        decide: Callable[[ProjectState, Metadata], Sequence[NewEvent] | Decision],
    ) -> Outcome:
        """Run a decision against one existing project's state, guarded by its stream version."""

        async def attempt(meta: Metadata) -> Decision:
            state, version = await self.load_project(project_id)
            assert state is not None, "on_project needs an existing project"
            decided = decide(state, meta)
            if isinstance(decided, Decision):
                decided.expected.setdefault(project_stream(project_id), version)
                return decided
            return Decision(list(decided), {project_stream(project_id): version})

        return await self.execute(attempt)
