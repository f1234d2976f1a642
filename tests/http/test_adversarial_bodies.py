"""Adversarial bodies on every mutating route of the project configuration surface (contract §2 rows
20-69): wrong JSON types, arrays, numbers beyond 64 bits, unicode, long strings, NUL, `{}`/`null` in
JSON fields, nesting as deep as the reference's decoder refuses, bodies that are not JSON objects.
None may be a 500, every refusal is the flat error envelope, and afterwards the read models still
follow the log (a poisoned event would stop them for good)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from litestar.testing import TestClient

from kroma.domain.assets import AssetRecord, asset_recorded
from tests.http.log_seed import append
from tests.http.records_support import ok

P = "/api/projects/demo"


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


VALUES: list[Any] = [
    None,
    -1,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    10**30,
    1.5,
    True,
    [],
    [1],
    {},
    {"a": None},
    "",
    " ",
    "ü名 \u00a0",
    "x" * 5000,
    "\u0000",
    nested(126),
    nested(127),
    nested(500),
]
RAW_BODIES = [
    b"",
    b"null",
    b"[]",
    b"1",
    b'"s"',
    b"{",
    b"{} {}",
    b'{"a":1e999}',
    b"\xff\xfe",
    b'{"x":"\\ud800"}',
]

# (method, path template, a valid body whose fields are probed one by one)
ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/style-guides", {"name": "n{n}", "instructions": "i", "notes": "z"}),
    ("PUT", "/style-guides/{sg}", {"name": "n{n}", "instructions": "i", "notes": "z"}),
    ("POST", "/characters", {"name": "n{n}", "description": "d", "prompt_text": "p"}),
    ("PUT", "/characters/{ch}", {"name": "n{n}", "description": "d", "prompt_text": "p"}),
    ("POST", "/prompt-templates", {"name": "n{n}", "template_text": "t"}),
    ("PUT", "/prompt-templates/{pt}", {"name": "n{n}", "template_text": "t"}),
    ("POST", "/reference-sets", {"name": "n{n}", "description": "d"}),
    ("PUT", "/reference-sets/{rs}", {"name": "n{n}", "description": "d"}),
    (
        "POST",
        "/reference-sets/{rs}/items",
        {"label": "l", "content_uri": "u", "content_text": "c", "sort_order": 1, "metadata_json": {}},
    ),
    (
        "PUT",
        "/reference-sets/{rs}/items/{it}",
        {"label": "l", "content_uri": "u", "content_text": "c", "sort_order": 1, "metadata_json": {}},
    ),
    (
        "POST",
        "/provider-accounts",
        {
            "provider_code": "p{n}",
            "display_name": "d",
            "account_ref": "a",
            "base_url": "b",
            "enabled": True,
            "config_json": {},
        },
    ),
    (
        "PUT",
        "/provider-accounts/openai",
        {"display_name": "d", "account_ref": "a", "base_url": "b", "enabled": True, "config_json": {}},
    ),
    ("POST", "/chat/sessions", {"title": "t", "username": "u", "context_json": {}}),
    ("POST", "/chat/sessions/{cs}/messages", {"role": "user", "content": "c", "content_text": "c"}),
    ("POST", "/agent/instructions", {"instruction_text": "x", "payload_json": {"instruction_text": "y"}}),
    ("POST", "/agent/instructions/{ins}/confirm", {"message": "m"}),
    ("POST", "/agent/instructions/{ins}/cancel", {"message": "m"}),
    ("POST", "/asset-links", {"parent_asset_id": "a{n}", "child_asset_id": "b", "link_type": "mask_for"}),
    ("PUT", "/asset-links/{al}", {"parent_asset_id": "a1", "child_asset_id": "b", "link_type": "variant_of"}),
]
LISTS = [
    "/style-guides",
    "/characters",
    "/prompt-templates",
    "/reference-sets",
    "/reference-sets/{rs}/items",
    "/provider-accounts",
    "/chat/sessions",
    "/chat/sessions/{cs}/messages",
    "/agent/instructions",
    "/agent/instructions/{ins}/events",
    "/asset-links",
    "/runs",
    "/assets",
    "/quality-reports",
    "/cost-events",
    "/exports",
]


@pytest.fixture
def ids(client: TestClient, project: dict) -> dict[str, str]:
    append(
        client,
        *(asset_recorded(AssetRecord(id=a, project_id=project["id"])) for a in ("a0", "a1", "b")),
    )
    ref_set = ok(client.post(f"{P}/reference-sets", json={"name": "set"}))["reference_set"]["id"]
    item = ok(client.post(f"{P}/reference-sets/{ref_set}/items", json={"label": "l", "content_text": "c"}))
    ok(client.post(f"{P}/provider-accounts", json={"provider_code": "openai"}))
    return {
        "sg": ok(client.post(f"{P}/style-guides", json={"name": "g", "instructions": "i"}))["style_guide"][
            "id"
        ],
        "ch": ok(client.post(f"{P}/characters", json={"name": "c"}))["character"]["id"],
        "pt": ok(client.post(f"{P}/prompt-templates", json={"name": "t", "template_text": "t"}))[
            "prompt_template"
        ]["id"],
        "rs": ref_set,
        "it": item["item"]["id"],
        "cs": ok(client.post(f"{P}/chat/sessions", json={}))["session"]["id"],
        "ins": ok(client.post(f"{P}/agent/instructions", json={"instruction_text": "x"}))["instruction"][
            "id"
        ],
        "al": ok(client.post(f"{P}/asset-links", json={"parent_asset_id": "a0", "child_asset_id": "b"}))[
            "asset_link"
        ]["id"],
    }


def assert_answered(response: Any, what: str) -> None:
    assert response.status_code in (200, 400, 404), (what, response.status_code, response.text)
    body = response.json()
    if response.status_code != 200:
        assert set(body) == {"ok", "error", "error_kind", "error_code"}, (what, body)
        assert body["ok"] is False and body["error_kind"] == "validation", (what, body)


@pytest.mark.parametrize(("method", "template", "valid"), ROUTES, ids=[f"{m} {t}" for m, t, _ in ROUTES])
def test_no_adversarial_body_is_a_500_or_stops_the_read_models(
    client: TestClient, ids: dict[str, str], method: str, template: str, valid: dict[str, Any]
) -> None:
    url = P + template.format(n="{n}", **ids)
    headers = {"content-type": "application/json"}
    for raw in RAW_BODIES:
        assert_answered(client.request(method, url, content=raw, headers=headers), repr(raw))
    for n, (field, value) in enumerate((f, v) for f in valid for v in VALUES):
        body = {k: v.format(n=n) if isinstance(v, str) else v for k, v in valid.items()}
        body[field] = value
        assert_answered(
            client.request(method, url, content=json.dumps(body), headers=headers), f"{field}={value!r:.40}"
        )
    for path in LISTS:
        ok(client.get(P + path.format(**ids)))
