"""The real server over real HTTP: the contract slice of issue 3 end to end."""

from __future__ import annotations

import json
import threading

import httpx

from tests.e2e.conftest import Server


def test_health_and_docs_are_served(server: Server) -> None:
    health = httpx.get(f"{server.url}/health").json()
    assert health["ok"] is True and health["route_count"] == 74
    assert httpx.get(f"{server.url}/docs/openapi.json").json()["info"]["title"] == "Kroma API"


def test_create_then_read_your_write_and_audit_id_is_the_event(server: Server) -> None:
    with httpx.Client(base_url=server.url) as http:
        created = http.post("/api/projects", json={"name": "Moon Comic", "description": "ink"}).json()
        assert created["ok"] is True
        detail = http.get("/api/projects/moon_comic").json()  # immediately visible
        assert detail["project"]["description"] == "ink"
        log = http.get("/api/projects/moon_comic/events").json()
        assert log["events"][0]["event_id"] == created["audit_id"]
        assert log["events"][0]["type"] == "project.created"


def test_storage_updates_round_trip_over_http(server: Server) -> None:
    with httpx.Client(base_url=server.url) as http:
        http.post("/api/projects", json={"name": "S", "slug": "s"})
        put = http.put("/api/projects/s/storage/s3", json={"enabled": True, "bucket": "b"}).json()
        assert put["updated"] == "s3"
        assert http.get("/api/projects/s/storage").json()["storage"]["s3"]["bucket"] == "b"


def test_idempotency_key_replays_first_response_and_appends_nothing(server: Server) -> None:
    with httpx.Client(base_url=server.url) as http:
        headers = {"Idempotency-Key": "create-once"}
        first = http.post("/api/projects", json={"name": "Once"}, headers=headers)
        head = http.get("/api/events?limit=1000").json()["count"]
        again = http.post("/api/projects", json={"name": "Once"}, headers=headers)
        assert again.json() == first.json()
        assert http.get("/api/events?limit=1000").json()["count"] == head
        other = http.post("/api/projects", json={"name": "Other"}, headers=headers)
        assert other.status_code == 422 and other.json()["error_code"] == "idempotency_key_reused"


def test_racing_creates_of_one_slug_by_two_owners_one_wins(server: Server) -> None:
    results: list[httpx.Response] = []

    def create(user: str) -> None:
        body = {"name": "Race", "slug": "race", "username": user}
        results.append(httpx.post(f"{server.url}/api/projects", json=body))

    threads = [threading.Thread(target=create, args=(u,)) for u in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 400]
    loser = next(r for r in results if r.status_code == 400).json()
    assert loser["error"] == "Project slug is already used by another user. Choose a different slug."
    reserved = httpx.get(f"{server.url}/api/events?type=project_slug.reserved").json()
    assert reserved["count"] == 1


def test_sse_stream_resumes_from_last_event_id_and_follows_live(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        http.post("/api/projects", json={"name": "One"})  # positions 1, 2
        seen: list[tuple[str, str]] = []
        with http.stream("GET", "/api/events/stream", headers={"Last-Event-ID": "1"}) as stream:
            event_id = None
            for line in stream.iter_lines():
                if line.startswith("id:"):
                    event_id = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    seen.append((event_id or "", json.loads(line.split(":", 1)[1])["type"]))
                    if len(seen) == 1:
                        http.post("/api/projects", json={"name": "Two"})  # appended while following
                    if len(seen) == 3:
                        break
        assert [s[0] for s in seen] == ["2", "3", "4"]
        assert seen[1][1] == "project.created"


def test_read_models_survive_restart_and_rebuild_matches(start_server, tmp_path) -> None:
    data = tmp_path / "shared"
    first = start_server(data)
    httpx.post(f"{first.url}/api/projects", json={"name": "Persist", "description": "d"})
    httpx.put(f"{first.url}/api/projects/persist/storage/local", json={"base_dir": "art"})
    before = httpx.get(f"{first.url}/api/projects/persist").json()
    first.stop()
    second = start_server(data)
    after = httpx.get(f"{second.url}/api/projects/persist").json()
    assert after["project"] == before["project"] and after["storage"] == before["storage"]


def test_server_stops_promptly_while_an_sse_client_is_connected(server: Server) -> None:
    import time

    with httpx.Client(base_url=server.url, timeout=10) as http, http.stream("GET", "/api/events/stream"):
        assert server.proc is not None
        started = time.monotonic()
        server.proc.terminate()
        server.proc.wait(timeout=4)
        assert time.monotonic() - started < 3
