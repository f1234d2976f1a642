"""The application with its log, read models and data keys on PostgreSQL, through HTTP."""

from __future__ import annotations

from collections.abc import Callable

from litestar.testing import TestClient


def test_projects_round_trip(pg_client: Callable[..., TestClient]) -> None:
    client = pg_client()
    created = client.post("/api/projects", json={"name": "Demo Project", "slug": "demo"})
    assert created.status_code == 200, created.text
    got = client.get("/api/projects/demo")
    assert got.status_code == 200, got.text
    assert got.json()["project"]["name"] == "Demo Project"
    listed = client.get("/api/projects")
    assert [p["slug"] for p in listed.json()["projects"]] == ["demo"]
