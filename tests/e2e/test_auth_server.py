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


def test_no_secret_or_token_in_any_file_or_log_line(start_server, tmp_path) -> None:
    """A secret with a known value is set (after requests carrying it that fail at every stage),
    rotated and deleted on a real server with auth on; then neither the value (raw, hex, base64)
    nor any token is in any file of the data folder, in the server's log, or in any response, and
    `kroma events verify` still passes."""
    import base64
    import subprocess
    import sys
    import uuid

    value = f"sk-e2e-{uuid.uuid4().hex}{uuid.uuid4().hex}"
    server: Server = start_server(KROMA_API_AUTH_DEV_BYPASS="0", KROMA_LOG_LEVEL="debug")
    seen: list[str] = []
    with httpx.Client(base_url=server.url) as http:
        root = http.post("/auth/token", json={}).json()["auth_token"]["token"]
        other = http.post("/auth/token", json={}, headers={"Authorization": f"Bearer {root}"})
        tokens = [root, other.json()["auth_token"]["token"]]
        h = {"Authorization": f"Bearer {root}"}
        secrets = "/api/projects/demo/secrets"
        body = {"provider_code": "openai", "secret_name": "api_key", "secret_value": value}
        calls = [
            ("POST", "/api/projects", {"json": {"name": "Demo", "slug": "demo"}, "headers": h}),
            ("POST", secrets, {"json": body}),  # 401
            ("POST", secrets, {"json": body, "headers": {"Authorization": f"Bearer {value}"}}),  # 401
            ("POST", "/api/projects/nope/secrets", {"json": body, "headers": h}),  # 403
            ("POST", secrets, {"json": {**body, "provider_code": 7}, "headers": h}),  # 400 type
            ("POST", secrets, {"json": {**body, "secret_name": " "}, "headers": h}),  # 400
            (
                "POST",
                secrets,
                {
                    "content": f'{{"secret_value": "{value}"',
                    "headers": {**h, "content-type": "application/json"},
                },
            ),
            ("POST", secrets, {"json": body, "headers": {**h, "Idempotency-Key": "k"}}),
            (
                "POST",
                secrets,
                {"json": {**body, "secret_name": "x"}, "headers": {**h, "Idempotency-Key": "k"}},
            ),  # 422
            ("POST", f"{secrets}/rotate", {"json": {"force": True}, "headers": h}),
            ("GET", f"{secrets}/rotation-status", {"headers": h}),
            ("GET", secrets, {"headers": h}),
            ("GET", "/api/projects/demo/bootstrap-prompt", {"headers": h}),
            ("DELETE", f"{secrets}/OpenAI/api_key", {"headers": h}),
            ("GET", "/api/events", {"headers": h}),
            ("GET", "/api/audit", {"headers": h}),
            ("GET", "/auth/tokens", {"headers": h}),
        ]
        for method, path, kwargs in calls:
            seen.append(http.request(method, path, **kwargs).text)
    server.stop()

    needles = {value.encode(), value.encode().hex().encode()}
    needles |= {enc(value.encode()).rstrip(b"=") for enc in (base64.b64encode, base64.urlsafe_b64encode)}
    needles |= {t.encode() for t in tokens} | {t[12:].encode() for t in tokens}
    hits = []
    for path in sorted([*server.data_dir.rglob("*"), server.log]):
        if path.is_file():
            blob = path.read_bytes()
            hits += [f"{path.name}: {n[:16]!r}" for n in needles if n in blob]
    assert hits == []
    for text in seen:
        assert value not in text and not any(t in text for t in tokens), text
    assert "Internal server error" not in "".join(seen)

    verify = subprocess.run(
        [sys.executable, "-m", "kroma.cli", "events", "verify", "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr
    assert "hash chain intact" in verify.stdout


def test_cli_tokens_against_the_folder_of_a_running_server(start_server) -> None:
    """`kroma tokens create|list|revoke` on the data folder a server is running on: the server
    honours a CLI-created token at once (and the bootstrap closes), the CLI lists tokens the
    server created, and a CLI revoke is refused by the server."""
    import json
    import subprocess
    import sys

    server: Server = start_server(KROMA_API_AUTH_DEV_BYPASS="0")

    def kroma(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "kroma.cli", *args, "--data-dir", str(server.data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done

    token = kroma("tokens", "create", "--label", "cli").stdout.strip()
    with httpx.Client(base_url=server.url) as http:
        h = {"Authorization": f"Bearer {token}"}
        assert http.get("/auth/tokens", headers=h).status_code == 200
        assert http.post("/auth/token", json={}).status_code == 401  # an active token exists now
        made = http.post("/auth/token", json={"label": "srv"}, headers=h).json()["auth_token"]

        listed = json.loads(kroma("tokens", "list", "--json").stdout)
        assert [t["label"] for t in listed] == ["srv", "cli"]
        assert token not in json.dumps(listed) and made["token"] not in json.dumps(listed)

        kroma("tokens", "revoke", made["id"])
        refused = http.get("/auth/tokens", headers={"Authorization": f"Bearer {made['token']}"})
        assert refused.status_code == 401 and refused.json()["error"] == "Invalid or expired token"
        kroma("tokens", "revoke", made["id"])  # idempotent
        revoked = http.get("/auth/tokens", headers=h).json()["auth_tokens"]
        assert [t["active"] for t in revoked] == [False, True]
