"""Provider accounts through the HTTP contract (§2 rows 34-38, §3.8, §6, §8)."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import TestClient

from tests.http.records_support import assert_error, ok, project_events, race

BASE = "/api/projects/demo/provider-accounts"
PUT_FIELDS = "Provide at least one of: display_name, account_ref, base_url, enabled, config_json"


def upsert(client: TestClient, **body: Any) -> dict[str, Any]:
    return ok(client.post(BASE, json=body))


def test_upsert_normalises_the_code_and_fills_defaults(client: TestClient, project: dict) -> None:
    body = upsert(client, provider_code=" OpenAI ")
    account = body["provider_account"]
    assert account == {
        "project_id": project["id"],
        "provider_code": "openai",
        "display_name": "openai",
        "account_ref": "",
        "base_url": "",
        "enabled": True,
        "config_json": {},
        "created_at": account["created_at"],
        "updated_at": account["updated_at"],
    }
    event = ok(client.get(f"/api/events/{body['audit_id']}"))["event"]
    assert event["type"] == "provider_account.created" and event["data"]["provider_code"] == "openai"


def test_detail_update_delete_then_not_found(client: TestClient, project: dict) -> None:
    upsert(client, provider_code="OpenAI", display_name="OpenAI", account_ref="acct", base_url="https://api")
    assert ok(client.get(f"{BASE}/OpenAI"))["provider_account"]["display_name"] == "OpenAI"
    assert ok(client.get(f"{BASE}/openai"))["provider_account"]["account_ref"] == "acct"

    body = ok(
        client.put(
            f"{BASE}/OpenAI",
            json={"display_name": "Open AI", "enabled": False, "config_json": {"model": "x"}},
        )
    )
    account = body["provider_account"]
    assert (account["display_name"], account["enabled"], account["config_json"]) == (
        "Open AI",
        False,
        {"model": "x"},
    )
    assert (account["account_ref"], account["base_url"]) == ("acct", "https://api")
    assert ok(client.get(f"/api/events/{body['audit_id']}"))["event"]["type"] == "provider_account.updated"

    deleted = ok(client.delete(f"{BASE}/OpenAI"))
    assert deleted["deleted"] is True and deleted["provider_code"] == "OpenAI"  # the raw path value
    event = ok(client.get(f"/api/events/{deleted['audit_id']}"))["event"]
    assert event["type"] == "provider_account.deleted" and event["data"]["provider_code"] == "openai"
    assert_error(client.get(f"{BASE}/openai"), 404, "Provider account not found")
    assert_error(client.delete(f"{BASE}/openai"), 404, "Provider account not found")


def test_upsert_overwrites_every_field_and_keeps_created_at(client: TestClient, project: dict) -> None:
    first = upsert(
        client,
        provider_code="openai",
        display_name="OpenAI",
        account_ref="acct",
        base_url="https://api",
        enabled=False,
        config_json={"a": 1},
    )["provider_account"]
    body = upsert(client, provider_code="OPENAI")
    again = body["provider_account"]
    defaults = {
        "display_name": "openai",
        "account_ref": "",
        "base_url": "",
        "enabled": True,
        "config_json": {},
    }
    assert again == {**first, **defaults, "updated_at": again["updated_at"]}
    assert again["created_at"] == first["created_at"]
    assert ok(client.get(f"/api/events/{body['audit_id']}"))["event"]["type"] == "provider_account.replaced"
    assert ok(client.get(BASE))["count"] == 1


def test_blank_display_name_on_upsert_falls_back_to_the_code(client: TestClient, project: dict) -> None:
    assert (
        upsert(client, provider_code="fal-ai", display_name="  ")["provider_account"]["display_name"]
        == "fal-ai"
    )


def test_list_is_ordered_by_code(client: TestClient, project: dict) -> None:
    for code in ("replicate", "anthropic", "openai"):
        upsert(client, provider_code=code)
    upsert(client, provider_code="anthropic", display_name="touched last")
    listed = ok(client.get(BASE))
    assert listed["count"] == 3
    assert [a["provider_code"] for a in listed["provider_accounts"]] == ["anthropic", "openai", "replicate"]


def test_upsert_requires_a_normalisable_code_before_the_project_lookup(client: TestClient) -> None:
    missing = "/api/projects/missing/provider-accounts"
    assert_error(client.post(missing, json={}), 400, "Field 'provider_code' is required")
    assert_error(
        client.post(missing, json={"provider_code": "!!!"}), 400, "Field 'provider_code' is required"
    )
    assert_error(client.post(missing, json={"provider_code": "openai"}), 404, "Project not found")
    assert_error(client.get(missing), 404, "Project not found")


@pytest.mark.parametrize(("method", "body"), [("GET", None), ("PUT", {"enabled": True}), ("DELETE", None)])
def test_path_checks_run_slug_then_code_then_project(
    client: TestClient, project: dict, method: str, body: dict | None
) -> None:
    def call(path: str) -> Any:
        return client.request(method, path, json=body)

    assert_error(call("/api/projects/!!!/provider-accounts/!!!"), 404, "Provider account not found")
    assert_error(
        call("/api/projects/missing/provider-accounts/!!!"), 400, "Field 'provider_code' is required"
    )
    assert_error(call(f"{BASE}/!!!"), 400, "Field 'provider_code' is required")
    assert_error(call("/api/projects/missing/provider-accounts/openai"), 404, "Provider account not found")
    assert_error(call(f"{BASE}/openai"), 404, "Provider account not found")


def test_put_needs_one_of_five_fields_before_the_path_checks(client: TestClient) -> None:
    assert_error(client.put("/api/projects/!!!/provider-accounts/!!!", json={}), 400, PUT_FIELDS)
    assert_error(
        client.put("/api/projects/x/provider-accounts/x", json={"config_json": None}), 400, PUT_FIELDS
    )


def test_put_merges_and_clears_optional_text(client: TestClient, project: dict) -> None:
    upsert(
        client,
        provider_code="openai",
        account_ref="acct",
        base_url="https://api",
        config_json={"a": 1, "b": 2},
    )
    account = ok(client.put(f"{BASE}/openai", json={"account_ref": "", "config_json": {"c": 3}}))[
        "provider_account"
    ]
    assert (account["account_ref"], account["base_url"], account["config_json"]) == (
        "",
        "https://api",
        {"c": 3},
    )
    assert ok(client.put(f"{BASE}/openai", json={"config_json": [1, "two"]}))["provider_account"][
        "config_json"
    ] == [
        1,
        "two",
    ]
    assert_error(
        client.put(f"{BASE}/openai", json={"display_name": " "}), 400, "Field 'display_name' is required"
    )


def test_racing_upserts_of_one_code_both_apply_in_log_order(client: TestClient, project: dict) -> None:
    responses = race(
        client,
        ("POST", BASE, {"provider_code": "openai", "display_name": "first"}),
        ("POST", BASE, {"provider_code": "OpenAI", "display_name": "second"}),
    )
    assert [r.status_code for r in responses] == [200, 200]
    created = project_events(client, "demo", "provider_account.created")
    replaced = project_events(client, "demo", "provider_account.replaced")
    assert len(created) == 1 and len(replaced) == 1
    assert replaced[0]["position"] > created[0]["position"]
    listed = ok(client.get(BASE))
    assert listed["count"] == 1
    assert listed["provider_accounts"][0]["display_name"] == replaced[0]["data"]["display_name"]


def test_config_nested_as_deep_as_serde_json_refuses_is_a_400_and_appends_nothing(
    client: TestClient, project: dict
) -> None:
    """serde_json refuses a body nested 128 levels deep (the body object is the first level). Deeper
    config was accepted here and, from ~490 levels on, broke a read model for good: every later
    request answered 500."""
    headers = {"content-type": "application/json"}

    def config(depth: int) -> bytes:
        return b'{"a":' * depth + b"1" + b"}" * depth

    upsert(client, provider_code="openai")
    for depth in (127, 500, 900):
        for code in (b'"fal"', b'"!!!"', b"null"):  # the body's decoding comes before its checks
            body = b'{"provider_code":' + code + b',"config_json":' + config(depth) + b"}"
            for url in (BASE, "/api/projects/nope/provider-accounts"):
                response = client.post(url, content=body, headers=headers)
                assert_error(response, 400, "Request body is not valid JSON")
        body = b'{"config_json":' + config(depth) + b"}"
        for url in (f"{BASE}/openai", "/api/projects/nope/provider-accounts/!!!"):
            assert_error(
                client.put(url, content=body, headers=headers), 400, "Request body is not valid JSON"
            )
    assert [a["provider_code"] for a in ok(client.get(BASE))["provider_accounts"]] == ["openai"]
    assert len(project_events(client, "demo", "provider_account.updated")) == 0
    deepest = b'{"provider_code":"fal","config_json":' + config(126) + b"}"
    assert (
        ok(client.post(BASE, content=deepest, headers=headers))["provider_account"]["provider_code"] == "fal"
    )
    assert ok(client.put(f"{BASE}/openai", content=b'{"config_json":' + config(126) + b"}", headers=headers))
    assert ok(client.get(BASE))["count"] == 2  # the read models still follow the log
