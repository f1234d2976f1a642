"""Agent instructions and their state machine (contract §3.16): commands, events, decisions (pure).

Each instruction is its own aggregate on stream `instruction:<id>`; every event carries
`project_id` and `instruction_id`. Confirm and cancel decide against the stream's current state
and append with its exact version, so a confirm racing a cancel is decided once: the loser is
retried against the new state and gets its 400.

Events:
- `agent_instruction.created`   -> status `pending`, instruction event `created` "Instruction created".
- `agent_instruction.confirmed` -> status `confirmed`, confirmed_at=now, canceled_at cleared,
  instruction event `confirmed` with the trimmed message or "Instruction confirmed".
- `agent_instruction.canceled`  -> status `canceled`, canceled_at=now, instruction event `canceled`.
- `agent_instruction.confirm_repeated` / `agent_instruction.cancel_repeated`: confirm of a confirmed
  (cancel of a canceled) instruction. The record is returned unchanged and no instruction event is
  listed, but the call is still recorded: the log is the audit trail (the reference writes an audit
  row here), so the response's `audit_id` is this event's id.
Statuses: pending, confirmed, running, done, failed, canceled. Confirm and cancel move any status
other than their opposite terminal one (also `running`: a cancel during a dispatch wins).

Dispatch (pipeline spec §7; the worker is `kroma.agents`), every step one event on the stream:
- `agent_instruction.reserved` {worker_id, lease_id, attempt, max_attempts, lease_expires_at}
  -> `running`; not listed (the reference writes no instruction event on reservation). Appended
  with the stream's exact version, so of two workers one reserves and the other loses the race.
- `agent_instruction.dispatched` -> the mapped status; listed `result`
  "remote_status={s}, attempts={n}, http_status={code}" ({s} is the spec's mapped remote status).
- `agent_instruction.retry_scheduled` -> `confirmed` with `next_attempt_at`; listed
  `retry_scheduled` "error={e}, attempts={n}, max_attempts={m}, next_attempt_at={t}".
- `agent_instruction.dispatch_failed` -> `failed`; listed `error`, the same message with
  `next_attempt_at=none`.
Outcome events carry the record they leave behind (status, attempts, max_attempts,
next_attempt_at, last_error, and the agent's response for a result), decided against the exact
stream version, so folding them needs no clock and a rebuild is identical.

The lease: a reservation holds the instruction until `lease_expires_at` (the worker's
`max_locked_seconds`, at least the longest dispatch it can make plus a margin, so a live worker
always records its outcome before its lease ends). An outcome closes its own lease only. Confirm
and cancel do not close it: an instruction confirmed again during a dispatch is not reserved
again until that dispatch is recorded or its lease has expired, so one instruction is never
dispatched twice at once. A `running` instruction whose lease expired (its worker died) is
recorded as a failed attempt with error `lease_expired` (a retry with the usual backoff, or
`failed` once attempts are exhausted) by the next worker that looks, so nothing stays `running`.
An outcome whose lease is no longer the running one (canceled, confirmed again or expired
meanwhile) is still recorded, as a listed `result`/`error`, but leaves the status as it is.

Remote status `running` (the agent took the instruction and works on it asynchronously) becomes
`done`, like `accepted` and `queued`: the dispatch is complete, the agent's response is kept, and
nothing parks in `running` (the reference's defect, pipeline spec §10.7 #11).

Request compatibility (contract §9): create reads `instruction_text`. A client following the
OpenAPI draft sends `{instruction_type, payload_json, requires_confirmation}`; when its
`payload_json` carries a string `instruction_text` (the exact payload shape the worker forwards to
the agent) that text is used, but only when the top-level `instruction_text` key is absent or null.
`objective` is NOT accepted: it is the worker's outbound name for the text, not a request field of
any documented create shape, and guessing at it would turn typos into silently accepted requests.
Everything else of the draft shape is ignored; without any text the request is the contract's 400.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec

from kroma.clock import iso_micro, to_seconds
from kroma.domain.errors import NotFound, ValidationError, required
from kroma.events.envelope import Event, ExpectedVersion, Metadata, NewEvent

CREATED = "agent_instruction.created"
CONFIRMED = "agent_instruction.confirmed"
CANCELED = "agent_instruction.canceled"
CONFIRM_REPEATED = "agent_instruction.confirm_repeated"
CANCEL_REPEATED = "agent_instruction.cancel_repeated"
RESERVED = "agent_instruction.reserved"
DISPATCHED = "agent_instruction.dispatched"
RETRY_SCHEDULED = "agent_instruction.retry_scheduled"
DISPATCH_FAILED = "agent_instruction.dispatch_failed"
OUTCOMES = (DISPATCHED, RETRY_SCHEDULED, DISPATCH_FAILED)
NOT_FOUND = "Agent instruction not found"

DEFAULT_MAX_ATTEMPTS = 3  # the reference's column default
MISSING_URL = "missing_agent_api_url"
LEASE_EXPIRED = "lease_expired"
DISPATCH_FAILED_TEXT = "dispatch_failed"  # the error text of a failure that gave none
REMOTE_STATUSES = {
    "done": "done",
    "failed": "failed",
    "running": "running",
    "accepted": "done",
    "queued": "done",
}
# The instruction's status for a mapped remote status: `running` is done (see the module docstring).
RESULT_STATUSES = {"done": "done", "failed": "failed", "running": "done"}


def instruction_stream(instruction_id: str) -> str:
    return f"instruction:{instruction_id}"


# -- commands ------------------------------------------------------------------------------------


class CreateInstruction(msgspec.Struct, omit_defaults=True):
    instruction_text: str | None = None
    payload_json: Any = None  # OpenAPI-draft shape; only its `instruction_text` is read


class InstructionAction(msgspec.Struct, omit_defaults=True):
    """Body of confirm and cancel. Every field is optional, but a JSON body (`{}`) is required."""

    message: str | None = None


# -- state ---------------------------------------------------------------------------------------


@dataclass
class Lease:
    """A worker's hold on an instruction: its attempt number and when the hold ends."""

    lease_id: str
    worker_id: str
    attempt: int
    expires_at: str  # envelope timestamp format (microseconds)


