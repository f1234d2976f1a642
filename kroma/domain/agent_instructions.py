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
Statuses: pending, confirmed, running, done, failed, canceled (the worker, later, moves confirmed
instructions through running/done/failed). Confirm and cancel move any status other than their
opposite terminal one.

Request compatibility (contract §9): create reads `instruction_text`. A client following the
OpenAPI draft sends `{instruction_type, payload_json, requires_confirmation}`; when its
`payload_json` carries a string `instruction_text` (the exact payload shape the worker forwards to
the agent) that text is used, but only when the top-level `instruction_text` key is absent or null.
`objective` is NOT accepted: it is the worker's outbound name for the text, not a request field of
any documented create shape, and guessing at it would turn typos into silently accepted requests.
Everything else of the draft shape is ignored; without any text the request is the contract's 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from kroma.clock import to_seconds
from kroma.domain.errors import NotFound, ValidationError, required
from kroma.events.envelope import Event, ExpectedVersion, Metadata, NewEvent

CREATED = "agent_instruction.created"
CONFIRMED = "agent_instruction.confirmed"
CANCELED = "agent_instruction.canceled"
CONFIRM_REPEATED = "agent_instruction.confirm_repeated"
CANCEL_REPEATED = "agent_instruction.cancel_repeated"
NOT_FOUND = "Agent instruction not found"


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
class InstructionState:
    id: str
    project_id: str
    status: str
    updated_at: str


def fold(events: list[Event]) -> InstructionState | None:
    state: InstructionState | None = None
    for event in events:
        d, at = event.data, to_seconds(event.recorded_at)
        if event.type == CREATED:
            state = InstructionState(d["instruction_id"], d["project_id"], "pending", at)
        elif state is not None and event.type in (CONFIRMED, CANCELED):
            state.status = "confirmed" if event.type == CONFIRMED else "canceled"
            state.updated_at = at
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
