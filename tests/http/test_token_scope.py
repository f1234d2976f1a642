"""A project-scoped token is a boundary: it creates, lists and revokes only tokens of its own project
(a 403 in the contract's shape for anything else); unscoped tokens keep the reference's behaviour."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import TestClient

from kroma.auth import SCOPE_FORBIDDEN
from tests.http.test_auth import assert_error, bearer, first_token, make_project


@pytest.fixture
def world(auth_client: TestClient) -> dict[str, Any]:
    """An unscoped root token, projects `mine` and `other`, and a token scoped to each."""
    root = first_token(auth_client, label="root")["token"]
    make_project(auth_client, root, "mine")
    make_project(auth_client, root, "other")

    def scoped(slug: str, label: str) -> dict[str, Any]:
        response = auth_client.post(
            "/auth/token", json={"project_slug": slug, "label": label}, headers=bearer(root)
        )
        assert response.status_code == 200, response.text
        return response.json()["auth_token"]

    return {"root": root, "mine": scoped("mine", "mine"), "other": scoped("other", "other")}


def _forbidden(response: Any) -> None:
    assert_error(response, 403, SCOPE_FORBIDDEN, "forbidden")


def test_a_scoped_token_creates_a_token_of_its_own_project(
    auth_client: TestClient, world: dict[str, Any]
) -> None:
    response = auth_client.post(
        "/auth/token", json={"project_slug": "MINE", "label": "child"}, headers=bearer(world["mine"]["token"])
    )
    assert response.status_code == 200, response.text
    assert response.json()["auth_token"]["project_id"] == world["mine"]["project_id"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"project_slug": None},
        {"label": "unscoped"},
        {"project_slug": "other"},
        {"project_slug": "nope"},
        {"project_slug": " "},
    ],
)
def test_a_scoped_token_cannot_create_an_unscoped_or_foreign_token(
    auth_client: TestClient, world: dict[str, Any], body: dict[str, Any]
) -> None:
    _forbidden(auth_client.post("/auth/token", json=body, headers=bearer(world["mine"]["token"])))
    listed = auth_client.get("/auth/tokens", headers=bearer(world["root"])).json()
    assert listed["count"] == 3  # root, mine, other: nothing was minted


def test_the_scope_403_comes_before_validation(auth_client: TestClient, world: dict[str, Any]) -> None:
    body = {"project_slug": "other", "expires_at": "not a date"}
    _forbidden(auth_client.post("/auth/token", json=body, headers=bearer(world["mine"]["token"])))


def test_a_scoped_token_lists_only_the_tokens_of_its_project(
    auth_client: TestClient, world: dict[str, Any]
) -> None:
    listed = auth_client.get("/auth/tokens", headers=bearer(world["mine"]["token"])).json()
    assert listed["count"] == 1
    assert [t["id"] for t in listed["auth_tokens"]] == [world["mine"]["id"]]


def test_a_scoped_token_cannot_revoke_a_token_outside_its_project(
    auth_client: TestClient, world: dict[str, Any]
) -> None:
    token = world["mine"]["token"]
    root_id = next(
        t["id"]
        for t in auth_client.get("/auth/tokens", headers=bearer(world["root"])).json()["auth_tokens"]
        if t["label"] == "root"
    )
    for victim in (root_id, world["other"]["id"]):
        _forbidden(auth_client.delete(f"/auth/tokens/{victim}", headers=bearer(token)))
    active = [
        t
        for t in auth_client.get("/auth/tokens", headers=bearer(world["root"])).json()["auth_tokens"]
        if t["active"]
    ]
    assert len(active) == 3
    # An unknown id is still the handler's 404, as for any caller.
    response = auth_client.delete("/auth/tokens/no-such-token", headers=bearer(token))
    assert_error(response, 404, "Auth token not found", "not_found")


def test_a_scoped_token_revokes_a_token_of_its_own_project(
    auth_client: TestClient, world: dict[str, Any]
) -> None:
    mine = world["mine"]["token"]
    child = auth_client.post("/auth/token", json={"project_slug": "mine"}, headers=bearer(mine)).json()[
        "auth_token"
    ]
    response = auth_client.delete(f"/auth/tokens/{child['id']}", headers=bearer(mine))
    assert response.status_code == 200 and response.json() == {
        "ok": True,
        "deleted": True,
        "token_id": child["id"],
    }
    # ...and itself.
    assert auth_client.delete(f"/auth/tokens/{world['mine']['id']}", headers=bearer(mine)).status_code == 200
    assert auth_client.get("/auth/tokens", headers=bearer(mine)).status_code == 401


def test_an_unscoped_token_keeps_the_reference_behaviour(
    auth_client: TestClient, world: dict[str, Any]
) -> None:
    root = world["root"]
    assert auth_client.get("/auth/tokens", headers=bearer(root)).json()["count"] == 3
    unscoped = auth_client.post("/auth/token", json={"label": "more"}, headers=bearer(root)).json()[
        "auth_token"
    ]
    assert unscoped["project_id"] is None
    for victim in (world["other"]["id"], unscoped["id"]):
        assert auth_client.delete(f"/auth/tokens/{victim}", headers=bearer(root)).status_code == 200