@dataclass
class InstructionState:
    id: str
    project_id: str
    status: str
    updated_at: str
    instruction_text: str = ""
    attempts: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    next_attempt_at: str | None = None  # YYYY-MM-DDTHH:MM:SSZ
    last_error: str | None = None
    lease: Lease | None = None  # the open lease, until its outcome is recorded


def _evolve(state: InstructionState, event: Event) -> None:
    d = event.data
    if event.type == CONFIRMED:
        state.status, state.next_attempt_at, state.last_error = "confirmed", None, None
    elif event.type == CANCELED:
        state.status = "canceled"
    elif event.type == RESERVED:
        state.status = "running"
        state.max_attempts = d["max_attempts"]
        state.lease = Lease(d["lease_id"], d["worker_id"], d["attempt"], d["lease_expires_at"])
    elif event.type in OUTCOMES:
        state.status = d["status"]
        state.attempts = d["attempts"]
        state.max_attempts = d["max_attempts"]
        state.next_attempt_at = d["next_attempt_at"]
        state.last_error = d["last_error"]
        if state.lease is not None and state.lease.lease_id == d["lease_id"]:
            state.lease = None
    else:
        return
    state.updated_at = to_seconds(event.recorded_at)


def fold(events: list[Event]) -> InstructionState | None:
    state: InstructionState | None = None
    for event in events:
        if event.type == CREATED:
            d = event.data
            at = to_seconds(event.recorded_at)
            state = InstructionState(
                d["instruction_id"], d["project_id"], "pending", at, d["instruction_text"]
            )
        elif state is not None:
            _evolve(state, event)
    return state


# -- decisions -----------------------------------------------------------------------------------


def instruction_text(cmd: CreateInstruction) -> str:
    raw = cmd.instruction_text
    if raw is None and isinstance(cmd.payload_json, dict):
        nested = cmd.payload_json.get("instruction_text")
        raw = nested if isinstance(nested, str) else None
    text = (raw or "").strip()
    if not text:
        raise required("instruction_text")
    return text


