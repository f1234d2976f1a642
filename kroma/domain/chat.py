"""Chat sessions and their messages (contract §3.16): commands, events and decisions (pure).

Each session is its own aggregate on stream `chat:<session_id>`: `chat_session.created` opens it,
`chat_message.posted` appends a message. Both carry `project_id`. Sessions are never renamed,
closed or deleted, so "the session exists in this project" can never stop being true once it is:
a message append therefore needs no exact expected version (concurrent posts never conflict), and
a message never changes the session's `updated_at`.

Request compatibility (contract §9): clients following the OpenAPI draft send `content_text`
instead of `content`. Both are accepted; when both keys are present (non-null), `content` wins,
even when it is blank (then the request is a 400 like any blank content).
"""

from __future__ import annotations

from typing import Any

import msgspec

from kroma.domain.errors import NotFound, ValidationError, required
from kroma.events.envelope import Event, ExpectedVersion, Metadata, NewEvent

SESSION_CREATED = "chat_session.created"
MESSAGE_POSTED = "chat_message.posted"
DEFAULT_TITLE = "New Session"
ROLES = ("user", "assistant", "system", "tool")
SESSION_NOT_FOUND = "Chat session not found"


def chat_stream(session_id: str) -> str:
    return f"chat:{session_id}"


# -- commands ------------------------------------------------------------------------------------


class CreateSession(msgspec.Struct, omit_defaults=True):
    """`username`, `context_json` and `user_id` (OpenAPI/TECH_SPEC) are ignored, as the reference does."""

    title: str | None = None


class PostMessage(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    content_text: str | None = None  # OpenAPI-draft alias of `content` (§9)


class ValidMessage(msgspec.Struct, frozen=True):
    role: str
    content: str


# -- decisions -----------------------------------------------------------------------------------


def session_title(cmd: CreateSession) -> str:
    return (cmd.title or "").strip() or DEFAULT_TITLE


def validate_message(cmd: PostMessage) -> ValidMessage:
    """Role first, then content; both before any lookup (contract §3.16, §8.3)."""
    role = (cmd.role or "").strip().lower()
    if not role:
        raise required("role")
    if role not in ROLES:
        raise ValidationError(f"Field 'role' must be one of: {', '.join(ROLES)}")
    raw = cmd.content if cmd.content is not None else cmd.content_text
    content = (raw or "").strip()
    if not content:
        raise required("content")
    return ValidMessage(role, content)


def decide_create_session(
    project_id: str, session_id: str, title: str, meta: Metadata
) -> tuple[list[NewEvent], dict[str, int]]:
    data = {"project_id": project_id, "session_id": session_id, "title": title, "status": "active"}
    stream = chat_stream(session_id)
    return [NewEvent(stream, SESSION_CREATED, data, meta)], {stream: ExpectedVersion.NO_STREAM}


def session_project(events: list[Event]) -> str | None:
    """The project a session belongs to, from its stream (None when the session does not exist)."""
    for event in events:
        if event.type == SESSION_CREATED:
            return event.data["project_id"]
    return None


def decide_post_message(
    owner_project_id: str | None,
    project_id: str,
    session_id: str,
    message_id: str,
    message: ValidMessage,
    meta: Metadata,
) -> tuple[list[NewEvent], dict[str, int]]:
    if owner_project_id != project_id:
        raise NotFound(SESSION_NOT_FOUND)
    data: dict[str, Any] = {
        "project_id": project_id,
        "session_id": session_id,
        "message_id": message_id,
        "role": message.role,
        "content": message.content,
    }
    return [NewEvent(chat_stream(session_id), MESSAGE_POSTED, data, meta)], {
        chat_stream(session_id): ExpectedVersion.ANY
    }
