"""Auth on (the default), over real HTTP: first-token bootstrap, bearer use, 401/403."""

from __future__ import annotations

import httpx

from tests.e2e.conftest import Server


def test_first_token_bootstrap_then_bearer_everywhere(start_server) -> None:
    server: Server = start_server(KROMA_API_AUTH_DEV_BYPASS="0")
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/health").status_code == 200  # open
        first = http.post("/auth/token", json={"label": "laptop"})
        assert first.status_code == 200
        token = first.json()["auth_token"]["token"]
        assert token.startswith("kroma_") and len(token) == 70
        again = http.post("/auth/token", json={})
        assert again.status_code == 401 and again.json()["error"] == "Missing Authorization: Bearer token"

        bearer = {"Authorization": f"Bearer {token}"}
        assert http.get("/api/projects").status_code == 401
        created = http.post("/api/projects", json={"name": "Secure"}, headers=bearer)
        assert created.status_code == 200
        assert http.get("/api/projects/secure", headers=bearer).status_code == 200
        nowhere = http.get("/api/projects/nowhere", headers=bearer)
        assert nowhere.status_code == 403 and nowhere.json()["error_code"] == "forbidden"

        events = http.get("/api/events", headers=bearer).json()["events"]
        created_event = next(e for e in events if e["type"] == "project.created")
        assert created_event["metadata"]["token_id"] == first.json()["auth_token"]["id"]
        assert http.get("/api/events").status_code == 401
        assert token not in (server.data_dir / "events.db").read_bytes().decode("latin-1")
