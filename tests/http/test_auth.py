"""API tokens and bearer auth (contract §3.14, §5, §10 items 4-6): the first-token bootstrap, the
401/403 messages and their precedence, project scope, revoke and expiry, the token list, and the
bootstrap race decided by the store."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from kroma import auth
from kroma.config import Settings
from kroma.domain.tokens import parse_expires_at
from kroma.domain.users import LOCAL_USER_ID, user_id_for
from kroma.http.app import create_app
from kroma.http.auth import bearer_token, is_loopback_bind
from kroma.services import Services
from tests.http.log_seed import ManualClock, services_of

MISSING = "Missing Authorization: Bearer token"
INVALID = "Invalid or expired token"
NOT_AUTHORIZED = "Token is not authorized for this project"
EXPIRY_MESSAGE = (
    "Invalid expires_at format: '{}'. Expected ISO8601 (YYYY-MM-DDTHH:MM:SSZ) or date (YYYY-MM-DD)"
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: httpx.Response, status: int, message: str, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {"ok": False, "error": message, "error_kind": "validation", "error_code": code}


def first_token(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/auth/token", json=body)
    assert response.status_code == 200, response.text
    return response.json()["auth_token"]


@pytest.fixture
def root(auth_client: TestClient) -> str:
    """The bootstrap token of a fresh auth-on client."""
    return first_token(auth_client, label="root")["token"]


def make_project(client: TestClient, token: str, slug: str, **extra: Any) -> dict[str, Any]:
    response = client.post(
        "/api/projects", json={"name": slug.title(), "slug": slug, **extra}, headers=bearer(token)
    )
    assert response.status_code == 200, response.text
    return response.json()["project"]


def concurrently(client: TestClient, requests: list[tuple[str, str, dict[str, Any]]]) -> list[httpx.Response]:
    """Send requests at once into the running app (same event loop as the TestClient's app)."""

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as ac:
            return list(await asyncio.gather(*(ac.request(m, u, **kw) for m, u, kw in requests)))

    return client.blocking_portal.call(run)


# -- the first-token bootstrap (§5.2) ------------------------------------------------------------------


def test_bootstrap_sequence(auth_client: TestClient) -> None:
    created = first_token(auth_client)
    token = created["token"]
    assert len(token) == 70 and token.startswith("kroma_")
    assert all(c in "0123456789abcdef" for c in token[6:])
    assert created["token_prefix"] == token[:12]
    assert set(created) == {"id", "token", "token_prefix", "label", "project_id", "created_at", "expires_at"}
    assert created["label"] == "" and created["project_id"] is None and created["expires_at"] is None

    assert_error(auth_client.post("/auth/token", json={}), 401, MISSING, "unauthorized")
    again = auth_client.post("/auth/token", json={"label": "second"}, headers=bearer(token))
    assert again.status_code == 200, again.text
    assert again.json()["auth_token"]["token"] != token


def test_bootstrap_flag_off_gives_401(make_client: Any) -> None:
    client = make_client(auth_dev_bypass=False, auth_bootstrap_first_token=False)
    assert_error(client.post("/auth/token", json={}), 401, MISSING, "unauthorized")


@pytest.mark.parametrize("bind", ["0.0.0.0:8788", "localhost:8788", "192.168.1.4:8788", "garbage"])
def test_bootstrap_needs_a_loopback_ip_bind(make_client: Any, bind: str) -> None:
    client = make_client(auth_dev_bypass=False, bind=bind)
    assert_error(client.post("/auth/token", json={}), 401, MISSING, "unauthorized")


def test_loopback_bind_parsing() -> None:
    assert is_loopback_bind("127.0.0.1:8788")
    assert is_loopback_bind("127.8.9.10:1")
    assert is_loopback_bind("[::1]:8788")
    for bind in ("0.0.0.0:8788", "localhost:8788", "::1:8788", "127.0.0.1", "127.0.0.1:x", "[::]:80"):
        assert not is_loopback_bind(bind), bind


def test_bootstrap_reopens_once_every_token_is_revoked(auth_client: TestClient, root: str) -> None:
    other = auth_client.post("/auth/token", json={}, headers=bearer(root)).json()["auth_token"]
    assert_error(auth_client.post("/auth/token", json={}), 401, MISSING, "unauthorized")
    for token_id in (other["id"],):
        assert auth_client.delete(f"/auth/tokens/{token_id}", headers=bearer(root)).status_code == 200
    assert_error(auth_client.post("/auth/token", json={}), 401, MISSING, "unauthorized")  # root is active
    root_id = auth_client.get("/auth/tokens", headers=bearer(root)).json()["auth_tokens"][-1]["id"]
    assert auth_client.delete(f"/auth/tokens/{root_id}", headers=bearer(root)).status_code == 200

    reopened = first_token(auth_client)  # generation 1 of the bootstrap
    assert_error(auth_client.post("/auth/token", json={}), 401, MISSING, "unauthorized")
    listed = auth_client.get("/auth/tokens", headers=bearer(reopened["token"])).json()
    assert [t["active"] for t in listed["auth_tokens"]] == [True, False, False]


def test_bootstrap_stays_open_while_only_expired_tokens_exist(auth_client: TestClient) -> None:
    expired = first_token(auth_client, expires_at="2020-01-01")
    assert expired["expires_at"] == "2020-01-01T23:59:59+00:00"
    assert_error(
        auth_client.get("/auth/tokens", headers=bearer(expired["token"])), 401, INVALID, "unauthorized"
    )
    first_token(auth_client)  # no active token: the bootstrap is open again


def test_racing_bootstrap_creates_exactly_one_wins(auth_client: TestClient) -> None:
    responses = concurrently(auth_client, [("POST", "/auth/token", {"json": {}})] * 6)
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 1, [r.text for r in responses]
    for r in responses:
        if r.status_code == 400:
            assert r.json()["error"] == "Bootstrap token already initialized"
        elif r.status_code == 401:
            assert r.json()["error"] == MISSING
    events = auth_client.blocking_portal.call(services_of(auth_client).store.read_all, 0, 100)
    assert [e.type for e in events] == ["token.created", "token.bootstrap_reserved"]


def test_bootstrap_race_is_decided_by_the_store(
    auth_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both creates pass every check (no active token) before either appends: the generation
    reservation (NO_STREAM) lets exactly one commit; the other answers 400."""
    barrier = asyncio.Barrier(2)
    probe = auth._next_bootstrap_generation

    async def probe_then_wait(services: Services) -> int:
        generation = await probe(services)
        await barrier.wait()
        return generation

    monkeypatch.setattr(auth, "_next_bootstrap_generation", probe_then_wait)
    responses = concurrently(auth_client, [("POST", "/auth/token", {"json": {}})] * 2)
    assert sorted(r.status_code for r in responses) == [200, 400], [r.text for r in responses]
    loser = next(r for r in responses if r.status_code == 400)
    assert loser.json() == {
        "ok": False,
        "error": "Bootstrap token already initialized",
        "error_kind": "validation",
        "error_code": "validation_error",
    }
    listed = auth_client.get(
        "/auth/tokens",
        headers=bearer(next(r for r in responses if r.status_code == 200).json()["auth_token"]["token"]),
    )
    assert listed.json()["count"] == 1


# -- 401 ----------------------------------------------------------------------------------------------


def test_every_route_but_health_and_docs_needs_a_token(auth_client: TestClient) -> None:
    assert auth_client.get("/health").status_code == 200
    assert auth_client.get("/docs/openapi.json").status_code == 200
    for method, path in (
        ("GET", "/auth/tokens"),
        ("DELETE", "/auth/tokens/x"),
        ("GET", "/api/projects"),
        ("GET", "/api/projects/demo"),
        ("GET", "/api/events"),
        ("GET", "/api/events/stream"),
        ("GET", "/api/audit"),
        ("GET", "/api/projects/demo/secrets"),
    ):
        assert_error(auth_client.request(method, path), 401, MISSING, "unauthorized")


def test_401_comes_before_body_parsing_and_validation(auth_client: TestClient) -> None:
    assert_error(auth_client.post("/api/projects", json={}), 401, MISSING, "unauthorized")
    raw = auth_client.post(
        "/api/projects", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(raw, 401, MISSING, "unauthorized")
    keyed = auth_client.post("/api/projects", json={"name": "x"}, headers={"Idempotency-Key": "k1"})
    assert_error(keyed, 401, MISSING, "unauthorized")


def test_routing_comes_before_auth(auth_client: TestClient) -> None:
    assert auth_client.get("/no/such/route").status_code == 404
    assert auth_client.get("/api/projects/demo/secrets/rotate").status_code == 405
    assert auth_client.put("/api/projects", json={}).status_code == 405


def test_garbage_and_malformed_bearers(auth_client: TestClient, root: str) -> None:
    assert_error(auth_client.get("/auth/tokens", headers=bearer("garbage")), 401, INVALID, "unauthorized")
    assert_error(
        auth_client.get(
            "/auth/tokens", headers=bearer(root[:-1] + "0" if root[-1] != "0" else root[:-1] + "1")
        ),
        401,
        INVALID,
        "unauthorized",
    )
    for header in (f"Basic {root}", "Bearer", "Bearer    ", root, f"Token {root}"):
        response = auth_client.get("/auth/tokens", headers={"Authorization": header})
        assert_error(response, 401, MISSING, "unauthorized")
    for header in (f"bearer {root}", f"BEARER   {root}  ", f"  Bearer {root}"):
        assert auth_client.get("/auth/tokens", headers={"Authorization": header}).status_code == 200


def test_bearer_extraction() -> None:
    def scope(value: str) -> dict[str, Any]:
        return {"headers": [(b"authorization", value.encode())]}

    assert bearer_token(scope("Bearer abc")) == "abc"
    assert bearer_token(scope(" bEaReR   abc  ")) == "abc"
    assert bearer_token(scope("Bearer a b")) == "a b"
    assert bearer_token(scope("Bearer")) is None
    assert bearer_token(scope("Basic abc")) is None
    assert bearer_token({"headers": []}) is None


def test_revoked_token_is_refused_and_revoke_is_idempotent(auth_client: TestClient, root: str) -> None:
    second = auth_client.post("/auth/token", json={"label": "temp"}, headers=bearer(root)).json()[
        "auth_token"
    ]
    assert auth_client.get("/api/projects", headers=bearer(second["token"])).status_code == 200

    first = auth_client.delete(f"/auth/tokens/{second['id']}", headers=bearer(root))
    assert first.status_code == 200
    assert first.json() == {"ok": True, "deleted": True, "token_id": second["id"]}
    assert_error(
        auth_client.get("/api/projects", headers=bearer(second["token"])), 401, INVALID, "unauthorized"
    )

    revoked_at = _token(auth_client, root, second["id"])["revoked_at"]
    assert revoked_at is not None
    again = auth_client.delete(f"/auth/tokens/{second['id']}", headers=bearer(root))
    assert again.status_code == 200 and again.json()["deleted"] is True
    assert _token(auth_client, root, second["id"])["revoked_at"] == revoked_at
    history = auth_client.blocking_portal.call(
        services_of(auth_client).store.read_stream, f"token:{second['id']}"
    )
    assert [e.type for e in history] == ["token.created", "token.revoked"]

    assert_error(
        auth_client.delete("/auth/tokens/nope", headers=bearer(root)),
        404,
        "Auth token not found",
        "not_found",
    )


def test_a_token_can_revoke_itself(auth_client: TestClient, root: str) -> None:
    token_id = auth_client.get("/auth/tokens", headers=bearer(root)).json()["auth_tokens"][0]["id"]
    assert auth_client.delete(f"/auth/tokens/{token_id}", headers=bearer(root)).status_code == 200
    assert_error(auth_client.get("/auth/tokens", headers=bearer(root)), 401, INVALID, "unauthorized")


def _token(client: TestClient, token: str, token_id: str) -> dict[str, Any]:
    listed = client.get("/auth/tokens", headers=bearer(token)).json()["auth_tokens"]
    return next(t for t in listed if t["id"] == token_id)


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[TestClient, ManualClock]]:
    clock = ManualClock(datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC))
    settings = Settings(data_dir=str(tmp_path / "clocked"), auth_dev_bypass=False)
    with TestClient(create_app(settings, Services(settings, clock=clock))) as client:
        yield client, clock


def test_a_token_expires_when_the_clock_passes_its_expiry(clocked: tuple[TestClient, ManualClock]) -> None:
    client, clock = clocked
    root = first_token(client)["token"]
    short = client.post(
        "/auth/token", json={"expires_at": "2026-03-01T12:00:10Z"}, headers=bearer(root)
    ).json()["auth_token"]
    assert short["expires_at"] == "2026-03-01T12:00:10+00:00"
    assert client.get("/auth/tokens", headers=bearer(short["token"])).status_code == 200
    clock.advance(9)
    assert _token(client, root, short["id"])["active"] is True
    clock.advance(1)  # 12:00:10Z: "+00:00" sorts before "Z", so the token is already inactive
    assert _token(client, root, short["id"])["active"] is False
    assert_error(client.get("/auth/tokens", headers=bearer(short["token"])), 401, INVALID, "unauthorized")


# -- the token list and create inputs ---------------------------------------------------------------------


def test_list_fields_order_and_last_used(clocked: tuple[TestClient, ManualClock]) -> None:
    client, clock = clocked
    root = first_token(client, label="root")
    clock.advance(1)
    scoped_project = make_project(client, root["token"], "demo")
    clock.advance(1)
    second = client.post(
        "/auth/token",
        json={"label": "ci", "project_slug": "Demo", "expires_at": "2030-01-01"},
        headers=bearer(root["token"]),
    ).json()["auth_token"]
    assert second["project_id"] == scoped_project["id"]
    clock.advance(1)
    listed = client.get("/auth/tokens", headers=bearer(root["token"])).json()
    assert listed["count"] == 2
    newest, oldest = listed["auth_tokens"]
    assert [newest["id"], oldest["id"]] == [second["id"], root["id"]]
    assert set(newest) == {
        "id",
        "user_id",
        "project_id",
        "token_prefix",
        "label",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "created_at",
        "active",
    }
    assert newest == {
        "id": second["id"],
        "user_id": LOCAL_USER_ID,
        "project_id": scoped_project["id"],
        "token_prefix": second["token"][:12],
        "label": "ci",
        "expires_at": "2030-01-01T23:59:59+00:00",
        "revoked_at": None,
        "last_used_at": None,
        "created_at": "2026-03-01T12:00:02Z",
        "active": True,
    }
    assert oldest["last_used_at"] == "2026-03-01T12:00:03Z"  # this very request
    assert oldest["created_at"] == "2026-03-01T12:00:00Z" and oldest["label"] == "root"
    assert "token" not in newest and "token_hash" not in newest


def test_last_used_at_is_kept_outside_the_log(auth_client: TestClient, root: str) -> None:
    before = auth_client.blocking_portal.call(services_of(auth_client).store.head)
    for _ in range(3):
        assert auth_client.get("/auth/tokens", headers=bearer(root)).status_code == 200
    assert auth_client.blocking_portal.call(services_of(auth_client).store.head) == before
    assert auth_client.get("/auth/tokens", headers=bearer(root)).json()["auth_tokens"][0]["last_used_at"]


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("2030-01-01T00:00:00Z", "2030-01-01T00:00:00+00:00"),
        ("2030-01-01T02:30:00+02:30", "2030-01-01T00:00:00+00:00"),
        ("2029-12-31T22:00:00-02:00", "2030-01-01T00:00:00+00:00"),
        ("2030-01-01t00:00:00z", "2030-01-01T00:00:00+00:00"),
        ("2030-01-01 00:00:00Z", "2030-01-01T00:00:00+00:00"),
        ("2030-01-01T00:00:00.5Z", "2030-01-01T00:00:00.500+00:00"),
        ("2030-01-01T00:00:00.123456Z", "2030-01-01T00:00:00.123456+00:00"),
        ("2030-01-01T00:00:00.123456789Z", "2030-01-01T00:00:00.123456789+00:00"),
        ("2030-01-01", "2030-01-01T23:59:59+00:00"),
        ("", None),
        (None, None),
    ],
)
def test_expires_at_formats(raw: str | None, stored: str | None) -> None:
    assert parse_expires_at(raw) == stored


@pytest.mark.parametrize(
    "raw",
    [
        " ",
        "tomorrow",
        "2030-01-01T00:00:00",
        "2030-13-01",
        "2030-01-01 ",
        " 2030-01-01",
        "2030-1-1",
        "1735689600",
    ],
)
def test_bad_expires_at_is_a_400_with_the_exact_message(auth_client: TestClient, root: str, raw: str) -> None:
    response = auth_client.post("/auth/token", json={"expires_at": raw}, headers=bearer(root))
    assert_error(response, 400, EXPIRY_MESSAGE.format(raw), "validation_error")


def test_label_is_trimmed_and_truncated(client: TestClient) -> None:
    created = first_token(client, label="  " + "x" * 250 + "  ")
    assert created["label"] == "x" * 200


def test_project_slug_must_name_a_project_of_local(client: TestClient) -> None:
    client.post("/api/projects", json={"name": "Alice's", "slug": "alices", "username": "alice"})
    for slug in ("nope", "alices", "!!!", "  "):
        response = client.post("/auth/token", json={"project_slug": slug})
        assert_error(response, 404, "Project not found", "not_found")


def test_dev_bypass_needs_no_token(client: TestClient) -> None:
    assert client.get("/auth/tokens").status_code == 200
    assert client.post("/auth/token", json={}).status_code == 200
    assert client.post("/auth/token", json={}).status_code == 200  # never a bootstrap


# -- 403: the project scope (§5.3) ---------------------------------------------------------------------


def test_project_scope(auth_client: TestClient, root: str) -> None:
    mine = make_project(auth_client, root, "mine")
    make_project(auth_client, root, "other")
    make_project(auth_client, root, "alices", username="alice")
    scoped = auth_client.post("/auth/token", json={"project_slug": "mine"}, headers=bearer(root)).json()
    scoped_token = scoped["auth_token"]["token"]

    assert auth_client.get("/api/projects/mine", headers=bearer(root)).status_code == 200
    assert auth_client.get("/api/projects/MINE/storage", headers=bearer(scoped_token)).status_code == 200
    for token in (root, scoped_token):
        # alice's project is closed to every token; a nonexistent project is a 403, not a 404
        for path in ("/api/projects/alices", "/api/projects/nope", "/api/projects/nope/style-guides/x"):
            assert_error(auth_client.get(path, headers=bearer(token)), 403, NOT_AUTHORIZED, "forbidden")
    assert_error(
        auth_client.get("/api/projects/other", headers=bearer(scoped_token)), 403, NOT_AUTHORIZED, "forbidden"
    )
    assert_error(
        auth_client.get("/api/projects/!!!", headers=bearer(root)),
        403,
        "Project access check failed",
        "forbidden",
    )

    # Scoped tokens can still list projects (as in the reference); managing tokens outside their
    # own scope is a 403 (tests/http/test_token_scope.py pins each case).
    assert auth_client.get("/api/projects", headers=bearer(scoped_token)).json()["count"] == 3
    root_id = next(
        t["id"]
        for t in auth_client.get("/auth/tokens", headers=bearer(root)).json()["auth_tokens"]
        if t["label"] == "root"
    )
    assert auth_client.delete(f"/auth/tokens/{root_id}", headers=bearer(scoped_token)).status_code == 403
    assert mine["slug"] == "mine"


def test_403_comes_before_validation_and_not_found(auth_client: TestClient, root: str) -> None:
    assert_error(
        auth_client.post("/api/projects/nope/style-guides", json={}, headers=bearer(root)),
        403,
        NOT_AUTHORIZED,
        "forbidden",
    )
    assert_error(
        auth_client.put("/api/projects/nope/storage/local", json={}, headers=bearer(root)),
        403,
        NOT_AUTHORIZED,
        "forbidden",
    )
    make_project(auth_client, root, "demo")
    response = auth_client.post("/api/projects/demo/style-guides", json={}, headers=bearer(root))
    assert_error(response, 400, "Field 'name' is required", "validation_error")


def test_the_slug_check_uses_the_raw_path_segment(auth_client: TestClient, root: str) -> None:
    """The contract takes the raw (percent-encoded) segment: `Alpha%20Project` normalises to
    `alpha_20project`, not `alpha_project`."""
    make_project(auth_client, root, "alpha_project")
    assert_error(
        auth_client.get("/api/projects/Alpha%20Project", headers=bearer(root)),
        403,
        NOT_AUTHORIZED,
        "forbidden",
    )
    assert auth_client.get("/api/projects/Alpha_Project", headers=bearer(root)).status_code == 200


# -- what is recorded ------------------------------------------------------------------------------------


def test_the_log_holds_hashes_and_prefixes_never_a_token(auth_client: TestClient, root: str) -> None:
    project = make_project(auth_client, root, "demo")
    services = services_of(auth_client)
    events = auth_client.blocking_portal.call(services.store.read_all, 0, 1000)
    created = next(e for e in events if e.type == "token.created")
    assert created.data["token_hash"] == hashlib.sha256(root.encode()).hexdigest()
    assert created.data["token_prefix"] == root[:12]
    assert created.data["user_id"] == LOCAL_USER_ID == user_id_for("local")
    assert created.metadata.actor_user_id is None and created.metadata.token_id is None  # bootstrap

    project_created = next(e for e in events if e.type == "project.created")
    assert project_created.data["project_id"] == project["id"]
    assert project_created.metadata.actor_user_id == LOCAL_USER_ID
    assert project_created.metadata.token_id == created.data["token_id"]

    for db in ("events.db", "readmodels.db"):
        path = Path(services.settings.data_path) / db
        for file in path.parent.glob(db + "*"):
            assert root.encode() not in file.read_bytes(), file


def test_idempotency_key_is_ignored_on_token_create(auth_client: TestClient, root: str) -> None:
    headers = {**bearer(root), "Idempotency-Key": "same"}
    one = auth_client.post("/auth/token", json={}, headers=headers).json()["auth_token"]["token"]
    two = auth_client.post("/auth/token", json={}, headers=headers).json()["auth_token"]["token"]
    assert one != two
    with sqlite3.connect(services_of(auth_client).settings.events_db) as db:
        assert db.execute("SELECT count(*) FROM idempotency").fetchone()[0] == 0


def test_scoped_token_events_belong_to_the_project(client: TestClient, project: dict[str, Any]) -> None:
    created = client.post("/auth/token", json={"project_slug": project["slug"]}).json()["auth_token"]
    client.delete(f"/auth/tokens/{created['id']}")
    events = client.get(
        f"/api/projects/{project['slug']}/events", params={"type": "token.created,token.revoked"}
    )
    assert [e["type"] for e in events.json()["events"]] == ["token.created", "token.revoked"]


# -- review: non-canonical paths, global log views, strict inputs ---------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api//projects/other",
        "/api/projects//other",
        "/api/%70rojects/other",
        "/api/projects//other/secrets",
        "/api//projects/other/events",
    ],
)
def test_project_scope_holds_on_non_canonical_paths(auth_client: TestClient, root: str, path: str) -> None:
    """The router collapses duplicate slashes and decodes the path; the scope check must see the
    same project segment the handler will serve, whatever the raw spelling."""
    make_project(auth_client, root, "mine")
    make_project(auth_client, root, "other")
    make_project(auth_client, root, "alices", username="alice")
    scoped = auth_client.post("/auth/token", json={"project_slug": "mine"}, headers=bearer(root)).json()
    response = auth_client.get(path, headers=bearer(scoped["auth_token"]["token"]))
    assert_error(response, 403, NOT_AUTHORIZED, "forbidden")
    alices = path.replace("other", "alices")
    assert_error(auth_client.get(alices, headers=bearer(root)), 403, NOT_AUTHORIZED, "forbidden")
    assert auth_client.get(path.replace("other", "mine"), headers=bearer(root)).status_code == 200


def test_a_raw_slug_that_decodes_to_another_project_is_refused(auth_client: TestClient, root: str) -> None:
    """`a%20b` normalises (raw, as the contract checks it) to `a_20b` but the handler serves the
    decoded `a b` -> `a_b`: a token scoped to `a_20b` must not reach `a_b`."""
    make_project(auth_client, root, "a_20b")
    make_project(auth_client, root, "a_b")
    scoped = auth_client.post("/auth/token", json={"project_slug": "a_20b"}, headers=bearer(root)).json()
    token = scoped["auth_token"]["token"]
    assert auth_client.get("/api/projects/a_20b", headers=bearer(token)).status_code == 200
    assert_error(
        auth_client.get("/api/projects/a%20b", headers=bearer(token)), 403, NOT_AUTHORIZED, "forbidden"
    )


def test_project_scoped_tokens_cannot_read_the_global_log(auth_client: TestClient, root: str) -> None:
    """The global log views show every project's events; a token scoped to one project reads its
    own project's views only."""
    make_project(auth_client, root, "mine")
    other = make_project(auth_client, root, "other")
    auth_client.post(
        "/api/projects/other/style-guides",
        json={"name": "Secret style", "instructions": "confidential"},
        headers=bearer(root),
    )
    scoped = auth_client.post("/auth/token", json={"project_slug": "mine"}, headers=bearer(root)).json()
    token = scoped["auth_token"]["token"]
    for path in ("/api/events", "/api/events/1", "/api/events/stream", "/api/audit", "/api//events"):
        assert_error(auth_client.get(path, headers=bearer(token)), 403, NOT_AUTHORIZED, "forbidden")
    assert auth_client.get("/api/projects/mine/events", headers=bearer(token)).status_code == 200
    assert auth_client.get("/api/projects/mine/audit", headers=bearer(token)).status_code == 200
    assert auth_client.get("/api/events", headers=bearer(root)).status_code == 200
    assert auth_client.get("/api/audit", headers=bearer(root)).json()["count"] >= 1
    assert other["slug"] == "other"


@pytest.mark.parametrize(
    "raw",
    [
        "2030-01-01\n",
        "2030-01-01T00:00:00Z\n",
        "\uff12\uff10\uff13\uff10-01-01",
        "2030-01-01T00:00:00.\u0665Z",
    ],
)
def test_expires_at_rejects_a_trailing_newline_and_non_ascii_digits(raw: str) -> None:
    with pytest.raises(Exception) as caught:
        parse_expires_at(raw)
    assert getattr(caught.value, "message", "") == EXPIRY_MESSAGE.format(raw)


@pytest.mark.parametrize("slug", ["", "  ", "\t"])
def test_a_blank_project_slug_is_not_found_never_an_unscoped_token(
    auth_client: TestClient, root: str, slug: str
) -> None:
    """The reference normalises any given project_slug and answers 404 when that fails, so a
    caller that meant to scope a token never silently gets an unscoped one."""
    response = auth_client.post("/auth/token", json={"project_slug": slug}, headers=bearer(root))
    assert_error(response, 404, "Project not found", "not_found")
    null = auth_client.post("/auth/token", json={"project_slug": None}, headers=bearer(root))
    assert null.status_code == 200 and null.json()["auth_token"]["project_id"] is None


def test_the_failure_messages_of_each_check(
    auth_client: TestClient, root: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A check that cannot run (a read-model failure) refuses with the contract's message and
    logs the failure, never the token."""
    make_project(auth_client, root, "demo")
    services = services_of(auth_client)
    real_one = services.reader.one

    async def no_projects(sql: str, params: tuple[Any, ...] = ()) -> Any:
        if "FROM projects" in sql:
            raise sqlite3.OperationalError("disk I/O error")
        return await real_one(sql, params)

    monkeypatch.setattr(services.reader, "one", no_projects)
    services.reader.forget()  # the access check remembers a project's owner until a commit
    response = auth_client.get("/api/projects/demo", headers=bearer(root))
    assert_error(response, 403, "Project access check failed", "forbidden")
    monkeypatch.setattr(services.reader, "one", real_one)

    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    async def no_tokens(sql: str, params: tuple[Any, ...] = ()) -> Any:
        if "FROM api_tokens" in sql:
            raise sqlite3.OperationalError("disk I/O error")
        return await real_one(sql, params)

    monkeypatch.setattr(services.reader, "one", no_tokens)
    services.reader.forget()  # a validated token is remembered until a commit
    assert_error(
        auth_client.get("/auth/tokens", headers=bearer(root)), 401, "Token validation failed", "unauthorized"
    )
    monkeypatch.setattr(services.reader, "one", real_one)
    monkeypatch.setattr(auth.read, "has_active", broken)
    assert_error(
        auth_client.post("/auth/token", json={}), 401, "Token bootstrap check failed", "unauthorized"
    )
    assert "disk I/O error" in caplog.text and root not in caplog.text
