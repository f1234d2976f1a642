"""Project secrets (contract §3.13, §7 secrets_endpoints, §10 item 12): encrypted upsert, metadata
reads, rotation with its counters and a new master key, and crypto-shredding on delete."""

from __future__ import annotations

import base64
import contextlib
import os
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from kroma.config import Settings
from kroma.crypto import (
    DataKeyNotFoundError,
    DataKeyUnwrapError,
    encode_key,
    is_sealed,
)
from kroma.domain import secrets as domain
from kroma.domain.aggregate import project_stream
from kroma.events.envelope import NewEvent
from kroma.http.app import create_app
from tests.http.log_seed import append, services_of
from tests.http.test_auth import concurrently

S = "/api/projects/{}/secrets"
ENV = (
    "KROMA_MASTER_KEY",
    "IAT_MASTER_KEY",
    "KROMA_MASTER_KEY_FILE",
    "IAT_MASTER_KEY_FILE",
    "KROMA_MASTER_KEY_REF",
    "IAT_MASTER_KEY_REF",
    "KROMA_MASTER_KEY_PREVIOUS",
    "IAT_MASTER_KEY_PREVIOUS",
)


@pytest.fixture(autouse=True)
def no_master_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def assert_error(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["ok"] is False and body["error"] == message, body


def put_secret(client: TestClient, slug: str, code: str, name: str, value: str) -> dict[str, Any]:
    body = {"provider_code": code, "secret_name": name, "secret_value": value}
    response = client.post(S.format(slug), json=body)
    assert response.status_code == 200, response.text
    return response.json()


def events_of(client: TestClient, *types: str) -> list[Any]:
    found = client.blocking_portal.call(services_of(client).store.read_all, 0, 10_000)
    return [e for e in found if not types or e.type in types]


def keys_of(client: TestClient) -> Any:
    return client.blocking_portal.call(services_of(client).vault.keys)


def call(client: TestClient, fn: Any, *args: Any) -> Any:
    return client.blocking_portal.call(fn, *args)


@pytest.fixture
def open_client(tmp_path: Path) -> Iterator[Any]:
    """Open (and close) clients on a chosen data folder, so a test can restart the server."""
    opened: list[TestClient] = []

    def build(data_dir: Path, **overrides: Any) -> TestClient:
        client = TestClient(create_app(Settings(data_dir=str(data_dir), auth_dev_bypass=True, **overrides)))
        client.__enter__()
        opened.append(client)
        return client

    yield build
    for client in opened:
        client.__exit__(None, None, None)


def close(client: TestClient) -> None:
    client.__exit__(None, None, None)


# -- the contract's endpoint tests (§7 secrets_endpoints) ------------------------------------------------


def test_upsert_list_update_in_place_and_delete(client: TestClient, project: dict[str, Any]) -> None:
    created = put_secret(client, "demo", "OpenAI", "api_key", "sk-one")
    secret = created["secret"]
    assert secret == {
        "project_id": project["id"],
        "provider_code": "openai",
        "secret_name": "api_key",
        "has_value": True,
        "updated_at": secret["updated_at"],
    }
    assert set(created) == {"ok", "secret", "audit_id"}

    put_secret(client, "demo", "openai", "api_key", "sk-two")
    listed = client.get(S.format("demo")).json()
    assert listed["count"] == 1 and listed["secrets"][0]["provider_code"] == "openai"

    deleted = client.delete(S.format("demo") + "/openai/api_key")
    assert deleted.status_code == 200
    assert set(deleted.json()) == {"ok", "deleted", "audit_id"} and deleted.json()["deleted"] is True
    assert client.get(S.format("demo")).json() == {"ok": True, "count": 0, "secrets": []}


def test_list_order_is_code_then_name(client: TestClient, project: dict[str, Any]) -> None:
    for code, name in (("openai", "b"), ("anthropic", "z"), ("openai", "a"), ("openai", "B")):
        put_secret(client, "demo", code, name, "v")
    listed = client.get(S.format("demo")).json()["secrets"]
    assert [(s["provider_code"], s["secret_name"]) for s in listed] == [
        ("anthropic", "z"),
        ("openai", "B"),
        ("openai", "a"),
        ("openai", "b"),
    ]


def test_rotate_force_and_skip_current(client: TestClient, project: dict[str, Any]) -> None:
    put_secret(client, "demo", "openai", "api_key", "sk-test")
    forced = client.post(S.format("demo") + "/rotate", json={"force": True})
    assert forced.status_code == 200, forced.text
    assert forced.json()["rotation"] == {
        "scanned": 1,
        "rotated": 1,
        "skipped_empty": 0,
        "skipped_current_key_ref": 0,
        "plaintext_reencrypted": 0,
    }
    assert forced.json()["audit_id"]
    plain = client.post(S.format("demo") + "/rotate", json={}).json()["rotation"]
    assert plain["scanned"] == 1 and plain["rotated"] == 0 and plain["skipped_current_key_ref"] == 1


def test_rotation_status_counts_a_legacy_plaintext_row(
    client: TestClient, project: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference test overwrites a row with plaintext under key_ref 'legacy-key'; here a
    legacy row is an event with an unsealed value (only a migration could write one)."""
    monkeypatch.setenv("KROMA_MASTER_KEY", encode_key(os.urandom(32)))  # rotation never creates one
    legacy = {
        "project_id": project["id"],
        "provider_code": "openai",
        "secret_name": "api_key",
        "key_id": None,
        "ciphertext": "sk-legacy-plaintext",
        "key_ref": "legacy-key",
    }
    append(client, NewEvent(project_stream(project["id"]), "secret.set", legacy))
    status = client.get(S.format("demo") + "/rotation-status").json()["status"]
    assert status == {
        "total": 1,
        "encrypted": 0,
        "plaintext": 1,
        "empty": 0,
        "key_refs": [{"key_ref": "legacy-key", "count": 1}],
    }

    rotated = client.post(S.format("demo") + "/rotate", json={"from_key_ref": "legacy-key"}).json()[
        "rotation"
    ]
    assert rotated == {
        "scanned": 1,
        "rotated": 1,
        "skipped_empty": 0,
        "skipped_current_key_ref": 0,
        "plaintext_reencrypted": 1,
    }
    status = client.get(S.format("demo") + "/rotation-status").json()["status"]
    assert status == {
        "total": 1,
        "encrypted": 1,
        "plaintext": 0,
        "empty": 0,
        "key_refs": [{"key_ref": "local-master", "count": 1}],
    }
    [event] = events_of(client, "secrets.rotated")
    [entry] = event.data["secrets"]
    assert is_sealed(entry["ciphertext"])
    assert (
        call(client, keys_of(client).decrypt_secret, entry["key_id"], entry["ciphertext"])
        == "sk-legacy-plaintext"
    )


def test_rotation_status_counters_and_key_refs(client: TestClient, project: dict[str, Any]) -> None:
    put_secret(client, "demo", "openai", "api_key", "sk-1")
    put_secret(client, "demo", "openai", "org", "org-1")
    services = services_of(client)

    def declare(code: str, name: str) -> Any:
        return services.commands.on_project(
            project["id"], lambda s, m: [domain.decide_declare(s, code, name, m)]
        )

    outcome = call(client, declare, "anthropic", "api_key")
    call(client, services.settle, outcome.append.last_position)
    outcome = call(client, declare, "openai", "api_key")  # an existing value is never overwritten
    call(client, services.settle, outcome.append.last_position)

    listed = client.get(S.format("demo")).json()["secrets"]
    assert [(s["provider_code"], s["secret_name"], s["has_value"]) for s in listed] == [
        ("anthropic", "api_key", False),
        ("openai", "api_key", True),
        ("openai", "org", True),
    ]
    status = client.get(S.format("demo") + "/rotation-status").json()["status"]
    assert status == {
        "total": 3,
        "encrypted": 2,
        "plaintext": 0,
        "empty": 1,
        "key_refs": [{"key_ref": "local-master", "count": 3}],
    }
    rotation = client.post(S.format("demo") + "/rotate", json={"force": True}).json()["rotation"]
    assert rotation == {
        "scanned": 3,
        "rotated": 2,
        "skipped_empty": 1,
        "skipped_current_key_ref": 0,
        "plaintext_reencrypted": 0,
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "Field 'provider_code' is required"),
        (
            {"provider_code": "!!!", "secret_name": "a", "secret_value": "b"},
            "Field 'provider_code' is required",
        ),
        ({"provider_code": "openai"}, "Field 'secret_name' is required"),
        ({"provider_code": "openai", "secret_name": "  "}, "Field 'secret_name' is required"),
        ({"provider_code": "openai", "secret_name": "k"}, "Field 'secret_value' is required"),
        (
            {"provider_code": "openai", "secret_name": "k", "secret_value": " \n "},
            "Field 'secret_value' is required",
        ),
    ],
)
def test_each_missing_field_is_a_400_before_the_project_lookup(
    client: TestClient, body: dict[str, Any], message: str
) -> None:
    assert_error(client.post(S.format("missing"), json=body), 400, message)


def test_not_found_messages(client: TestClient, project: dict[str, Any]) -> None:
    full = {"provider_code": "openai", "secret_name": "k", "secret_value": "v"}
    assert_error(client.post(S.format("missing"), json=full), 404, "Project not found")
    assert_error(client.get(S.format("missing")), 404, "Project not found")
    assert_error(client.get(S.format("missing") + "/rotation-status"), 404, "Project not found")
    assert_error(client.post(S.format("missing") + "/rotate", json={}), 404, "Project not found")
    assert_error(client.delete(S.format("missing") + "/openai/k"), 404, "Secret not found")
    assert_error(client.delete(S.format("!!!") + "/openai/k"), 404, "Secret not found")
    assert_error(client.delete(S.format("demo") + "/openai/k"), 404, "Secret not found")
    assert_error(client.delete(S.format("demo") + "/!!!/k"), 400, "Field 'provider_code' is required")
    assert_error(client.delete(S.format("demo") + "/openai/%20"), 400, "Field 'secret_name' is required")


def test_delete_normalises_the_path(client: TestClient, project: dict[str, Any]) -> None:
    put_secret(client, "demo", "openai", "API Key", "v")
    assert client.delete(S.format("DEMO") + "/OpenAI/%20API%20Key%20").status_code == 200


def test_route_collisions(client: TestClient, project: dict[str, Any]) -> None:
    assert client.get(S.format("demo") + "/rotate").status_code == 405
    assert client.post(S.format("demo") + "/rotation-status", json={}).status_code == 405


def test_auth_comes_first(auth_client: TestClient) -> None:
    assert auth_client.post(S.format("demo"), json={}).status_code == 401
    token = auth_client.post("/auth/token", json={}).json()["auth_token"]["token"]
    response = auth_client.post(S.format("nope"), json={}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403


# -- encryption at rest ---------------------------------------------------------------------------------


def test_only_ciphertext_enters_the_log(client: TestClient, project: dict[str, Any]) -> None:
    put_secret(client, "demo", "openai", "api_key", "  sk-trimmed-value  ")
    [event] = events_of(client, "secret.set")
    data = event.data
    assert set(data) == {"project_id", "provider_code", "secret_name", "key_id", "ciphertext", "key_ref"}
    assert data["ciphertext"].startswith("enc:v1:") and data["key_ref"] == "local-master"
    assert "sk-trimmed-value" not in str(data)
    assert (
        call(client, keys_of(client).decrypt_secret, data["key_id"], data["ciphertext"]) == "sk-trimmed-value"
    )

    data_dir = services_of(client).settings.data_path
    key_file = data_dir / "master.key"
    assert key_file.is_file() and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert (data_dir / "keys.db").is_file()


def test_a_replaced_value_is_shredded_too(client: TestClient, project: dict[str, Any]) -> None:
    put_secret(client, "demo", "openai", "api_key", "sk-old")
    put_secret(client, "demo", "openai", "api_key", "sk-new")
    old, new = events_of(client, "secret.set")
    keys = keys_of(client)
    with pytest.raises(DataKeyNotFoundError):
        call(client, keys.decrypt_secret, old.data["key_id"], old.data["ciphertext"])
    assert call(client, keys.decrypt_secret, new.data["key_id"], new.data["ciphertext"]) == "sk-new"
    assert list(call(client, keys.refs)) == [new.data["key_id"]]


def test_racing_upserts_leave_exactly_the_live_key(client: TestClient, project: dict[str, Any]) -> None:
    body = {"provider_code": "openai", "secret_name": "api_key"}
    requests = [("POST", S.format("demo"), {"json": {**body, "secret_value": f"v{i}"}}) for i in range(5)]
    assert [r.status_code for r in concurrently(client, requests)] == [200] * 5
    sets = events_of(client, "secret.set")
    assert len(sets) == 5
    assert list(call(client, keys_of(client).refs)) == [sets[-1].data["key_id"]]
    assert client.get(S.format("demo")).json()["count"] == 1


def _b64_needles(value: bytes) -> set[bytes]:
    """The base64 text of `value` at each byte alignment, in both alphabets, without the chars
    that would mix in neighbouring bytes."""
    needles: set[bytes] = set()
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * shift + value + b"\0\0")
            start = -(-shift * 8 // 6)
            end = (shift + len(value)) * 8 // 6
            needles.add(text[start:end])
    return needles


def _scan(data_dir: Path, needles: set[bytes]) -> list[str]:
    hits = []
    for path in sorted(data_dir.rglob("*")):
        if path.is_file():
            blob = path.read_bytes()
            hits += [f"{path.name}: {n!r}" for n in needles if n in blob]
    return hits


def _wrapped_keys(data_dir: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(data_dir / "keys.db")) as db:
        return {row[0] for row in db.execute("SELECT wrapped FROM data_keys")}


def test_deleting_a_secret_shreds_it_everywhere(open_client: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "shred"
    value = f"sk-shred-{uuid.uuid4().hex}{uuid.uuid4().hex}"
    needles = {value.encode(), value.encode().hex().encode(), *_b64_needles(value.encode())}

    client = open_client(data_dir)
    assert client.post("/api/projects", json={"name": "Demo", "slug": "demo"}).status_code == 200
    put_secret(client, "demo", "openai", "api_key", f"  {value}  ")
    wrapped = [_wrapped_keys(data_dir)]
    rotated = client.post(S.format("demo") + "/rotate", json={"force": True}).json()["rotation"]
    assert rotated["rotated"] == 1
    wrapped.append(_wrapped_keys(data_dir))
    assert wrapped[0] != wrapped[1] and len(wrapped[1]) == 1  # re-wrapped under the master key
    needles |= {w.encode() for ws in wrapped for w in ws}  # the data key, in every wrapping
    assert client.delete(S.format("demo") + "/openai/api_key").status_code == 200

    [event] = events_of(client, "secret.set")
    keys = keys_of(client)
    assert call(client, keys.data_key, event.data["key_id"]) is None
    with pytest.raises(DataKeyNotFoundError):
        call(client, keys.decrypt_secret, event.data["key_id"], event.data["ciphertext"])
    assert call(client, services_of(client).store.verify_chain) == call(
        client, services_of(client).store.head
    )
    assert _scan(data_dir, needles) == []  # with WAL files and journals as they are while running
    close(client)
    assert _scan(data_dir, needles) == []  # and after checkpoints on close


# -- rotation with a new master key ------------------------------------------------------------------------


def test_rotation_to_a_new_master_key(
    open_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "rotate"
    old_key, new_key = encode_key(os.urandom(32)), encode_key(os.urandom(32))

    monkeypatch.setenv("KROMA_MASTER_KEY", old_key)
    first = open_client(data_dir)
    first.post("/api/projects", json={"name": "Demo", "slug": "demo"})
    put_secret(first, "demo", "openai", "api_key", "sk-rotate-me")
    close(first)
    assert not (data_dir / "master.key").exists()  # the env key is used, no file is created

    monkeypatch.setenv("KROMA_MASTER_KEY", new_key)
    monkeypatch.setenv("KROMA_MASTER_KEY_REF", "v2")
    monkeypatch.setenv("KROMA_MASTER_KEY_PREVIOUS", f"local-master={old_key}")
    second = open_client(data_dir)
    status = second.get(S.format("demo") + "/rotation-status").json()["status"]
    assert status["key_refs"] == [{"key_ref": "local-master", "count": 1}]
    rotation = second.post(S.format("demo") + "/rotate", json={}).json()["rotation"]
    assert rotation == {
        "scanned": 1,
        "rotated": 1,
        "skipped_empty": 0,
        "skipped_current_key_ref": 0,
        "plaintext_reencrypted": 0,
    }
    status = second.get(S.format("demo") + "/rotation-status").json()["status"]
    assert status == {
        "total": 1,
        "encrypted": 1,
        "plaintext": 0,
        "empty": 0,
        "key_refs": [{"key_ref": "v2", "count": 1}],
    }
    again = second.post(S.format("demo") + "/rotate", json={}).json()["rotation"]
    assert (again["scanned"], again["rotated"], again["skipped_current_key_ref"]) == (1, 0, 1)
    scoped = second.post(S.format("demo") + "/rotate", json={"from_key_ref": "local-master"}).json()[
        "rotation"
    ]
    assert scoped["scanned"] == 0
    forced = second.post(S.format("demo") + "/rotate", json={"from_key_ref": " v2 ", "force": True}).json()
    assert forced["rotation"]["rotated"] == 1

    record = events_of(second, "secrets.rotated")[0].data
    assert record == {
        "project_id": record["project_id"],
        "from_key_ref": None,
        "force": False,
        "target_key_ref": "v2",
        "scanned": 1,
        "rotated": 1,
        "skipped_empty": 0,
        "skipped_current_key_ref": 0,
        "plaintext_reencrypted": 0,
        "secrets": [{"provider_code": "openai", "secret_name": "api_key"}],
    }
    assert events_of(second, "secrets.rotated")[-1].data["from_key_ref"] == " v2 "  # the raw request value
    close(second)

    monkeypatch.delenv("KROMA_MASTER_KEY_PREVIOUS")
    third = open_client(data_dir)  # only the new key: the (unchanged) ciphertext still opens
    [event] = events_of(third, "secret.set")
    assert (
        call(third, keys_of(third).decrypt_secret, event.data["key_id"], event.data["ciphertext"])
        == "sk-rotate-me"
    )
    close(third)

    monkeypatch.setenv("KROMA_MASTER_KEY", old_key)
    monkeypatch.delenv("KROMA_MASTER_KEY_REF")
    fourth = open_client(data_dir)  # the old key alone no longer opens the re-wrapped data key
    with pytest.raises(DataKeyUnwrapError):
        call(fourth, keys_of(fourth).decrypt_secret, event.data["key_id"], event.data["ciphertext"])


def test_rotation_without_a_master_key(open_client: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "nokey"
    client = open_client(data_dir)
    client.post("/api/projects", json={"name": "Demo", "slug": "demo"})
    project_id = client.get("/api/projects/demo").json()["project"]["id"]
    append(
        client,
        NewEvent(
            project_stream(project_id),
            "secret.declared",
            {"project_id": project_id, "provider_code": "anthropic", "secret_name": "api_key"},
        ),
    )
    # Nothing qualifies: no key is loaded, and none is created.
    rotation = client.post(S.format("demo") + "/rotate", json={"force": True}).json()["rotation"]
    assert rotation["skipped_empty"] == 1 and rotation["rotated"] == 0
    assert not (data_dir / "master.key").exists()

    put_secret(client, "demo", "openai", "api_key", "sk-x")  # an upsert creates the key file
    assert (data_dir / "master.key").exists()
    close(client)
    (data_dir / "master.key").unlink()

    restarted = open_client(data_dir)
    assert_error(
        restarted.post(S.format("demo") + "/rotate", json={"force": True}), 500, "Internal server error"
    )
    assert not (data_dir / "master.key").exists()  # rotation never creates a key
    assert restarted.get(S.format("demo") + "/rotation-status").status_code == 200


def test_a_malformed_master_key_is_a_500(
    client: TestClient, project: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KROMA_MASTER_KEY", "not-a-key")
    body = {"provider_code": "openai", "secret_name": "k", "secret_value": "v"}
    assert_error(client.post(S.format("demo"), json=body), 500, "Internal server error")
    assert client.get(S.format("demo")).json()["count"] == 0
    assert events_of(client, "secret.set") == []
