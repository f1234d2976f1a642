"""Interrupted syncs resume (issue 13): uploads recorded before the interruption are not sent again,
and a large file's multipart upload goes on from the parts S3 already stored. Multipart uploads run
against moto with a small part size (S3's 5 MiB minimum lowered for the test server only)."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import moto.s3.models
import pytest
from litestar.testing import TestClient

from kroma.storage.sync import SyncFailed, sync_project
from tests.http.log_seed import services_of
from tests.storage.conftest import BASE, PREFIX, objects, s3_client

SYNC = f"{BASE}/storage/s3/sync"
KIB = 1024


class Interrupted(Exception):
    pass


def interrupt_after(count: int, kind: str) -> Callable[[str, int], None]:
    """A progress callback that stops the sync at its `count`-th report of `kind`."""
    seen = 0

    def progress(reported: str, _amount: int) -> None:
        nonlocal seen
        if reported == kind:
            seen += 1
            if seen == count:
                raise Interrupted(f"stopped after {count} {kind}")

    return progress


def run_sync(client: TestClient, project_id: str, **options: Any) -> Any:
    services = services_of(client)
    return client.blocking_portal.call(functools.partial(sync_project, services, project_id, **options))


def synced(client: TestClient) -> list[dict[str, Any]]:
    return [e["data"] for e in client.get("/api/events?limit=1000&type=asset.synced").json()["events"]]


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 1 * KIB)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    """One upload at a time, files over 100 KiB in 64 KiB parts."""
    return make_client(s3_concurrency=1, s3_multipart_threshold=100 * KIB, s3_multipart_chunk=64 * KIB)


def test_an_interrupted_sync_resumes_with_the_files_not_yet_sent(
    client: TestClient, s3_project: dict, project_root: Path, moto_url: str
) -> None:
    names = [f"outputs/f{i}.png" for i in range(5)]
    for i, name in enumerate(names):
        (project_root / "outputs").mkdir(exist_ok=True)
        (project_root / name).write_bytes(bytes([i]) * (100 + i))

    with pytest.raises(SyncFailed) as failed:
        run_sync(client, s3_project["id"], progress=interrupt_after(2, "file"))
    assert failed.value.result.uploaded == 2
    recorded = synced(client)
    assert [d["path"] for d in recorded] == names[:2]
    ends = client.get("/api/events?limit=1000&type=storage_sync.failed").json()["events"]
    assert [(e["data"]["uploaded"], e["data"]["error_code"]) for e in ends] == [(2, "s3_error")]
    base = f"{PREFIX}/{s3_project['id']}/"
    assert set(objects(moto_url, s3_project["bucket"])) == {base + n for n in names[:2]}

    body = client.post(SYNC, json={}).json()["sync"]
    assert (body["uploaded"], body["skipped"]) == (3, 2)
    assert [f["path"] for f in body["files"]] == names[2:]
    assert [d["path"] for d in synced(client)] == names
    assert set(objects(moto_url, s3_project["bucket"])) == {base + n for n in names}


def test_large_files_go_up_in_parts_and_an_interrupted_upload_goes_on_from_its_stored_parts(
    client: TestClient, s3_project: dict, project_root: Path, moto_url: str, small_parts: None
) -> None:
    data = os.urandom(300 * KIB)  # 5 parts: 4 x 64 KiB + 44 KiB
    big = project_root / "outputs" / "big.tif"
    big.parent.mkdir(parents=True)
    big.write_bytes(data)

    with pytest.raises(SyncFailed):
        run_sync(client, s3_project["id"], progress=interrupt_after(2, "bytes"))  # after 2 parts
    assert synced(client) == []  # the file is not in S3 yet: nothing recorded
    key = f"{PREFIX}/{s3_project['id']}/outputs/big.tif"
    s3 = s3_client(moto_url)
    pending = s3.list_multipart_uploads(Bucket=s3_project["bucket"])["Uploads"]
    assert [u["Key"] for u in pending] == [key]
    assert len(s3.list_parts(Bucket=s3_project["bucket"], Key=key, UploadId=pending[0]["UploadId"])["Parts"]) == 2

    body = client.post(SYNC, json={}).json()["sync"]
    assert body["uploaded"] == 1 and body["bytes"] == len(data)
    [record] = synced(client)
    assert (record["multipart"], record["parts"], record["reused_parts"]) == (True, 5, 2)
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["size"] == len(data)
    assert objects(moto_url, s3_project["bucket"])[key] == data
    assert s3.list_multipart_uploads(Bucket=s3_project["bucket"]).get("Uploads", []) == []
    assert client.post(SYNC, json={}).json()["sync"]["uploaded"] == 0


def test_a_changed_large_file_reuses_only_the_parts_that_still_match(
    client: TestClient, s3_project: dict, project_root: Path, moto_url: str, small_parts: None
) -> None:
    data = bytearray(os.urandom(200 * KIB))  # 4 parts
    big = project_root / "big.bin"
    big.write_bytes(bytes(data))
    with pytest.raises(SyncFailed):
        run_sync(client, s3_project["id"], progress=interrupt_after(3, "bytes"))
    data[0:10] = b"0123456789"  # part 1 changes; parts 2-3 as stored
    big.write_bytes(bytes(data))
    body = client.post(SYNC, json={}).json()["sync"]
    assert body["uploaded"] == 1
    [record] = synced(client)
    assert (record["parts"], record["reused_parts"]) == (4, 2)
    assert objects(moto_url, s3_project["bucket"])[f"{PREFIX}/{s3_project['id']}/big.bin"] == bytes(data)
