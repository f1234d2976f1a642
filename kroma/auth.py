"""API tokens as an application service: create, list, revoke, authenticate (HTTP and CLI share it).

Decisions are in `kroma.domain.tokens`; the read model in `kroma.projections.tokens`. Reads that
gate access (does an active token exist, is this bearer valid) go through the read model; the
first-token bootstrap first waits until the read model has caught up with the log head, and the
final word on a bootstrap race is the store's (see `kroma.domain.tokens`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import aiosqlite

from kroma import dbthread
from kroma.domain import tokens as domain
from kroma.domain.errors import Forbidden, NotFound, ValidationError
from kroma.domain.handling import Actor, Decision, current_request
from kroma.domain.slugs import normalize_slug
from kroma.domain.users import LOCAL_USER_ID, LOCAL_USERNAME
from kroma.events.envelope import ExpectedVersion, Metadata
from kroma.projections import tokens as read

if TYPE_CHECKING:
    from kroma.services import Services

log = logging.getLogger(__name__)

# A project-scoped token is a boundary (not the reference's behaviour, where it could mint an
# unscoped token): it creates, lists and revokes only tokens of its own project.
SCOPE_FORBIDDEN = "A project-scoped token can only manage tokens of its own project"


def _actor_scope() -> str | None:
    """The project the acting token is scoped to (None: unscoped, dev bypass, bootstrap, CLI)."""
    return current_request.get().actor.project_id


class TokenUsage:
    """Best-effort `last_used_at`: kept in memory, written through to `token_usage` (a table in
    readmodels.db that no projection owns) at most once per second per token, off the request
    path. Never an event: the log records what changed, not every read."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: aiosqlite.Connection | None = None
        self._seen: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self._conn = await dbthread.connect(self.path)
        await self._conn.execute(read.USAGE_TABLE)

    async def close(self) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    def last_used(self, token_id: str, stored: str | None) -> str | None:
        seen = self._seen.get(token_id)
        return max(seen, stored) if seen and stored else seen or stored

    def touch(self, token_id: str, now: str) -> None:
        if self._seen.get(token_id) == now:
            return
        self._seen[token_id] = now
        if self._conn is None:
            return
        task = asyncio.create_task(self._write(token_id, now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, token_id: str, now: str) -> None:
        assert self._conn is not None
        try:
            await self._conn.execute(
                "INSERT INTO token_usage VALUES (?, ?) ON CONFLICT(token_id) DO UPDATE SET"
                " last_used_at = excluded.last_used_at WHERE excluded.last_used_at > last_used_at",
                (token_id, now),
            )
        except Exception:  # best effort: the in-memory value still answers this process
            log.debug("could not record last_used_at", exc_info=True)


async def has_active_tokens(services: Services, settle: bool = True) -> bool:
    """Whether any token is active; with `settle`, as of everything committed so far."""
    if settle:
        await services.settle(await services.store.head())
    return await read.has_active(services.reader, services.clock.now_seconds())


async def authenticate(services: Services, bearer: str) -> Actor | None:
    """The actor behind a bearer token, or None when it is unknown, revoked or expired.

    The token's row is remembered (by hash, never the plaintext) until the read models change,
    as a route's answer is: a revocation reaches the file as a commit and empties the cache. The
    expiry is checked against the clock on every request."""
    now = services.clock.now_seconds()
    token_hash = domain.hash_token(bearer.strip())

    async def build() -> tuple[Actor, str | None, str | None] | None:
        row = await services.reader.one("SELECT * FROM api_tokens WHERE token_hash = ?", (token_hash,))
        if row is None:
            return None
        actor = Actor(
            user_id=row["user_id"], token_id=row["id"], project_id=row["project_id"], principal="token"
        )
        return actor, row["expires_at"], row["revoked_at"]

    found = await services.reader.derived(("api_token", token_hash), build)
    if found is None or not domain.is_active(found[1], found[2], now):
        return None
    actor = found[0]
    assert actor.token_id is not None
    services.token_usage.touch(actor.token_id, now)
    return actor


async def still_active(services: Services, token_id: str) -> bool:
    """Whether the token is still active now (not revoked, not expired): long-lived requests (the
    SSE stream) re-check the token they were authenticated with."""
    row = await read.find_token(services.reader, token_id)
    return row is not None and domain.is_active(
        row["expires_at"], row["revoked_at"], services.clock.now_seconds()
    )


async def _project_for_token(services: Services, project_slug: str | None) -> str | None:
    """The project a token is scoped to: None when `project_slug` is absent (or null). Any given
    value, blank included, must name a project of `local` (else 404), as the reference does: a
    caller that meant to scope a token never silently gets an unscoped one."""
    if project_slug is None:
        return None
    normal = normalize_slug(project_slug)
    row = None
    if normal is not None:
        row = await services.reader.one("SELECT id, owner_username FROM projects WHERE slug = ?", (normal,))
    if row is None or row["owner_username"] != LOCAL_USERNAME:
        raise NotFound("Project not found")
    return str(row["id"])


async def _check_scope(services: Services, project_slug: str | None, scope: str) -> None:
    """403 unless `project_slug` names the caller's own project: an absent one would mint an
    unscoped token, and an unknown one is a 403 too (as on slug paths, the answer to a scoped
    caller never says what exists outside its scope)."""
    try:
        project_id = await _project_for_token(services, project_slug)
    except NotFound:
        project_id = None
    if project_id != scope:
        raise Forbidden(SCOPE_FORBIDDEN)


async def _next_bootstrap_generation(services: Services) -> int:
    generation = 0
    while await services.store.stream_version(domain.bootstrap_stream(generation)) > 0:
        generation += 1
    return generation


async def create_token(services: Services, cmd: domain.CreateToken) -> dict[str, Any]:
    """Create a token for the `local` user; returns the API's `auth_token` (with the plaintext
    token, shown this once). A project-scoped caller gets 403 (before any validation) unless
    `project_slug` names its own project."""
    scope = _actor_scope()
    if scope is not None:
        await _check_scope(services, cmd.project_slug, scope)
    expires_at = domain.parse_expires_at(cmd.expires_at)
    label = domain.clean_label(cmd.label)
    project_id = await _project_for_token(services, cmd.project_slug)
    bootstrap = current_request.get().actor.principal == domain.BOOTSTRAP_PRINCIPAL
    generation = -1
    if bootstrap:
        # Generation first, then the active check: a racer committing in between either holds
        # this generation (our append conflicts) or is visible to the check.
        generation = await _next_bootstrap_generation(services)
        if await has_active_tokens(services):
            raise ValidationError(domain.BOOTSTRAP_TAKEN)
    token = domain.generate_token()
    token_id = services.clock.new_id()
    store = services.store

    async def decide(meta: Metadata) -> Decision:
        events = [
            domain.decide_create(
                token_id=token_id,
                user_id=LOCAL_USER_ID,
                project_id=project_id,
                token=token,
                label=label,
                expires_at=expires_at,
                meta=meta,
            )
        ]
        expected = {domain.token_stream(token_id): ExpectedVersion.NO_STREAM}
        if bootstrap:
            stream = domain.bootstrap_stream(generation)
            if await store.stream_version(stream) > 0:
                raise ValidationError(domain.BOOTSTRAP_TAKEN)
            events.append(domain.decide_bootstrap_reservation(generation, token_id, meta))
            expected[stream] = ExpectedVersion.NO_STREAM
        return Decision(events, expected, token_id)

    outcome = await services.commands.execute(decide)
    await services.settle(outcome.append.last_position)
    row = await read.find_token(services.reader, token_id)
    assert row is not None
    return {
        "id": token_id,
        "token": token,
        "token_prefix": row["token_prefix"],
        "label": row["label"],
        "project_id": row["project_id"],
        "created_at": row["created_at"],
        "expires_at": row["expires_at"],
    }


async def list_tokens(services: Services) -> list[dict[str, Any]]:
    """Every token; for a project-scoped caller, only the tokens of its own project."""
    now = services.clock.now_seconds()
    usage = services.token_usage
    scope = _actor_scope()
    return [
        read.token_view(
            row,
            domain.is_active(row["expires_at"], row["revoked_at"], now),
            usage.last_used(row["id"], row["last_used_at"]),
        )
        for row in await read.list_tokens(services.reader)
        if scope is None or row["project_id"] == scope
    ]


class _AlreadyRevoked(Exception):
    pass


async def revoke_token(services: Services, token_id: str) -> None:
    """Revoke (idempotent: a revoked token stays revoked with its first timestamp, and a repeat
    appends nothing). A project-scoped caller may revoke only tokens of its own project (403)."""
    store = services.store
    stream = domain.token_stream(token_id)
    scope = _actor_scope()

    async def decide(meta: Metadata) -> Decision:
        history = await store.read_stream(stream)
        if scope is not None and history and history[0].data.get("project_id") != scope:
            raise Forbidden(SCOPE_FORBIDDEN)
        event = domain.decide_revoke(history, meta)
        if event is None:
            raise _AlreadyRevoked
        return Decision([event], {stream: len(history)})

    try:
        outcome = await services.commands.execute(decide)
    except _AlreadyRevoked:
        return
    await services.settle(outcome.append.last_position)
