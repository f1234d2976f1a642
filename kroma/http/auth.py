"""Bearer-token authentication (contract §5): the first step of `kroma.http.middleware`'s one
ASGI layer.

It runs after routing (an unknown path is still a 404, a wrong method a 405) and before the
request context / idempotency, body parsing and every handler check, so 401 and 403 take
precedence over 400/404/415/422. On success the middleware puts the `Actor` into
`current_request`.

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

import ipaddress
import logging
from typing import TYPE_CHECKING

from litestar.types import Scope

from kroma import auth
from kroma.domain.errors import Forbidden, Unauthorized
from kroma.domain.handling import Actor
from kroma.domain.slugs import normalize_slug
from kroma.domain.tokens import BOOTSTRAP_PRINCIPAL
from kroma.domain.users import user_id_for

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
            return parse_bearer(value)
    return None


def parse_bearer(value: bytes) -> str | None:
    """The bearer value of an `Authorization` header's value (see `bearer_token`)."""
    scheme, _, rest = value.decode("latin-1").strip().partition(" ")
    token = rest.strip()
    return token if scheme.lower() == "bearer" and token else None


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


async def _owner(services: Services, slug: str) -> tuple[str, str] | None:
    """(project id, owner's user id) of the project at `slug`, or None. Every request on a
    project path asks, so a found one is remembered for good: a slug never moves to another
    project, a project never changes owner (an upsert by another user is refused) and is never
    deleted."""

    async def build() -> tuple[str, str] | None:
        row = await services.reader.one("SELECT id, owner_username FROM projects WHERE slug = ?", (slug,))
        return None if row is None else (row["id"], user_id_for(row["owner_username"]))

    return await services.reader.lasting(("project_owner", slug), build)


# (routed path, raw path) -> the normalised slugs of `project_segments`: a pure function of the
# two, asked on every request to a project path. Bounded: past it, paths are worked out each time.
_SLUGS_MAX = 4096
_slugs: dict[tuple[str, object], list[str | None]] = {}


def _project_slugs(scope: Scope) -> list[str | None]:
    raw = scope.get("raw_path")
    key = (scope["path"], bytes(raw) if isinstance(raw, bytearray) else raw)
    found = _slugs.get(key)
    if found is None:
        found = [normalize_slug(segment) for segment in project_segments(scope)]
        if len(_slugs) < _SLUGS_MAX:
            _slugs[key] = found
    return found


async def _check_project(services: Services, actor: Actor, slug: str | None) -> None:
    if slug is None:
        raise Forbidden(ACCESS_FAILED)
    try:
        owner = await _owner(services, slug)
    except Exception:
        log.exception("project access check failed")
        raise Forbidden(ACCESS_FAILED) from None
    if (
        owner is None
        or owner[1] != actor.user_id
        or (actor.project_id is not None and actor.project_id != owner[0])
    ):
        raise Forbidden(NOT_AUTHORIZED)


async def actor_for(scope: Scope, services: Services, authorization: bytes | None) -> Actor:
    """The actor of a request to a path that needs one (`is_open` is false), given the value of
    its `Authorization` header; raises the contract's 401 / 403."""
    settings = services.settings
    if settings.auth_dev_bypass:
        return DEV_BYPASS
    bearer = None if authorization is None else parse_bearer(authorization)
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
    for slug in _project_slugs(scope):
        await _check_project(services, actor, slug)
    if actor.project_id is not None and is_global_log(scope["path"]):
        raise Forbidden(NOT_AUTHORIZED)
    return actor
