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
   An un-normalisable segment is 403 "Project access check failed".
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging

from litestar.types import ASGIApp, Receive, Scope, Send

from kroma import auth
from kroma.domain.errors import Forbidden, KromaError, Unauthorized
from kroma.domain.handling import Actor, current_request
from kroma.domain.slugs import normalize_slug
from kroma.domain.tokens import BOOTSTRAP_PRINCIPAL
from kroma.domain.users import user_id_for
from kroma.http import responses

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


def project_segment(scope: Scope) -> str | None:
    """The raw `<slug>` of `/api/projects/<slug>[/...]`, or None for other paths."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes | bytearray) else scope["path"]
    parts = path.split("/")
    if len(parts) > 3 and parts[1] == "api" and parts[2] == "projects" and parts[3].strip():
        return parts[3]
    return None


async def _actor(scope: Scope) -> Actor:
    services = scope["app"].state.services
    settings = services.settings
    if settings.auth_dev_bypass:
        return DEV_BYPASS
    bearer = bearer_token(scope)
    if bearer is None:
        if (
            scope["method"] == "POST"
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
    segment = project_segment(scope)
    if segment is not None:
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
            await send(
                {
                    "type": "http.response.start",
                    "status": exc.status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        token = current_request.set(dataclasses.replace(current_request.get(), actor=actor))
        try:
            await self.app(scope, receive, send)
        finally:
            current_request.reset(token)