def decide_create(
    project_id: str, instruction_id: str, entry_id: str, text: str, meta: Metadata
) -> tuple[list[NewEvent], dict[str, int]]:
    data = {
        "project_id": project_id,
        "instruction_id": instruction_id,
        "instruction_text": text,
        "status": "pending",
        "entry_id": entry_id,
        "message": "Instruction created",
    }
    stream = instruction_stream(instruction_id)
    return [NewEvent(stream, CREATED, data, meta)], {stream: ExpectedVersion.NO_STREAM}


def _existing(state: InstructionState | None, project_id: str) -> InstructionState:
    if state is None or state.project_id != project_id:
        raise NotFound(NOT_FOUND)
    return state


def _decide_transition(
    state: InstructionState | None,
    project_id: str,
    cmd: InstructionAction,
    entry_id: str,
    meta: Metadata,
    *,
    target: str,
    opposite: str,
    moved: str,
    repeated: str,
) -> NewEvent:
    """confirm and cancel mirror each other: 400 from the opposite terminal state, a no-op
    (recorded for the audit trail, no instruction event) from their own, else the move."""
    current = _existing(state, project_id)
    stream = instruction_stream(current.id)
    base = {"project_id": project_id, "instruction_id": current.id}
    if current.status == opposite:
        raise ValidationError(f"Instruction is already {opposite}")
    if current.status == target:
        return NewEvent(stream, repeated, {**base, "status": target}, meta)
    message = (cmd.message or "").strip() or f"Instruction {target}"
    data = {**base, "status": target, "entry_id": entry_id, "message": message}
    return NewEvent(stream, moved, data, meta)


def decide_confirm(
    state: InstructionState | None, project_id: str, cmd: InstructionAction, entry_id: str, meta: Metadata
) -> NewEvent:
    return _decide_transition(
        state,
        project_id,
        cmd,
        entry_id,
        meta,
        target="confirmed",
        opposite="canceled",
        moved=CONFIRMED,
        repeated=CONFIRM_REPEATED,
    )


def decide_cancel(
    state: InstructionState | None, project_id: str, cmd: InstructionAction, entry_id: str, meta: Metadata
) -> NewEvent:
    return _decide_transition(
        state,
        project_id,
        cmd,
        entry_id,
        meta,
        target="canceled",
        opposite="confirmed",
        moved=CANCELED,
        repeated=CANCEL_REPEATED,
    )


# -- dispatch decisions (the worker's; pure: `now` comes from the caller's clock) -----------------


@dataclass(frozen=True)
class DispatchPolicy:
    """The worker settings that decisions depend on (pipeline spec §7.2)."""

    lease_seconds: float = 120.0
    default_max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_backoff_seconds: float = 10.0


@dataclass(frozen=True)
class DispatchOutcome:
    """What one dispatch achieved: a 2xx (`response` is the parsed body, `{}` when it was not
    JSON) or a failure with its error text."""

    ok: bool
    http_status: int | None = None
    response: Any = None
    error: str = ""


def seconds_text(moment: datetime) -> str:
    """The reference's `YYYY-MM-DDTHH:MM:SSZ`, rounded up to the next whole second (never early)."""
    whole = moment.replace(microsecond=0)
    if whole < moment:
        whole += timedelta(seconds=1)
    return whole.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def map_remote_status(response: Any) -> str:
    """`map_remote_status` on the response's `status` (default `done`; trimmed, case-insensitive):
    done, failed, running; accepted and queued are done; anything else is failed."""
    raw = response.get("status") if isinstance(response, dict) else None
    text = raw if isinstance(raw, str) else "done"
    return REMOTE_STATUSES.get(text.strip().lower(), "failed")


def lease_expired(state: InstructionState, now: datetime) -> bool:
    return state.lease is not None and parse_time(state.lease.expires_at) <= now


def is_due(state: InstructionState, now: datetime) -> bool:
    """Reservable now: confirmed, its retry time reached, and no live lease on it."""
    if state.status != "confirmed":
        return False
    if state.next_attempt_at is not None and parse_time(state.next_attempt_at) > now:
        return False
    return state.lease is None or lease_expired(state, now)


