"""`POST /api/projects/{slug}/assets`: multipart image uploads into `<project root>/inputs/`.

Every `file` part must decode as an image (else 400, nothing written, no event); names are
sanitized and never overwrite (a numbered suffix instead); the size limit (settings
`upload_max_bytes`) answers 413 in the contract's error shape; each upload appends
`asset.uploaded` and answers `{ok, assets, audit_id}`; the `rel_path` works as a scene_ref."""

from __future__ import annotations

import gc
import hashlib
import io
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from PIL import Image

from kroma.config import Settings
from kroma.http.app import create_app
from tests.http.log_seed import assert_error

URL = "/api/projects/demo/assets"
ASSET_FIELDS = {
    "id", "project_id", "kind", "asset_kind", "storage_uri", "rel_path", "storage_backend", "mime_type", "width",
    "height", "sha256", "run_id", "job_id", "candidate_id", "metadata_json", "created_at",
}
NOT_MULTIPART = "Request must be multipart/form-data with one or more 'file' parts"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    """One project for cases that only add uniquely named files (one app start for all of them)."""
    tmp_path = tmp_path_factory.mktemp("shared")
    settings = Settings(data_dir=str(tmp_path / "data"), workspace_root=str(tmp_path / "app"), auth_dev_bypass=True)
    with TestClient(create_app(settings)) as client:
        assert client.post("/api/projects", json={"name": "Demo", "slug": "demo"}).status_code == 200
        yield client, tmp_path


def project_root(tmp_path: Path) -> Path:
    return tmp_path / "app" / "var" / "projects" / "demo"


def image_bytes(color: str = "red", size: tuple[int, int] = (8, 6), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def part(name: str, data: bytes, mime: str = "image/png") -> tuple[str, tuple[str, bytes, str]]:
    return ("file", (name, data, mime))


def upload(client: TestClient, *parts: tuple[str, tuple[str, bytes, str]], url: str = URL) -> dict[str, Any]:
    response = client.post(url, files=list(parts))
    assert response.status_code == 200, response.text
    return response.json()


def event_count(client: TestClient) -> int:
    return client.get("/api/events", params={"limit": 1000}).json()["count"]


def stored(tmp_path: Path) -> list[str]:
    inputs = project_root(tmp_path) / "inputs"
    return sorted(p.name for p in inputs.iterdir()) if inputs.exists() else []


def test_one_image_is_stored_recorded_and_answered(client: TestClient, project: dict, tmp_path: Path) -> None:
    data = image_bytes(size=(12, 7))
    answer = upload(client, part("photo.png", data))
    assert set(answer) == {"ok", "assets", "audit_id"}
    [asset] = answer["assets"]
    assert set(asset) == ASSET_FIELDS
    assert (asset["kind"], asset["asset_kind"], asset["rel_path"]) == ("upload", "upload", "inputs/photo.png")
    assert asset["project_id"] == project["id"]
    assert asset["storage_uri"] == "var/projects/demo/inputs/photo.png"
    assert (asset["mime_type"], asset["width"], asset["height"]) == ("image/png", 12, 7)
    assert asset["sha256"] == hashlib.sha256(data).hexdigest()
    assert asset["metadata_json"]["original_filename"] == "photo.png"
    assert (project_root(tmp_path) / "inputs" / "photo.png").read_bytes() == data

    event = client.get(f"/api/events/{answer['audit_id']}").json()["event"]
    assert event["type"] == "asset.uploaded"
    assert event["data"]["id"] == asset["id"]
    assert event["data"]["project_id"] == project["id"]

    listed = client.get(URL).json()
    assert (listed["count"], listed["assets"]) == (1, [asset])
    assert client.get(f"{URL}/{asset['id']}").json()["asset"] == asset


def test_several_files_in_one_request_are_one_batch(client: TestClient, project: dict, tmp_path: Path) -> None:
    jpeg = image_bytes("blue", fmt="JPEG")
    before = client.get("/api/events", params={"limit": 1000}).json()["next_after"]
    answer = upload(client, part("a.png", image_bytes()), part("b.jpg", jpeg, "image/jpeg"), part("c.webp", image_bytes(fmt="WEBP"), "image/webp"))
    assert [a["rel_path"] for a in answer["assets"]] == ["inputs/a.png", "inputs/b.jpg", "inputs/c.webp"]
    assert [a["mime_type"] for a in answer["assets"]] == ["image/png", "image/jpeg", "image/webp"]
    assert len({a["id"] for a in answer["assets"]}) == 3
    assert (project_root(tmp_path) / "inputs" / "b.jpg").read_bytes() == jpeg

    appended = client.get("/api/events", params={"after": before}).json()["events"]
    assert [e["type"] for e in appended] == ["asset.uploaded"] * 3
    assert [e["data"]["id"] for e in appended] == [a["id"] for a in answer["assets"]]
    assert [e["position"] for e in appended] == [before + 1, before + 2, before + 3]
    assert len({e["metadata"]["correlation_id"] for e in appended}) == 1
    assert len({e["recorded_at"] for e in appended}) == 1, "one append records one timestamp"
    assert appended[0]["event_id"] == answer["audit_id"]
    assert client.get(URL).json()["count"] == 3


@pytest.mark.parametrize(
    ("name", "stored_as"),
    [
        ("My Photo (1).png", "My_Photo_1_.png"),
        ("../../escape.png", "escape.png"),
        ("C:\\Users\\me\\pic.png", "pic.png"),
        (".hidden.png", "hidden.png"),
        ("ÜBER.png", "_BER.png"),
        ("scene.v2.final.png", "scene.v2.final.png"),
        ("noextension", "noextension.png"),
    ],
)
def test_file_names_are_sanitized(shared: tuple[TestClient, Path], name: str, stored_as: str) -> None:
    client, tmp_path = shared
    before = stored(tmp_path)
    asset = upload(client, part(name, image_bytes()))["assets"][0]
    assert asset["rel_path"] == f"inputs/{stored_as}"
    assert re.fullmatch(r"inputs/[A-Za-z0-9_-][A-Za-z0-9._-]*", asset["rel_path"])
    assert stored(tmp_path) == sorted([*before, stored_as])
    assert sorted(p.name for p in project_root(tmp_path).iterdir()) == ["inputs"], "nothing outside inputs/"
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != "" and "data" not in p.parts]
    assert all(p.parent == project_root(tmp_path) / "inputs" for p in written), written


