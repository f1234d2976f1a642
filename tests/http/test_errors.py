"""Framework-level failures still answer in the contract's error envelope, never a 500."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{bad json", "Request body is not valid JSON"),
        (b"", "Request body must be a JSON object"),
        (b"[1, 2]", "Request body must be a JSON object"),
        (b'{"name": 5}', "Field 'name' must be str | null, not int"),
    ],
)
def test_bad_bodies_are_400_validation_errors(client: TestClient, content: bytes, message: str) -> None:
    response = client.post("/api/projects", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {
        "ok": False,
        "error": message,
        "error_kind": "validation",
        "error_code": "validation_error",
    }


def test_unknown_route_is_404_envelope(client: TestClient) -> None:
    response = client.get("/api/nothing/here")
    assert response.status_code == 404
    assert response.json()["error_code"] == "not_found" and response.json()["ok"] is False


def test_wrong_method_is_405_envelope(client: TestClient) -> None:
    response = client.delete("/api/projects")
    assert response.status_code == 405
    assert response.json() == {
        "ok": False,
        "error": "Method not allowed",
        "error_kind": "validation",
        "error_code": "method_not_allowed",
    }


def test_non_numeric_limit_is_400(client: TestClient) -> None:
    response = client.get("/api/events?limit=abc")
    assert response.status_code == 400 and response.json()["error_code"] == "validation_error"


def test_health_reports_the_contract_fields(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body["ok"] is True and body["status"] == "ok" and body["service"] == "kroma-backend-core"
    assert body["route_count"] == 74 and isinstance(body["started_unix_ms"], int)


def test_openapi_document_and_docs_page_are_served(client: TestClient) -> None:
    spec = client.get("/docs/openapi.json")
    assert spec.status_code == 200 and "/api/projects" in spec.json()["paths"]
    assert client.get("/docs").status_code == 200
