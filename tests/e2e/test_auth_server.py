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


def test_a_live_stream_ends_when_its_token_is_revoked(start_server) -> None:
    """Auth is checked when a stream opens; a revoked (or expired) token must not keep receiving
    the log over a stream it opened before: the stream ends, and no event from the revocation on
    reaches it."""
    import threading
    import time

    server: Server = start_server(KROMA_API_AUTH_DEV_BYPASS="0")
    with httpx.Client(base_url=server.url, timeout=15) as http:
        root = http.post("/auth/token", json={}).json()["auth_token"]
        r = {"Authorization": f"Bearer {root['token']}"}
        other = http.post("/auth/token", json={}, headers=r).json()["auth_token"]
        head = len(http.get("/api/events", headers=r).json()["events"])
        lines: list[str] = []
        opened = threading.Event()

        def follow() -> None:
            headers = {"Authorization": f"Bearer {other['token']}"}
            with (
                httpx.Client(base_url=server.url, timeout=15) as reader,
                reader.stream("GET", f"/api/events/stream?after={head}", headers=headers) as stream,
            ):
                assert stream.status_code == 200
                opened.set()
                lines.extend(stream.iter_lines())
            lines.append("<closed>")

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        assert opened.wait(10)
        time.sleep(0.3)
        assert http.delete(f"/auth/tokens/{other['id']}", headers=r).status_code == 200
        assert http.post("/api/projects", json={"name": "After"}, headers=r).status_code == 200
        thread.join(10)
        assert not thread.is_alive(), lines
        assert lines[-1] == "<closed>"
        assert not [line for line in lines if line.startswith("event:")], lines
