"""The agent dispatcher: delivers confirmed instructions to the agent API and records every step.

- It finds candidates in the read model (`dispatch_candidates`: confirmed and due, or running under
  an expired lease, oldest first) and decides on the instruction's own stream: the reservation is
  an append with the stream's exact version, so two workers, in one process or in two, never hold
  one instruction at once; the loser of the race simply moves on.
- It wakes on appends (`store.wait_for_append`) and at least every poll interval; time for leases
  and retries comes from the services' clock.
- The agent URL and token: the settings (`agent_api_url`/`agent_api_token`, env
  `KROMA_AGENT_API_URL`/`IAT_AGENT_API_URL`, ...), else the project's secrets `agent_api`/`url` and
  `agent_api`/`token`, decrypted in memory for the one dispatch and never logged.
- The outcome is recorded even when the dispatcher is stopping (a made call is never forgotten).
  Stopped before the outcome, the lease expires and the next worker records the attempt as lost
  (`lease_expired`) and retries it.

See `kroma.domain.agent_instructions` for the events and the lease rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio

from kroma.agents.client import Sleep, Target, Tries, dispatch, request_body
from kroma.crypto import CryptoError
from kroma.domain import secrets
from kroma.domain.agent_instructions import (
    MISSING_URL,
    RESERVED,
    DispatchOutcome,
    DispatchPolicy,
    InstructionState,
    Lease,
    decide_outcome,
    decide_take,
    fold,
    instruction_stream,
    lease_seconds_for,
)
from kroma.domain.aggregate import ProjectState
from kroma.domain.errors import KromaError
from kroma.events.envelope import Metadata
from kroma.events.store import ConcurrencyConflict
from kroma.projections import agent_instructions as read

if TYPE_CHECKING:
    import httpx

    from kroma.config import Settings

log = logging.getLogger("kroma.agents")

LEASE_MARGIN_SECONDS = 5.0  # a lease outlasts the longest dispatch by this much
CANDIDATES_PER_LOOK = 20
RECORD_ATTEMPTS = 8
SECRET_PROVIDER = "agent_api"
SECRET_UNAVAILABLE = "agent_api_secret_unavailable"


def default_worker_id() -> str:
    """`worker-<hex of the low 32 bits of the nanosecond clock>` (the reference's default)."""
    return f"worker-{time.time_ns() & 0xFFFFFFFF:x}"


@dataclass(frozen=True)
class DispatchOptions:
    """The worker's options (pipeline spec §7.2), from the settings or `kroma worker`'s flags."""

    worker_id: str
    poll_interval: float = 2.0
    max_locked_seconds: float = 120.0
    default_max_attempts: int = 3
    retry_backoff_seconds: float = 10.0
    tries: Tries = field(default_factory=Tries)
    api_url: str = field(default="", repr=False)
    api_token: str = field(default="", repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, worker_id: str | None = None) -> DispatchOptions:
        return cls(
            worker_id=(worker_id or settings.agent_worker_id).strip() or default_worker_id(),
            poll_interval=settings.agent_poll_interval_seconds,
            max_locked_seconds=settings.agent_max_locked_seconds,
            default_max_attempts=settings.agent_default_max_attempts,
            retry_backoff_seconds=settings.agent_retry_backoff_seconds,
            tries=Tries(
                timeout=settings.agent_dispatch_timeout_seconds,
                retries=settings.agent_dispatch_retries,
                backoff=settings.agent_dispatch_backoff_seconds,
            ),
            api_url=settings.agent_api_url,
            api_token=settings.agent_api_token,
        )

    @property
    def lease_seconds(self) -> float:
        return lease_seconds_for(self.max_locked_seconds, self.tries.worst_case_seconds, LEASE_MARGIN_SECONDS)

    @property
    def policy(self) -> DispatchPolicy:
        return DispatchPolicy(
            lease_seconds=self.lease_seconds,
            default_max_attempts=self.default_max_attempts,
            retry_backoff_seconds=self.retry_backoff_seconds,
        )


@dataclass(frozen=True)
class Reservation:
    """An instruction this worker holds: what it needs for the dispatch and the outcome."""

    instruction_id: str
    project_id: str
    text: str
    lease: Lease
    event_id: str

    @property
    def stream(self) -> str:
        return instruction_stream(self.instruction_id)


class SecretUnavailable(Exception):
    """A project's agent_api secret exists but could not be decrypted (details are logged)."""


class Dispatcher:
    def __init__(self, services: Any, options: DispatchOptions | None = None) -> None:
        self.services = services
        self.store = services.store
        self.clock = services.clock
        self.options = options or DispatchOptions.from_settings(services.settings)
        self.policy = self.options.policy
        self.sleep: Sleep = anyio.sleep  # the pause between tries (tests record it)
        self.transport: httpx.AsyncBaseTransport | None = None  # tests may route HTTP elsewhere
        self.processed = 0
        self._task: asyncio.Task[int] | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopped = False

    @property
    def worker_id(self) -> str:
        return self.options.worker_id

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Run in the background (inside `kroma serve`) until `close`."""
        self._task = asyncio.get_running_loop().create_task(self.run(), name="kroma-agent-dispatcher")

    def stop(self) -> None:
        """Ask `run` to return (an outcome being recorded is still recorded)."""
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    async def close(self) -> None:
        self.stop()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def run(self, once: bool = False) -> int:
        """Dispatch until stopped; with `once`, stop after one instruction or when none is due.
        Returns how many instructions this dispatcher processed."""
        log.info("agent dispatcher %s started (lease %gs)", self.worker_id, self.policy.lease_seconds)
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self._stopped:
                scope.cancel()
            while True:
                head = await self.store.head()
                if once:
                    await self.run_once()
                    break
                try:
                    worked = await self.run_once()
                except Exception:
                    log.exception("agent dispatcher %s: a step failed; trying again shortly", self.worker_id)
                    await anyio.sleep(max(self.options.poll_interval, 0.1))
                    continue
                if not worked:
                    await self.store.wait_for_append(head, max(self.options.poll_interval, 0.1))
        self._scope = None
        return self.processed

    # -- one step ------------------------------------------------------------------------------

    async def run_once(self) -> bool:
        """Reserve the oldest due instruction and dispatch it; False when there was none."""
        reservation = await self.reserve_next()
        if reservation is None:
            return False
        await self.process(reservation)
        return True

    async def reserve_next(self) -> Reservation | None:
        """Reserve the oldest due instruction (recording lost attempts of expired leases on the
        way), once the read model shows the whole log."""
        await self.services.settle(await self.store.head())
        now = self.clock.now()
        for instruction_id in await read.dispatch_candidates(self.services.reader, now, CANDIDATES_PER_LOOK):
            reservation = await self._take(instruction_id, now)
            if reservation is not None:
                return reservation
        return None

    def _metadata(self, correlation_id: str, causation_id: str | None = None) -> Metadata:
        return Metadata(correlation_id=correlation_id, causation_id=causation_id)

    async def _take(self, instruction_id: str, now: datetime) -> Reservation | None:
        stream = instruction_stream(instruction_id)
        events = await self.store.read_stream(stream)
        state = fold(events)
        lease_id = self.clock.new_id()
        event = decide_take(
            state, now, self.worker_id, lease_id, self.clock.new_id(), self.policy, self._metadata(lease_id)
        )
        if event is None or state is None:
            return None
        try:
            appended = await self.store.append([event], {stream: events[-1].stream_version})
        except ConcurrencyConflict:
            return None  # another worker, or a cancel, came first
        d = event.data
        if event.type != RESERVED:
            log.info("instruction %s: the lease of %s expired (%s)", state.id, d["worker_id"], d["message"])
            return None
        lease = Lease(lease_id, self.worker_id, d["attempt"], d["lease_expires_at"])
        return Reservation(state.id, state.project_id, state.instruction_text, lease, appended.event_ids[0])

    async def process(self, reservation: Reservation) -> None:
        """Dispatch a reserved instruction and record the outcome on its stream."""
        outcome = await self._dispatch(reservation)
        with anyio.CancelScope(shield=True):
            await self._record(reservation, outcome)
        self.processed += 1

    async def _dispatch(self, reservation: Reservation) -> DispatchOutcome:
        project, _version = await self.services.commands.load_project(reservation.project_id)
        try:
            target = await self._target(project)
        except SecretUnavailable:
            return DispatchOutcome(ok=False, error=SECRET_UNAVAILABLE)
        if target is None:
            return DispatchOutcome(ok=False, error=MISSING_URL)
        body = request_body(reservation.instruction_id, project.slug if project else "", reservation.text)

        async def proceed() -> bool:
            return self._holds(fold(await self.store.read_stream(reservation.stream)), reservation)

        return await dispatch(
            target, body, self.options.tries, sleep=self.sleep, proceed=proceed, transport=self.transport
        )

    @staticmethod
    def _holds(state: InstructionState | None, reservation: Reservation) -> bool:
        """Still this worker's to dispatch: running under this reservation's lease."""
        lease = state.lease if state is not None else None
        return state is not None and state.status == "running" and lease == reservation.lease

    async def _target(self, project: ProjectState | None) -> Target | None:
        url = self.options.api_url.strip() or await self._secret(project, "url")
        if not url:
            return None
        token = self.options.api_token.strip() or await self._secret(project, "token")
        return Target(url, token)

    async def _secret(self, project: ProjectState | None, name: str) -> str:
        stored = secrets.find(project, SECRET_PROVIDER, name) if project is not None else None
        if not stored or not stored.get("ciphertext") or not stored.get("key_id"):
            return ""
        try:
            keys = await self.services.vault.keys()
            value: str = await keys.decrypt_secret(stored["key_id"], stored["ciphertext"])
        except (KromaError, CryptoError) as exc:
            log.warning(
                "project %s: secret %s/%s could not be decrypted (%s)",
                project.slug if project else "?",
                SECRET_PROVIDER,
                name,
                type(exc).__name__,
            )
            raise SecretUnavailable from None
        return value.strip()

    async def _record(self, reservation: Reservation, outcome: DispatchOutcome) -> None:
        """Append the outcome, decided on the stream's current state (a cancel or confirm that
        came meanwhile is decided against, not overwritten)."""
        stream, entry_id = reservation.stream, self.clock.new_id()
        key = f"{stream}/lease:{reservation.lease.lease_id}/outcome"
        meta = self._metadata(reservation.lease.lease_id, reservation.event_id)
        for _attempt in range(RECORD_ATTEMPTS):
            events = await self.store.read_stream(stream)
            state = fold(events)
            assert state is not None, "a reserved instruction exists"
            event = decide_outcome(
                state,
                reservation.lease,
                outcome,
                self.clock.now(),
                self.worker_id,
                entry_id,
                self.policy,
                meta,
            )
            try:
                await self.store.append(
                    [event], {stream: events[-1].stream_version}, idempotency_key=key, fingerprint=key
                )
            except ConcurrencyConflict:
                continue
            log.info("instruction %s: %s (%s)", reservation.instruction_id, event.type, event.data["message"])
            return
        raise ConcurrencyConflict(stream, -1, -1)
