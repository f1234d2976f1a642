"""The docs page works offline (every asset from this package, no other host), and the OpenAPI
document lists what each route really answers: the contract's 200 (not Litestar's 201), the error
statuses in the contract's shape, the bearer scheme; OPTIONS and 405 name every method."""

from __future__ import annotations

import re

from litestar.testing import TestClient

from kroma.http.docs import ERROR_SCHEMA


def test_the_docs_page_loads_every_asset_from_the_server_itself(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    referenced = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert referenced, page.text
    assert not [url for url in referenced if "//" in url], referenced  # no CDN, no other host
    for url in referenced:
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, url
    assert "SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").text


def test_the_docs_assets_need_no_token(auth_client: TestClient) -> None:
    assert auth_client.get("/docs").status_code == 200
    assert auth_client.get("/docs/assets/swagger-ui.css").status_code == 200


def test_every_operation_documents_its_real_statuses(client: TestClient) -> None:
    document = client.get("/docs/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert "201" not in statuses, (method, path)  # every success is a 200 (contract §1.1)
            assert "500" in statuses, (method, path)
            if path != "/health":
                assert {"200", "400", "401", "404", "503"} <= statuses, (method, path)
                error = operation["responses"]["400"]["content"]["application/json"]["schema"]
                assert error == ERROR_SCHEMA
            if method in ("post", "put", "patch"):
                assert {"413", "422"} <= statuses, (method, path)
    health = document["paths"]["/health"]["get"]
    assert health["security"] == [] and set(health["responses"]) == {"200", "500"}
    assert "429" in document["paths"]["/api/events/stream"]["get"]["responses"]
    assert "202" in document["paths"]["/api/projects/{slug}/runs/trigger"]["post"]["responses"]


def test_options_and_405_list_every_method_of_the_path(client: TestClient) -> None:
    options = client.options("/api/projects")
    assert options.status_code == 204
    assert {m.strip() for m in options.headers["allow"].split(",")} == {"GET", "POST", "OPTIONS"}
    wrong = client.patch("/api/projects")
    assert wrong.status_code == 405
    assert {"GET", "POST"} <= {m.strip() for m in wrong.headers["allow"].split(",")}


def test_json_bodies_keep_the_references_strict_types(client: TestClient) -> None:
    """Litestar would read `0` as false and `"2"` as 2; the reference refused both (the fuzz found it)."""
    client.post("/api/projects", json={"name": "P", "slug": "p"})
    response = client.put("/api/projects/p/storage/s3", json={"enabled": 0})
    assert response.status_code == 400
    assert response.json()["error"] == "Field 'enabled' must be bool | null, not int"
    response = client.post("/api/projects/p/secrets/rotate", json={"force": "true"})
    assert (
        response.status_code == 400
        and response.json()["error"] == "Field 'force' must be bool | null, not str"
    )
    assert client.put("/api/projects/p/storage/s3", json={"enabled": True}).status_code == 200
