"""Agent instructions and their state machine (contract §3.16; routes 64-69)."""

from __future__ import annotations

from collections.abc import Callable

from litestar import Response, Router, get, post
from litestar.params import FromPath, JSONBody

from kroma.domain import agent_instructions as domain
from kroma.domain.errors import NotFound
from kroma.domain.handling import Decision
from kroma.events.envelope import Metadata, NewEvent
from kroma.http import responses
from kroma.http.deps import ServicesDep, project_row, project_state
from kroma.projections import agent_instructions as read
from kroma.services import Services


@get("/{slug:str}/agent/instructions")
async def list_instructions(slug: FromPath[str], services: ServicesDep) -> Response[bytes]:
    row = await project_row(services, slug)
    instructions = await read.list_instructions(services.reader, row["id"])
    return responses.ok(count=len(instructions), instructions=instructions)


@post("/{slug:str}/agent/instructions")
async def create_instruction(
    slug: FromPath[str], data: JSONBody[domain.CreateInstruction], services: ServicesDep
) -> Response[bytes]:
    text = domain.instruction_text(data)
    state = await project_state(services, slug)
    instruction_id, entry_id = services.clock.new_id(), services.clock.new_id()

    async def decide(meta: Metadata) -> Decision:
        events, expected = domain.decide_create(state.id, instruction_id, entry_id, text, meta)
        return Decision(events, expected)

    outcome = await services.commands.execute(decide)
    await services.settle(outcome.append.last_position)
    instruction = await read.find_instruction(services.reader, state.id, instruction_id)
    return responses.ok(instruction=instruction, audit_id=outcome.audit_id)


async def _instruction_row(services: Services, slug: str, instruction_id: str) -> dict:
    row = await project_row(services, slug, domain.NOT_FOUND)
    instruction = await read.find_instruction(services.reader, row["id"], instruction_id)
    if instruction is None:
        raise NotFound(domain.NOT_FOUND)
    return instruction


@get("/{slug:str}/agent/instructions/{instruction_id:str}")
async def instruction_detail(
    slug: FromPath[str], instruction_id: FromPath[str], services: ServicesDep
) -> Response[bytes]:
    return responses.ok(instruction=await _instruction_row(services, slug, instruction_id))


@get("/{slug:str}/agent/instructions/{instruction_id:str}/events")
async def instruction_events(
    slug: FromPath[str], instruction_id: FromPath[str], services: ServicesDep
) -> Response[bytes]:
    instruction = await _instruction_row(services, slug, instruction_id)
    events = await read.list_events(services.reader, instruction["project_id"], instruction_id)
    return responses.ok(instruction_id=instruction_id, count=len(events), events=events)


Transition = Callable[
    [domain.InstructionState | None, str, domain.InstructionAction, str, Metadata], NewEvent
]


async def _transition(
    services: Services, slug: str, instruction_id: str, cmd: domain.InstructionAction, transition: Transition
) -> Response[bytes]:
    """Confirm or cancel: decided against the instruction stream's exact version, so of two racing
    transitions one wins and the other is decided again on the winner's state."""
    project = await project_state(services, slug, domain.NOT_FOUND)
    stream = domain.instruction_stream(instruction_id)
    entry_id = services.clock.new_id()

    async def decide(meta: Metadata) -> Decision:
        events = await services.store.read_stream(stream)
        event = transition(domain.fold(events), project.id, cmd, entry_id, meta)
        return Decision([event], {stream: events[-1].stream_version})

    outcome = await services.commands.execute(decide)
    await services.settle(outcome.append.last_position)
    instruction = await read.find_instruction(services.reader, project.id, instruction_id)
    return responses.ok(instruction=instruction, audit_id=outcome.audit_id)


@post("/{slug:str}/agent/instructions/{instruction_id:str}/confirm")
async def confirm_instruction(
    slug: FromPath[str],
    instruction_id: FromPath[str],
    data: JSONBody[domain.InstructionAction],
    services: ServicesDep,
) -> Response[bytes]:
    return await _transition(services, slug, instruction_id, data, domain.decide_confirm)


@post("/{slug:str}/agent/instructions/{instruction_id:str}/cancel")
async def cancel_instruction(
    slug: FromPath[str],
    instruction_id: FromPath[str],
    data: JSONBody[domain.InstructionAction],
    services: ServicesDep,
) -> Response[bytes]:
    return await _transition(services, slug, instruction_id, data, domain.decide_cancel)


router = Router(
    "/api/projects",
    route_handlers=[
        list_instructions,
        create_instruction,
        instruction_detail,
        instruction_events,
        confirm_instruction,
        cancel_instruction,
    ],
    tags=["agent"],
)
