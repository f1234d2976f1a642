"""Shared fixtures: an in-process client on a real SQLite data folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from kroma.config import Settings
from kroma.http.app import create_app


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Build a TestClient over a fresh data folder; keyword arguments override Settings."""
    opened: list[TestClient] = []

    def build(**overrides: Any) -> TestClient:
        values: dict[str, Any] = {
            "data_dir": str(tmp_path / f"data{len(opened)}"),
            "workspace_root": str(tmp_path / "app"),  # the app root: project folders go here
            "auth_dev_bypass": True,
            "agent_dispatch": False,  # confirmed instructions stay confirmed unless a test dispatches
        }
        values.update(overrides)
        client = TestClient(create_app(Settings(**values)))
        client.__enter__()
        opened.append(client)
        return client

    yield build
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    """A client with auth in dev-bypass mode, as the reference's endpoint tests run."""
    return make_client()


@pytest.fixture
def auth_client(make_client: Callable[..., TestClient]) -> TestClient:
    """A client with bearer auth enforced (dev bypass off; the default loopback bind keeps the
    first-token bootstrap open until a token exists)."""
    return make_client(auth_dev_bypass=False)


@pytest.fixture
def project(client: TestClient) -> dict[str, Any]:
    """A project created through the API: {id, slug, name}."""
    response = client.post("/api/projects", json={"name": "Demo Project", "slug": "demo"})
    assert response.status_code == 200, response.text
    return response.json()["project"]
