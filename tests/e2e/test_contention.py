"""Many clients writing one project at once over real HTTP: no request fails for contention alone,
no update is lost, no duplicate is accepted, and every client reads its own writes."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx

from tests.e2e.conftest import Server

CLIENTS = 64


async def _fan_out(server: Server, bodies: list[dict[str, Any]], path: str) -> list[httpx.Response]:
    """POST every body from CLIENTS clients at once, each with a connection of its own and its
    share of the bodies in turn; the answers come back in the bodies' order."""
    answers: list[httpx.Response | None] = [None] * len(bodies)

    async def client(first: int) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            for i in range(first, len(bodies), CLIENTS):
                answers[i] = await http.post(path, json=bodies[i])

    await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    return [a for a in answers if a is not None]


async def _setup(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        created = await http.post("/api/projects", json={"name": "Crowd", "slug": "crowd"})
    assert created.status_code == 200, created.text


async def _all_events(http: httpx.AsyncClient, path: str, event_type: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = (await http.get(path, params={"type": event_type, "after": after, "limit": 500})).json()
        if not page["events"]:
            return events
        events += page["events"]
        after = page["next_after"]


async def test_2000_character_creates_from_64_clients_on_one_project_all_succeed(server: Server) -> None:
    await _setup(server)
    names = [f"Hero {i}" for i in range(2000)]
    responses = await _fan_out(server, [{"name": n} for n in names], "/api/projects/crowd/characters")
    assert Counter(r.status_code for r in responses) == {200: 2000}, [r.text for r in responses[:3]]
    created = {r.json()["character"]["id"]: r.json()["character"]["name"] for r in responses}
    assert sorted(created.values()) == sorted(names)  # each answer is its own record
    audit_ids = {r.json()["audit_id"] for r in responses}
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        listed = (await http.get("/api/projects/crowd/characters")).json()
        events = await _all_events(http, "/api/projects/crowd/events", "character.created")
    assert listed["count"] == 2000  # none lost
    assert {c["id"]: c["name"] for c in listed["characters"]} == created
    assert {e["event_id"] for e in events} == audit_ids and len(events) == 2000


async def test_racing_creates_of_the_same_names_admit_exactly_one_of_each(server: Server) -> None:
    await _setup(server)
    bodies = [{"name": f"Twin {i % 25}"} for i in range(500)]  # 20 clients want each of 25 names
    responses = await _fan_out(server, bodies, "/api/projects/crowd/characters")
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 25, 400: 475}, statuses
    refused = {r.json()["error"] for r in responses if r.status_code == 400}
    assert refused == {"Character name already exists"}
    accepted = Counter(r.json()["character"]["name"] for r in responses if r.status_code == 200)
    assert accepted == {f"Twin {i}": 1 for i in range(25)}
    async with httpx.AsyncClient(base_url=server.url) as http:
        listed = (await http.get("/api/projects/crowd/characters")).json()
    assert listed["count"] == 25


async def test_every_client_reads_its_own_writes_while_others_write(server: Server) -> None:
    await _setup(server)

    async def client(n: int) -> list[str]:
        misses = []
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            for i in range(8):
                body = {"name": f"Guide {n}-{i}", "instructions": "ink"}
                made = (await http.post("/api/projects/crowd/style-guides", json=body)).json()
                one = await http.get(f"/api/projects/crowd/style-guides/{made['style_guide']['id']}")
                if one.status_code != 200 or one.json()["style_guide"]["name"] != body["name"]:
                    misses.append(f"{body['name']}: {one.status_code}")
                listed = (await http.get("/api/projects/crowd/style-guides")).json()
                if made["style_guide"]["id"] not in {g["id"] for g in listed["style_guides"]}:
                    misses.append(f"{body['name']}: not listed")
        return misses

    results = await asyncio.gather(*(client(n) for n in range(32)))
    async with httpx.AsyncClient(base_url=server.url) as http:
        listed = (await http.get("/api/projects/crowd/style-guides")).json()
    assert [m for misses in results for m in misses] == []
    assert listed["count"] == 32 * 8
