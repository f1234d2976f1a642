"""The mount test (contract §2 end, §7 http_contract_surface): every one of the 74 catalog routes is
mounted and, called in dev-bypass mode on an empty data folder with every path parameter set to `x`
and `{}` as the body of POST/PUT, answers the contract's status. Non-200 answers must have the flat
error shape; where the contract fixes the message (§8.2 not-found messages, the first failing
validation rule for `{}`) it is checked too.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from litestar.testing import TestClient

P = "/api/projects/{slug}"


def at_least(*fields: str) -> str:
    return f"Provide at least one of: {', '.join(fields)}"


# (method, path template, expected status, expected error message or None, pending reason or None)
CATALOG: list[tuple[str, str, int, str | None, str | None]] = [
    ("GET", "/health", 200, None, None),
    ("POST", "/auth/token", 200, None, None),
    ("GET", "/auth/tokens", 200, None, None),
    ("DELETE", "/auth/tokens/{tokenId}", 404, "Auth token not found", None),
    ("GET", "/api/projects", 200, None, None),
    ("POST", "/api/projects", 400, "Field 'name' is required", None),
    ("GET", P, 404, "Project not found", None),
    ("GET", f"{P}/bootstrap-prompt", 404, "Project not found", None),
    ("POST", f"{P}/bootstrap-import", 400, "Provide either 'settings' or 'ai_response_text'", None),
    ("GET", f"{P}/storage", 404, "Project not found", None),
    ("PUT", f"{P}/storage/local", 400, at_least("base_dir", "project_root"), None),
    ("PUT", f"{P}/storage/s3", 404, "Project not found", None),
    ("GET", f"{P}/runs", 404, "Project not found", None),
    ("POST", f"{P}/runs/trigger", 400, "Provide one of: input, scene_refs", None),
    ("POST", f"{P}/runs/validate-config", 404, "Project not found", None),
    ("GET", f"{P}/runs/{{runId}}", 404, "Run not found", None),
    ("GET", f"{P}/runs/{{runId}}/jobs", 404, "Run not found", None),
    ("GET", f"{P}/assets", 404, "Project not found", None),
    ("GET", f"{P}/assets/{{assetId}}", 404, "Asset not found", None),
    ("GET", f"{P}/asset-links", 404, "Project not found", None),
    ("POST", f"{P}/asset-links", 400, "Field 'parent_asset_id' is required", None),
    ("GET", f"{P}/asset-links/{{linkId}}", 404, "Asset link not found", None),
    (
        "PUT",
        f"{P}/asset-links/{{linkId}}",
        400,
        at_least("parent_asset_id", "child_asset_id", "link_type"),
        None,
    ),
    ("DELETE", f"{P}/asset-links/{{linkId}}", 404, "Asset link not found", None),
    ("GET", f"{P}/quality-reports", 404, "Project not found", None),
    ("GET", f"{P}/cost-events", 404, "Project not found", None),
    ("GET", f"{P}/exports", 404, "Project not found", None),
    ("GET", f"{P}/exports/{{exportId}}", 404, "Project export not found", None),
    ("GET", f"{P}/prompt-templates", 404, "Project not found", None),
    ("POST", f"{P}/prompt-templates", 400, "Field 'name' is required", None),
    ("GET", f"{P}/prompt-templates/{{templateId}}", 404, "Prompt template not found", None),
    ("PUT", f"{P}/prompt-templates/{{templateId}}", 400, at_least("name", "template_text"), None),
    ("DELETE", f"{P}/prompt-templates/{{templateId}}", 404, "Prompt template not found", None),
    ("GET", f"{P}/provider-accounts", 404, "Project not found", None),
    ("POST", f"{P}/provider-accounts", 400, "Field 'provider_code' is required", None),
    ("GET", f"{P}/provider-accounts/{{providerCode}}", 404, "Provider account not found", None),
    (
        "PUT",
        f"{P}/provider-accounts/{{providerCode}}",
        400,
        at_least("display_name", "account_ref", "base_url", "enabled", "config_json"),
        None,
    ),
    ("DELETE", f"{P}/provider-accounts/{{providerCode}}", 404, "Provider account not found", None),
    ("GET", f"{P}/style-guides", 404, "Project not found", None),
    ("POST", f"{P}/style-guides", 400, "Field 'name' is required", None),
    ("GET", f"{P}/style-guides/{{styleGuideId}}", 404, "Style guide not found", None),
    ("PUT", f"{P}/style-guides/{{styleGuideId}}", 400, at_least("name", "instructions", "notes"), None),
    ("DELETE", f"{P}/style-guides/{{styleGuideId}}", 404, "Style guide not found", None),
    ("GET", f"{P}/characters", 404, "Project not found", None),
    ("POST", f"{P}/characters", 400, "Field 'name' is required", None),
    ("GET", f"{P}/characters/{{characterId}}", 404, "Character not found", None),
    ("PUT", f"{P}/characters/{{characterId}}", 400, at_least("name", "description", "prompt_text"), None),
    ("DELETE", f"{P}/characters/{{characterId}}", 404, "Character not found", None),
    ("GET", f"{P}/reference-sets", 404, "Project not found", None),
    ("POST", f"{P}/reference-sets", 400, "Field 'name' is required", None),
    ("GET", f"{P}/reference-sets/{{referenceSetId}}", 404, "Reference set not found", None),
    ("PUT", f"{P}/reference-sets/{{referenceSetId}}", 400, at_least("name", "description"), None),
    ("DELETE", f"{P}/reference-sets/{{referenceSetId}}", 404, "Reference set not found", None),
    ("GET", f"{P}/reference-sets/{{referenceSetId}}/items", 404, "Reference set not found", None),
    ("POST", f"{P}/reference-sets/{{referenceSetId}}/items", 400, "Field 'label' is required", None),
    (
        "GET",
        f"{P}/reference-sets/{{referenceSetId}}/items/{{itemId}}",
        404,
        "Reference set item not found",
        None,
    ),
    (
        "PUT",
        f"{P}/reference-sets/{{referenceSetId}}/items/{{itemId}}",
        400,
        at_least("label", "content_uri", "content_text", "sort_order", "metadata_json"),
        None,
    ),
    (
        "DELETE",
        f"{P}/reference-sets/{{referenceSetId}}/items/{{itemId}}",
        404,
        "Reference set item not found",
        None,
    ),
    ("GET", f"{P}/chat/sessions", 404, "Project not found", None),
    ("POST", f"{P}/chat/sessions", 404, "Project not found", None),
    ("GET", f"{P}/chat/sessions/{{sessionId}}", 404, "Chat session not found", None),
    ("GET", f"{P}/chat/sessions/{{sessionId}}/messages", 404, "Chat session not found", None),
    ("POST", f"{P}/chat/sessions/{{sessionId}}/messages", 400, "Field 'role' is required", None),
    ("GET", f"{P}/agent/instructions", 404, "Project not found", None),
    ("POST", f"{P}/agent/instructions", 400, "Field 'instruction_text' is required", None),
    ("GET", f"{P}/agent/instructions/{{instructionId}}", 404, "Agent instruction not found", None),
    ("GET", f"{P}/agent/instructions/{{instructionId}}/events", 404, "Agent instruction not found", None),
    ("POST", f"{P}/agent/instructions/{{instructionId}}/confirm", 404, "Agent instruction not found", None),
    ("POST", f"{P}/agent/instructions/{{instructionId}}/cancel", 404, "Agent instruction not found", None),
    ("GET", f"{P}/secrets", 404, "Project not found", None),
    ("GET", f"{P}/secrets/rotation-status", 404, "Project not found", None),
    ("POST", f"{P}/secrets", 400, "Field 'provider_code' is required", None),
    ("POST", f"{P}/secrets/rotate", 404, "Project not found", None),
    ("DELETE", f"{P}/secrets/{{providerCode}}/{{secretName}}", 404, "Secret not found", None),
]

# The trigger's parameter errors carry their own code (pipeline spec §2.3).
CODES = {("POST", f"{P}/runs/trigger"): "invalid_request"}

_PARAM = re.compile(r"\{[^}]*\}")


def _shape(path: str) -> str:
    """A path template with every parameter (`{slug}`, `{slug:str}`) reduced to `{}`."""
    return _PARAM.sub("{}", path)


def _params() -> list[Any]:
    params = []
    for method, path, status, message, pending in CATALOG:
        assert pending is None, "every catalog route is implemented"
        params.append(pytest.param(method, path, status, message, id=f"{method} {path}"))
    return params


def test_the_catalog_has_74_unique_routes(client: TestClient) -> None:
    keys = [(method, _shape(path)) for method, path, *_ in CATALOG]
    assert len(keys) == len(set(keys)) == 74
    assert client.get("/health").json()["route_count"] == len(CATALOG)


@pytest.mark.parametrize(("method", "path", "status", "message"), _params())
def test_route_is_mounted_and_answers_the_contract_status(
    client: TestClient, method: str, path: str, status: int, message: str | None
) -> None:
    mounted = {(m, _shape(route.path)) for route in client.app.routes for m in getattr(route, "methods", ())}
    assert (method, _shape(path)) in mounted, f"{method} {path} is not mounted"

    url = _PARAM.sub("x", path)
    body = {} if method in ("POST", "PUT") else None
    response = client.request(method, url, json=body)
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json()["ok"] is True
        return
    error = response.json()
    assert set(error) == {"ok", "error", "error_kind", "error_code"}, error
    assert error["ok"] is False and isinstance(error["error"], str) and error["error"]
    assert error["error_kind"] == "validation"
    expected_code = CODES.get((method, path)) or {400: "validation_error", 404: "not_found"}[status]
    assert error["error_code"] == expected_code
    if message is not None:
        assert error["error"] == message
