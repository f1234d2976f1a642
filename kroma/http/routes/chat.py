"""Chat sessions and messages (contract §3.16; routes 59-63)."""

from __future__ import annotations

from litestar import Response, Router, get, post
from litestar.params import FromPath, JSONBody

from kroma.domain import chat as domain
from kroma.domain.errors import NotFound
from kroma.domain.handling import Decision
from kroma.events.envelope import Metadata
from kroma.http import responses
from kroma.http.deps import ServicesDep, project_row, project_state
from kroma.projections import chat as read


@get("/{slug:str}/chat/sessions")
async def list_sessions(slug: FromPath[str], services: ServicesDep) -> Response[bytes]:
    row = await project_row(services, slug)
    sessions = await read.list_sessions(services.reader, row["id"])
    return responses.ok(count=len(sessions), sessions=sessions)


@post("/{slug:str}/chat/sessions")
async def create_session(
    slug: FromPath[str], data: JSONBody[domain.CreateSession], services: ServicesDep
) -> Response[bytes]:
    title = domain.session_title(data)
    state = await project_state(services, slug)
    session_id = services.clock.new_id()

    async def decide(meta: Metadata) -> Decision:
        events, expected = domain.decide_create_session(state.id, session_id, title, meta)
        return Decision(events, expected)

    outcome = await services.commands.execute(decide)
    await services.settle(outcome.append.last_position)
    session = await read.find_session(services.reader, state.id, session_id)
    return responses.ok(session=session, audit_id=outcome.audit_id)


@get("/{slug:str}/chat/sessions/{session_id:str}")
async def session_detail(
    slug: FromPath[str], session_id: FromPath[str], services: ServicesDep
) -> Response[bytes]:
    row = await project_row(services, slug, domain.SESSION_NOT_FOUND)
    session = await read.find_session(services.reader, row["id"], session_id)
    if session is None:
        raise NotFound(domain.SESSION_NOT_FOUND)
    return responses.ok(session=session)


@get("/{slug:str}/chat/sessions/{session_id:str}/messages")
async def list_messages(
    slug: FromPath[str], session_id: FromPath[str], services: ServicesDep
) -> Response[bytes]:
    row = await project_row(services, slug, domain.SESSION_NOT_FOUND)
    if await read.find_session(services.reader, row["id"], session_id) is None:
        raise NotFound(domain.SESSION_NOT_FOUND)
    messages = await read.list_messages(services.reader, row["id"], session_id)
    return responses.ok(session_id=session_id, count=len(messages), messages=messages)


@post("/{slug:str}/chat/sessions/{session_id:str}/messages")
async def post_message(
    slug: FromPath[str], session_id: FromPath[str], data: JSONBody[domain.PostMessage], services: ServicesDep
) -> Response[bytes]:
    message = domain.validate_message(data)
    state = await project_state(services, slug, domain.SESSION_NOT_FOUND)
    message_id = services.clock.new_id()

    async def decide(meta: Metadata) -> Decision:
        owner = domain.session_project(await services.store.read_stream(domain.chat_stream(session_id)))
        events, expected = domain.decide_post_message(owner, state.id, session_id, message_id, message, meta)
        return Decision(events, expected)

    outcome = await services.commands.execute(decide)
    await services.settle(outcome.append.last_position)
    return responses.ok(
        message=await read.find_message(services.reader, message_id), audit_id=outcome.audit_id
    )


router = Router(
    "/api/projects",
    route_handlers=[list_sessions, create_session, session_detail, list_messages, post_message],
    tags=["chat"],
)
