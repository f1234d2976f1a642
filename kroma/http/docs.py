"""The API docs: an OpenAPI document that says what the server really answers, and a docs page
that works offline.

- **Statuses.** Litestar documents what a handler declares (a POST as 201, a 400 with its own
  `detail` shape); Kroma's handlers answer the contract's flat envelopes instead. `complete`
  rewrites every operation's responses: the real success status (200; 202 for an async trigger;
  304 for content with an ETag), its media type (JSON, `text/event-stream`, `image/png`, any file),
  and every error status the route can answer, each in the contract's error shape: 400, 404 and
  500 everywhere but `/health`; 401 (and 403 where a token's scope applies) wherever a token is
  needed; 409, 413, 415 and 422 (a reused Idempotency-Key) on mutating routes; 429 on live
  streams; 503 (storage unavailable) on every route that touches the store. The bearer scheme is
  declared, with `/health` open.
- **Offline page.** `/docs` renders Swagger UI from files vendored in this package
  (`kroma/http/static/swagger-ui`, swagger-ui-dist 5.35.0, Apache-2.0), served under
  `/docs/assets/`; the page references no other host.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from litestar import Litestar, Router
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

ASSETS_DIR = Path(__file__).parent / "static" / "swagger-ui"
ASSETS_PATH = "/docs/assets"
DOCS_PATH = "/docs"

ERROR_KINDS = ["validation", "provider", "infra", "policy", "unknown"]
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["ok", "error", "error_kind", "error_code"],
    "properties": {
        "ok": {"const": False},
        "error": {"type": "string"},
        "error_kind": {"enum": ERROR_KINDS},
        "error_code": {"type": "string"},
    },
}
OK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["ok"],
    "properties": {"ok": {"const": True}},
}
SSE_EVENT: dict[str, Any] = {  # one event: `id` is the log position, `event` the type, `data` its JSON
    "type": "object",
    "properties": {"id": {"type": "string"}, "event": {"type": "string"}, "data": {"type": "string"}},
}
ERROR_TEXT = {
    400: "Validation error",
    401: "Missing, invalid or expired token",
    403: "The token may not reach this project or view",
    404: "Not found (the message is fixed per handler)",
    409: "A conflicting concurrent change",
    413: "Request body over its size limit",
    415: "Unsupported media type",
    422: "Idempotency-Key already used with another request",
    429: "Too many live streams for this token",
    500: "Internal server error (sanitised)",
    503: "Storage unavailable (disk full or data folder not writable); retry later",
}
MUTATING = {"post", "put", "patch", "delete"}
BODY = {"post", "put", "patch"}
GLOBAL_LOG = ("/api/events", "/api/audit")


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _success(method: str, path: str) -> dict[str, Any]:
    """The success responses of one operation: what the handler sends when nothing fails."""
    if path.endswith("/events/stream") or (path.endswith("/events") and "/runs/" in path):
        return {
            "200": {
                "description": "Server-Sent Events",
                "content": {"text/event-stream": {"schema": SSE_EVENT}},
            }
        }
    if path.endswith("/contact-sheet.png"):
        return {
            "200": {
                "description": "PNG",
                "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            }
        }
    if path.endswith("/content"):
        return {
            "200": {
                "description": "The file",
                "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
            },
            "304": {"description": "Not modified (If-None-Match matched the ETag)"},
        }
    found = {"200": _json(OK_SCHEMA, "Success: the flat {ok: true, ...} envelope")}
    if method == "post" and path.endswith("/runs/trigger"):
        found["202"] = _json(OK_SCHEMA, "Accepted (Prefer: respond-async): the run's id")
    return found


def _errors(method: str, path: str) -> list[int]:
    if path == "/health":
        return [500]
    statuses = [400, 401, 404, 500, 503]
    if path.startswith(("/api/projects/{", "/auth/")) or path.startswith(GLOBAL_LOG):
        statuses.append(403)
    if method in MUTATING:
        statuses += [409, 422]
    if method in BODY:
        statuses += [413, 415]
    if path.endswith("/events/stream") or (path.endswith("/events") and "/runs/" in path):
        statuses.append(429)
    return sorted(statuses)


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """The document with every operation's real responses and the bearer scheme (a copy)."""
    document = copy.deepcopy(document)
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = _success(method, path)
            for status in _errors(method, path):
                responses[str(status)] = _json(ERROR_SCHEMA, ERROR_TEXT[status])
            operation["responses"] = responses
            if path == "/health":
                operation["security"] = []
    components = document.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (`kroma_...`): POST /auth/token",
    }
    document["security"] = [{"bearer": []}]
    return document


def openapi_config(title: str, version: str) -> OpenAPIConfig:
    assets = ASSETS_PATH
    return OpenAPIConfig(
        title=title,
        version=version,
        path=DOCS_PATH,
        render_plugins=[
            SwaggerRenderPlugin(
                path="/",
                js_url=f"{assets}/swagger-ui-bundle.js",
                css_url=f"{assets}/swagger-ui.css",
                standalone_preset_js_url=f"{assets}/swagger-ui-standalone-preset.js",
                favicon=f"<link rel='icon' type='image/png' href='{assets}/favicon-32x32.png'>",
            )
        ],
    )


def assets_router() -> Router:
    return create_static_files_router(
        path=ASSETS_PATH, directories=[ASSETS_DIR], include_in_schema=False, name="docs-assets"
    )


def install(app: Litestar) -> None:
    """Serve `complete(...)` of the generated document wherever Litestar serves its document."""
    plugin = app.plugins.get(OpenAPIPlugin)
    # The plugin caches the document it serves (the JSON and every render plugin read that cache);
    # filling it here, once every route is registered, makes the completed one the only one.
    plugin._openapi_schema = complete(plugin.provide_openapi().to_schema())