def test_the_extension_names_the_decoded_format(client: TestClient, project: dict) -> None:
    asset = upload(client, part("photo.png", image_bytes(fmt="JPEG"), "image/png"))["assets"][0]
    assert (asset["rel_path"], asset["mime_type"]) == ("inputs/photo.jpg", "image/jpeg")
    asset = upload(client, part("photo.JPEG", image_bytes(fmt="JPEG"), "image/jpeg"))["assets"][0]
    assert asset["rel_path"] == "inputs/photo.JPEG"


def test_an_existing_name_gets_a_numbered_suffix_never_an_overwrite(
    client: TestClient, project: dict, tmp_path: Path
) -> None:
    red, blue, green, white = (image_bytes(c) for c in ("red", "blue", "green", "white"))
    assert upload(client, part("a.png", red))["assets"][0]["rel_path"] == "inputs/a.png"
    assert upload(client, part("a.png", blue))["assets"][0]["rel_path"] == "inputs/a-1.png"
    both = upload(client, part("a.png", green), part("a.png", white))["assets"]
    assert [a["rel_path"] for a in both] == ["inputs/a-2.png", "inputs/a-3.png"]
    inputs = project_root(tmp_path) / "inputs"
    assert [(inputs / n).read_bytes() for n in ("a.png", "a-1.png", "a-2.png", "a-3.png")] == [red, blue, green, white]


def test_not_an_image_is_400_with_nothing_written_and_no_event(client: TestClient, project: dict, tmp_path: Path) -> None:
    before = event_count(client)
    response = client.post(URL, files=[part("notes.png", b"plain text, not pixels")])
    assert response.status_code == 400
    body = response.json()
    assert (body["ok"], body["error_kind"], body["error_code"]) == (False, "validation", "validation_error")
    assert body["error"].startswith("File 'notes.png' is not an image")

    # one bad part refuses the whole request, the good parts included
    response = client.post(URL, files=[part("good.png", image_bytes()), part("bad.png", b"\x89PNG\r\n\x1a\nbroken")])
    assert response.status_code == 400
    assert response.json()["error"].startswith("File 'bad.png' is not an image")
    assert event_count(client) == before
    assert stored(tmp_path) == []
    assert client.get(URL).json()["count"] == 0


