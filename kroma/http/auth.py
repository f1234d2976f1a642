"""Bearer-token authentication (contract §5), as ASGI middleware in front of everything else.

It runs after routing (an unknown path is still a 404, a wrong method a 405) and before the
request context / idempotency middleware, body parsing and every handler check, so 401 and 403
take precedence over 400/404/415/422. On success it puts the `Actor` into `current_request`.

Order of checks:
1. Open: `/health` and the API docs (`/docs`, `/docs/openapi.json`, ...). Everything else,
   `/api/events` and its SSE stream included, needs a token.
2. Dev bypass (`KROMA_API_AUTH_DEV_BYPASS`): every request passes as principal "dev_bypass"
   with no user.
3. No usable bearer (`Authorization: Bearer <token>`, scheme case-insensitive): the first-token
   bootstrap (exactly `POST /auth/token`, flag on, a loopback IP bind, no active token) passes as
   principal "bootstrap_first_token"; anything else is 401 "Missing Authorization: Bearer token".
4. Unknown, revoked or expired token: 401 "Invalid or expired token".
5. `/api/projects/<segment>[/...]`: the RAW (not percent-decoded) segment, normalised, must name
   a project owned by the token's user (and be the token's project, for a project-scoped
   token); else 403 "Token is not authorized for this project" (a nonexistent project too).
   An un-normalisable segment is 403 "Project access check failed". Whether a path is
   slug-scoped is read from the ROUTED path (the router has collapsed `//` and decoded `%xx`),
   so no spelling of the path skips the check; and when the decoded segment (the one the
   handler serves) names another project than the raw one, both must pass.
6. The global log views (`/api/events...`, `/api/audit`) show every project's events: a
   project-scoped token gets 403 "Token is not authorized for this project" there (its own
   project's views are `/api/projects/<slug>/events` and `/audit`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from typing import TYPE_CHECKING

from litestar.types import ASGIApp, Receive, Scope, Send

from kroma import auth
from kroma.domain.errors import Forbidden, KromaError, Unauthorized
from kroma.domain.handling import Actor, current_request
from kroma.domain.slugs import normalize_slug
from kroma.domain.tokens import BOOTSTRAP_PRINCIPAL
from kroma.domain.users import user_id_for
from kroma.http import responses

if TYPE_CHECKING:
    from kroma.services import Services

log = logging.getLogger(__name__)

MISSING = "Missing Authorization: Bearer token"
INVALID = "Invalid or expired token"
VALIDATION_FAILED = "Token validation failed"
BOOTSTRAP_FAILED = "Token bootstrap check failed"
NOT_AUTHORIZED = "Token is not authorized for this project"
ACCESS_FAILED = "Project access check failed"

OPEN_PATHS = frozenset({"/health"})
DOCS_PREFIX = "/docs"
DEV_BYPASS = Actor(principal="dev_bypass")
BOOTSTRAP = Actor(principal=BOOTSTRAP_PRINCIPAL)


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path == DOCS_PREFIX or path.startswith(DOCS_PREFIX + "/")


def bearer_token(scope: Scope) -> str | None:
    """The bearer value, or None: the header trimmed and split at its first space; the scheme
    must be "Bearer" (any case) and the rest, trimmed, non-empty."""
    for key, value in scope.get("headers", ()):
        if key.lower() == b"authorization":
            scheme, _, rest = value.decode("latin-1").strip().partition(" ")
            token = rest.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


def is_loopback_bind(bind: str) -> bool:
    """Whether `bind` is a socket address (IP:port, `[v6]:port`) on a loopback IP."""
    host, sep, port = bind.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


GLOBAL_LOG_PREFIXES = ("/api/events", "/api/audit")


def project_segments(scope: Scope) -> list[str]:
    """The `<slug>` segments to check for `/api/projects/<slug>[/...]` ([] for other paths): the
    RAW segment (the contract's), then the decoded one the handler serves when it differs.

    `scope["path"]` is the routed path (Litestar has decoded it, collapsed `//` and dropped a
    trailing `/`), so it decides whether the route is slug-scoped; the raw segment is the one at
    the same place in `raw_path` once empty segments are dropped. A raw path whose segments do
    not line up (an encoded `/`) can only add a segment that fails, never skip the check."""
    parts = scope["path"].split("/")
    if not (len(parts) > 3 and parts[1] == "api" and parts[2] == "projects" and parts[3].strip()):
        return []
    found = []
    raw = scope.get("raw_path")
    if isinstance(raw, bytes | bytearray):
        raw_parts = [p for p in raw.decode("latin-1").split("?", 1)[0].split("/") if p]
        if len(raw_parts) > 2:
            found.append(raw_parts[2])
    if not found or normalize_slug(found[0]) != normalize_slug(parts[3]):
        found.append(parts[3])
    return found


def is_global_log(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in GLOBAL_LOG_PREFIXES)


async def _check_project(services: Services, actor: Actor, segment: str) -> None:
    slug = normalize_slug(segment)
    if slug is None:
        raise Forbidden(ACCESS_FAILED)
    try:
        row = await services.reader.one("SELECT id, owner_username FROM projects WHERE slug = ?", (slug,))
    except Exception:
        log.exception("project access check failed")
        raise Forbidden(ACCESS_FAILED) from None
    if (
        row is None
        or user_id_for(row["owner_username"]) != actor.user_id
        or (actor.project_id is not None and actor.project_id != row["id"])
    ):
        raise Forbidden(NOT_AUTHORIZED)


async def _actor(scope: Scope) -> Actor:
    services = scope["app"].state.services
    settings = services.settings
    if settings.auth_dev_bypass:
        return DEV_BYPASS
    bearer = bearer_token(scope)
    if bearer is None:
        if (
            scope.get("method", "") == "POST"
            and scope["path"] == "/auth/token"
            and settings.auth_bootstrap_first_token
            and is_loopback_bind(settings.bind)
        ):
            try:
                active = await auth.has_active_tokens(services)
            except Exception:
                log.exception("token bootstrap check failed")
                raise Unauthorized(BOOTSTRAP_FAILED) from None
            if not active:
                return BOOTSTRAP
        raise Unauthorized(MISSING)
    try:
        actor = await auth.authenticate(services, bearer)
    except Exception:
        log.exception("token validation failed")
        raise Unauthorized(VALIDATION_FAILED) from None
    if actor is None:
        raise Unauthorized(INVALID)
    for segment in project_segments(scope):
        await _check_project(services, actor, segment)
    if actor.project_id is not None and is_global_log(scope["path"]):
        raise Forbidden(NOT_AUTHORIZED)
    return actor


class AuthMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        try:
            actor = await _actor(scope)
        except KromaError as exc:
            body = responses.encode(responses.error_body(exc.message, exc.kind, exc.code))
            await responses.send_json(send, exc.status, body)
            return
        token = current_request.set(dataclasses.replace(current_request.get(), actor=actor))
        try:
            await self.app(scope, receive, send)
        finally:
            current_request.reset(token)