def _base(state: InstructionState, worker_id: str) -> dict[str, Any]:
    return {"project_id": state.project_id, "instruction_id": state.id, "worker_id": worker_id}


def decide_take(
    state: InstructionState | None,
    now: datetime,
    worker_id: str,
    lease_id: str,
    entry_id: str,
    policy: DispatchPolicy,
    meta: Metadata,
) -> NewEvent | None:
    """What a worker looking at this instruction records: `reserved` when it is due; for a
    `running` instruction whose lease expired, that lost attempt's failure (`lease_expired`);
    else nothing. A canceled instruction is never reserved."""
    if state is None:
        return None
    if state.status == "running" and state.lease is not None and lease_expired(state, now):
        lost = DispatchOutcome(ok=False, error=LEASE_EXPIRED)
        return decide_outcome(state, state.lease, lost, now, worker_id, entry_id, policy, meta)
    if not is_due(state, now):
        return None
    attempt = state.attempts + 1
    data = {
        **_base(state, worker_id),
        "status": "running",
        "lease_id": lease_id,
        "attempt": attempt,
        "max_attempts": max(state.max_attempts, policy.default_max_attempts, 1),
        "lease_expires_at": iso_micro(now + timedelta(seconds=policy.lease_seconds)),
    }
    return NewEvent(instruction_stream(state.id), RESERVED, data, meta)


def failure_message(error: str, attempts: int, max_attempts: int, next_attempt_at: str | None) -> str:
    return (
        f"error={error}, attempts={attempts}, max_attempts={max_attempts},"
        f" next_attempt_at={next_attempt_at or 'none'}"
    )


def decide_outcome(
    state: InstructionState,
    lease: Lease,
    outcome: DispatchOutcome,
    now: datetime,
    worker_id: str,
    entry_id: str,
    policy: DispatchPolicy,
    meta: Metadata,
) -> NewEvent:
    """Record the outcome of the dispatch made under `lease`. While that lease is the running one
    the status moves (result mapping, retry with linear backoff, or failed); otherwise (canceled,
    confirmed again or taken over meanwhile) the outcome is recorded and the status kept."""
    current = state.status == "running" and state.lease is not None and state.lease.lease_id == lease.lease_id
    attempts = max(state.attempts, lease.attempt)
    record = {
        **_base(state, worker_id),
        "entry_id": entry_id,
        "lease_id": lease.lease_id,
        "attempts": attempts,
        "max_attempts": state.max_attempts,
        "superseded": not current,
    }
    stream = instruction_stream(state.id)
    if outcome.ok:
        remote = map_remote_status(outcome.response)
        record |= {
            "status": RESULT_STATUSES[remote] if current else state.status,
            "next_attempt_at": None if current else state.next_attempt_at,
            "last_error": None if current else state.last_error,
            "remote_status": remote,
            "http_status": outcome.http_status,
            "response": outcome.response,
            "message": f"remote_status={remote}, attempts={attempts}, http_status={outcome.http_status}",
        }
        return NewEvent(stream, DISPATCHED, record, meta)
    error = outcome.error or DISPATCH_FAILED_TEXT
    if current and attempts < state.max_attempts:
        delay = max(policy.retry_backoff_seconds, 1.0) * attempts
        next_at = seconds_text(now + timedelta(seconds=delay))
        record |= {"status": "confirmed", "next_attempt_at": next_at, "last_error": error, "error": error}
        record["message"] = failure_message(error, attempts, state.max_attempts, next_at)
        return NewEvent(stream, RETRY_SCHEDULED, record, meta)
    record |= {
        "status": "failed" if current else state.status,
        "next_attempt_at": None if current else state.next_attempt_at,
        "last_error": error,
        "error": error,
        "message": failure_message(error, attempts, state.max_attempts, None),
    }
    return NewEvent(stream, DISPATCH_FAILED, record, meta)


def lease_seconds_for(max_locked_seconds: float, worst_dispatch_seconds: float, margin: float) -> float:
    """The lease a worker takes: its `max_locked_seconds`, but never shorter than its longest
    possible dispatch plus a margin, so a live worker's lease never expires under it."""
    return max(float(max_locked_seconds), math.ceil(worst_dispatch_seconds + margin))