def test_the_size_limit_is_413_in_the_contract_shape(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    client = make_client(upload_max_bytes=4096)
    client.post("/api/projects", json={"name": "Demo", "slug": "demo"})
    before = event_count(client)
    big = image_bytes(size=(64, 64), fmt="BMP")
    assert len(big) > 4096
    response = client.post(URL, files=[part("big.bmp", big, "image/bmp")])
    assert_error(response, 413, "Upload exceeds the size limit of 4096 bytes", "payload_too_large")
    assert event_count(client) == before
    assert stored(tmp_path) == []

    small = upload(client, part("small.png", image_bytes()))["assets"][0]
    assert small["rel_path"] == "inputs/small.png"


def test_the_limit_counts_the_whole_request(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    client = make_client(upload_max_bytes=3000)
    client.post("/api/projects", json={"name": "Demo", "slug": "demo"})
    one = image_bytes(size=(24, 24), fmt="BMP")
    assert 1000 < len(one) < 3000 < 2 * len(one)
    assert client.post(URL, files=[part("a.bmp", one, "image/bmp")]).status_code == 200
    response = client.post(URL, files=[part("b.bmp", one, "image/bmp"), part("c.bmp", one, "image/bmp")])
    assert response.status_code == 413
    assert stored(tmp_path) == ["a.bmp"]


@pytest.mark.parametrize(
    "request_kwargs",
    [
        pytest.param({"json": {"file": "a.png"}}, id="json"),
        pytest.param({"content": b"raw", "headers": {"content-type": "image/png"}}, id="raw image type"),
        pytest.param({"content": b"--x--", "headers": {"content-type": "multipart/form-data"}}, id="no boundary"),
    ],
)
def test_a_body_that_is_not_multipart_is_400(shared: tuple[TestClient, Path], request_kwargs: dict[str, Any]) -> None:
    client, tmp_path = shared
    before, files = event_count(client), stored(tmp_path)
    assert_error(client.post(URL, **request_kwargs), 400, NOT_MULTIPART)
    assert event_count(client) == before
    assert stored(tmp_path) == files


def multipart(*fields: tuple[str, str]) -> tuple[bytes, dict[str, str]]:
    """A multipart body of plain text fields only (httpx sends such forms url-encoded)."""
    boundary = "kroma-test-boundary"
    chunks = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields
    ]
    body = "".join(chunks) + f"--{boundary}--\r\n"
    return body.encode(), {"content-type": f"multipart/form-data; boundary={boundary}"}


def test_a_multipart_body_without_a_file_part_is_400(client: TestClient, project: dict, tmp_path: Path) -> None:
    content, headers = multipart(("note", "hello"))
    assert_error(client.post(URL, content=content, headers=headers), 400, "Field 'file' is required")
    content, headers = multipart(("file", "not a file"))
    assert_error(client.post(URL, content=content, headers=headers), 400, "Field 'file' must be a file")
    assert not project_root(tmp_path).exists()


def test_file_parts_under_other_names_are_closed(client: TestClient, project: dict) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response = client.post(URL, files=[("image", ("a.png", image_bytes(), "image/png"))])
        gc.collect()
    assert_error(response, 400, "Field 'file' is required")
    leaked = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaked == []


def test_a_missing_project_is_404_and_writes_nothing(client: TestClient, tmp_path: Path) -> None:
    response = client.post("/api/projects/nope/assets", files=[part("a.png", image_bytes())])
    assert_error(response, 404, "Project not found")
    assert not (tmp_path / "app" / "var" / "projects" / "nope").exists()
    assert event_count(client) == 0


def test_rel_path_works_as_a_scene_ref_in_a_dry_run(client: TestClient, project: dict, tmp_path: Path) -> None:
    scene, style = upload(client, part("Scene 01.png", image_bytes()), part("ink.png", image_bytes("black")))["assets"]
    body = {"scene_refs": [scene["rel_path"]], "style_refs": [style["rel_path"]]}
    response = client.post("/api/projects/demo/runs/trigger", json=body)
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    log = client.get(f"/api/projects/demo/runs/{run_id}/log").json()
    assert [(j["id"], j["input_images"]) for j in log["jobs"]] == [
        ("style_1_scene_01", ["inputs/Scene_01.png", "inputs/ink.png"])
    ]
    planned = client.get("/api/events", params={"type": "job.planned"}).json()["events"][0]["data"]
    root = project_root(tmp_path)
    assert planned["input_paths"] == [str(root / "inputs" / "Scene_01.png"), str(root / "inputs" / "ink.png")]
