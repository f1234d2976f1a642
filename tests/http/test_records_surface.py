"""The project-record routes answer the reference mount test's statuses (contract §2, end): every
path parameter `x`, body `{}`, an empty database, dev bypass."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient

ROUTES = [
    ("GET", "/api/projects/x/prompt-templates", 404),
    ("POST", "/api/projects/x/prompt-templates", 400),
    ("GET", "/api/projects/x/prompt-templates/x", 404),
    ("PUT", "/api/projects/x/prompt-templates/x", 400),
    ("DELETE", "/api/projects/x/prompt-templates/x", 404),
    ("GET", "/api/projects/x/provider-accounts", 404),
    ("POST", "/api/projects/x/provider-accounts", 400),
    ("GET", "/api/projects/x/provider-accounts/x", 404),
    ("PUT", "/api/projects/x/provider-accounts/x", 400),
    ("DELETE", "/api/projects/x/provider-accounts/x", 404),
    ("GET", "/api/projects/x/style-guides", 404),
    ("POST", "/api/projects/x/style-guides", 400),
    ("GET", "/api/projects/x/style-guides/x", 404),
    ("PUT", "/api/projects/x/style-guides/x", 400),
    ("DELETE", "/api/projects/x/style-guides/x", 404),
    ("GET", "/api/projects/x/characters", 404),
    ("POST", "/api/projects/x/characters", 400),
    ("GET", "/api/projects/x/characters/x", 404),
    ("PUT", "/api/projects/x/characters/x", 400),
    ("DELETE", "/api/projects/x/characters/x", 404),
    ("GET", "/api/projects/x/reference-sets", 404),
    ("POST", "/api/projects/x/reference-sets", 400),
    ("GET", "/api/projects/x/reference-sets/x", 404),
    ("PUT", "/api/projects/x/reference-sets/x", 400),
    ("DELETE", "/api/projects/x/reference-sets/x", 404),
    ("GET", "/api/projects/x/reference-sets/x/items", 404),
    ("POST", "/api/projects/x/reference-sets/x/items", 400),
    ("GET", "/api/projects/x/reference-sets/x/items/x", 404),
    ("PUT", "/api/projects/x/reference-sets/x/items/x", 400),
    ("DELETE", "/api/projects/x/reference-sets/x/items/x", 404),
]


@pytest.mark.parametrize(("method", "path", "status"), ROUTES)
def test_route_answers_the_mount_test_status(client: TestClient, method: str, path: str, status: int) -> None:
    body = {} if method in ("POST", "PUT") else None
    response = client.request(method, path, json=body)
    assert response.status_code == status, response.text
    expected_code = "not_found" if status == 404 else "validation_error"
    assert response.json()["error_code"] == expected_code
