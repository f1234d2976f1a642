"""Bounded resources: request bodies (413 in the contract's shape, keyed or not), the writer's queue
(appenders wait rather than grow it), the live-stream slots per token, and the engine's runs in
flight. The SSE limit over a real socket is in tests/e2e/test_proof_server.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from kroma.domain.errors import KromaError
from kroma.events.envelope import NewEvent
from kroma.events.sqlite import SQLiteEventStore
from kroma.http.streams import StreamSlots

LIMIT = 2048


def _too_large(response: Any, limit: int = LIMIT) -> None:
    assert response.status_code == 413, response.text
    assert response.json() == {
        "ok": False,
        "error": f"Request body exceeds the size limit of {limit} bytes",
        "error_kind": "validation",
        "error_code": "payload_too_large",
    }


@pytest.fixture
def small(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(request_max_bytes=LIMIT)


def test_a_json_body_over_the_limit_is_a_413_envelope(small: TestClient) -> None:
    _too_large(small.post("/api/projects", json={"name": "x" * (2 * LIMIT)}))
    assert small.get("/api/projects").json()["count"] == 0


def test_a_keyed_body_over_the_limit_is_a_413_and_is_never_read_whole(small: TestClient) -> None:
    response = small.post(
        "/api/projects", json={"name": "x" * (2 * LIMIT)}, headers={"Idempotency-Key": "big"}
    )
    _too_large(response)
    # The key was not used up: the same key with a body that fits works.
    ok = small.post("/api/projects", json={"name": "Fits"}, headers={"Idempotency-Key": "big"})
    assert ok.status_code == 200, ok.text


def test_a_chunked_body_over_the_limit_is_a_413(small: TestClient) -> None:
    def chunks() -> Any:
        for _ in range(4):
            yield b" " * LIMIT

    response = small.post(
        "/api/projects",
        content=chunks(),
        headers={"content-type": "application/json", "Idempotency-Key": "c"},
    )
    _too_large(response)
    response = small.post("/api/projects", content=chunks(), headers={"content-type": "application/json"})
    _too_large(response)


def test_a_body_within_the_limit_is_served(small: TestClient) -> None:
    assert small.post("/api/projects", json={"name": "x" * (LIMIT // 2)}).status_code == 200


def test_uploads_keep_their_own_larger_limit(make_client: Callable[..., TestClient]) -> None:
    """The upload route reads its body itself under `upload_max_bytes`, not the JSON limit."""
    client = make_client(request_max_bytes=LIMIT, upload_max_bytes=4 * LIMIT)
    client.post("/api/projects", json={"name": "Up", "slug": "up"})
    too_big = client.post(
        "/api/projects/up/assets", files={"file": ("a.png", b"\0" * (8 * LIMIT), "image/png")}
    )
    assert too_big.status_code == 413 and too_big.json()["error_code"] == "payload_too_large"
    fits = client.post("/api/projects/up/assets", files={"file": ("a.png", b"\0" * (3 * LIMIT), "image/png")})
    assert fits.status_code == 400  # past the size check: not an image


def test_a_405_carries_the_allow_header(client: TestClient) -> None:
    response = client.delete("/api/projects")
    assert response.status_code == 405 and response.json()["error_code"] == "method_not_allowed"
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allowed and "DELETE" not in allowed


def test_list_limits_are_clamped_to_their_maximum(client: TestClient, project: dict[str, Any]) -> None:
    for path in ("/api/events", f"/api/projects/{project['slug']}/events", "/api/audit"):
        assert client.get(f"{path}?limit=1000000").status_code == 200
    assert client.get(f"/api/projects/{project['slug']}/runs?limit=99999999999").status_code == 200


# -- the writer's queue --------------------------------------------------------------------------------


async def test_appenders_wait_when_the_writer_queue_is_full(tmp_path: Path) -> None:
    store = SQLiteEventStore(str(tmp_path / "events.db"))
    store.max_pending = 4
    await store.open()
    batches: list[int] = []
    write = store._write

    async def recording(batch: list[Any]) -> list[Any]:
        batches.append(len(batch))
        await asyncio.sleep(0.01)  # a slow disk: the queue fills while a batch is written
        return await write(batch)

    store._write = recording  # type: ignore[method-assign]
    try:
        results = await asyncio.gather(
            *(store.append([NewEvent(f"s{i}", "thing.happened", {"i": i})]) for i in range(200))
        )
    finally:
        await store.close()
    assert sorted(r.first_position for r in results) == list(range(1, 201))  # nothing lost, no gap
    assert max(batches) <= 4  # never more than the bound was waiting at once
    assert len(batches) >= 50


# -- live streams per token ------------------------------------------------------------------------------


def test_stream_slots_refuse_one_more_than_the_limit_with_a_429() -> None:
    slots = StreamSlots(2)
    first, _second = slots.acquire("t1"), slots.acquire("t1")
    with pytest.raises(KromaError) as info:
        slots.acquire("t1")
    assert (info.value.status, info.value.kind, info.value.code) == (429, "policy", "too_many_streams")
    assert slots.acquire("t2") is not None  # another token has its own slots
    first.release()
    first.release()  # idempotent: the stream's end and the response's background task both call it
    assert slots.open_count("t1") == 1
    slots.acquire("t1")
