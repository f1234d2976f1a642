"""OpenAIProvider against a real HTTP server (tests/fakes/openai_server.py) through real httpx:
the §4.4 request shape, value resolution, the verbatim errors, and the retry policy."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from PIL import Image

from kroma.engine.providers.base import GenerationRequest, ProviderError
from kroma.engine.providers.openai import (
    OpenAIProvider,
    OpenAIProviderError,
    mime_type_for,
    parse_retry_after,
)
from tests.fakes.openai_server import FakeOpenAI, png_bytes

KEY = "sk-test-0123456789abcdefSECRET"
SCENE_PNG = png_bytes((6, 4), (200, 30, 30), "RGB")
FIELD_ORDER = ["model", "size", "quality", "prompt", "output_format", "input_fidelity"]


class RecordingSleep:
    """The injected sleep: records the delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as server:
        yield server


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def scene(tmp_path: Path) -> str:
    path = tmp_path / "scene.png"
    path.write_bytes(SCENE_PNG)
    return str(path)


@pytest.fixture
def style_jpg(tmp_path: Path) -> str:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 200, 10)).save(out, format="JPEG")
    path = tmp_path / "style ref.JPG"
    path.write_bytes(out.getvalue())
    return str(path)


def provider(fake: FakeOpenAI, sleep: RecordingSleep, **overrides: Any) -> OpenAIProvider:
    options: dict[str, Any] = {
        "base_url": fake.base_url,
        "environ": {},
        "sleep": sleep,
        "jitter": 0.0,
        "timeout": 2.0,
        "connect_timeout": 1.0,
    }
    options.update(overrides)
    return OpenAIProvider(KEY, **options)


def request(
    *images: str, prompt: str = "a cat, ink style", seed: int = 7, **values: Any
) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, input_images=images, seed=seed, **values)


async def failure(prov: OpenAIProvider, req: GenerationRequest) -> OpenAIProviderError:
    with pytest.raises(OpenAIProviderError) as caught:
        await prov.generate(req)
    assert isinstance(caught.value, ProviderError)
    assert KEY not in caught.value.message and KEY not in str(caught.value)
    return caught.value


# --- success: the request is §4.4's, field for field ---------------------------------------------


async def test_success_sends_the_contract_request_and_returns_the_png(
    fake: FakeOpenAI, sleep: RecordingSleep, scene: str, style_jpg: str, tmp_path: Path
) -> None:
    webp = tmp_path / "ref.webp"
    webp.write_bytes(b"RIFF....WEBP")  # the provider sends bytes as they are; no decoding
    async with provider(fake, sleep) as prov:
        result = await prov.generate(request(scene, style_jpg, str(webp), seed=42))

    [sent] = fake.requests
    assert sent.method == "POST" and sent.path == "/v1/images/edits"
    assert sent.authorization == f"Bearer {KEY}"
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert sent.field_names == [*FIELD_ORDER, "image[]", "image[]", "image[]"]
    assert sent.fields == [
        ("model", "gpt-image-1"),
        ("size", "1024x1536"),
        ("quality", "high"),
        ("prompt", "a cat, ink style"),
        ("output_format", "png"),
        ("input_fidelity", "high"),
    ]
    assert "n" not in sent.form
    assert [(f.name, f.filename, f.content_type) for f in sent.files] == [
        ("image[]", "scene.png", "image/png"),
        ("image[]", "style ref.JPG", "image/jpeg"),
        ("image[]", "ref.webp", "image/webp"),
    ]
    assert sent.files[0].data == SCENE_PNG
    assert sent.files[2].size == len(b"RIFF....WEBP")

    with Image.open(io.BytesIO(result.image)) as image:  # the fake answers the scene in grayscale
        assert (image.format, image.mode, image.size) == ("PNG", "L", (6, 4))
    assert result.provider == "openai" and prov.code == "openai"
    assert (result.model, result.size, result.quality) == ("gpt-image-1", "1024x1536", "high")
    assert result.seed == 42
    assert result.request_id is not None and result.request_id == sent.request_id
    assert result.request_id.startswith("req_fake_")
    assert result.attempts == 1
    assert sleep.delays == []
    assert {k: v for k, v in result.parameters.items() if k != "usage"} == {
        "model": "gpt-image-1",
        "size": "1024x1536",
        "quality": "high",
        "output_format": "png",
        "input_fidelity": "high",
        "input_images": 3,
    }
    assert result.parameters["usage"]["total_tokens"] == 150  # kept for pricing when returned


@pytest.mark.parametrize(
    ("name", "mime"),
    [
        ("a.png", "image/png"),
        ("a.PNG", "image/png"),
        ("a.jpg", "image/jpeg"),
        ("a.jpeg", "image/jpeg"),
        ("a.webp", "image/webp"),
        ("a.bmp", "image/bmp"),
        ("a.tif", "image/tiff"),
        ("a.tiff", "image/tiff"),
        ("a.gif", "image/gif"),
        ("a.psd", "application/octet-stream"),
        ("noext", "application/octet-stream"),
    ],
)
def test_mime_type_by_extension_follows_the_contract_table(name: str, mime: str) -> None:
    assert mime_type_for(f"/x/{name}") == mime


# --- model / size / quality resolution -----------------------------------------------------------


def test_resolution_defaults_when_nothing_is_configured() -> None:
    prov = OpenAIProvider(KEY, environ={})
    assert prov.resolve(request("x.png")) == ("gpt-image-1", "1024x1536", "high")


def test_resolution_environment_beats_defaults_and_blank_counts_as_unset() -> None:
    env = {
        "OPENAI_IMAGE_MODEL": "gpt-image-1.5",
        "OPENAI_IMAGE_SIZE": "768x1152",
        "OPENAI_IMAGE_QUALITY": " ",
    }
    prov = OpenAIProvider(KEY, environ=env)
    assert prov.resolve(request("x.png")) == ("gpt-image-1.5", "768x1152", "high")


def test_resolution_constructor_beats_environment_and_request_beats_all() -> None:
    env = {"OPENAI_IMAGE_MODEL": "env-model", "OPENAI_IMAGE_SIZE": "1x1", "OPENAI_IMAGE_QUALITY": "low"}
    prov = OpenAIProvider(KEY, environ=env, model="ctor-model", quality="medium")
    assert prov.resolve(request("x.png")) == ("ctor-model", "1x1", "medium")
    assert prov.resolve(request("x.png", model="req-model", size="1024x1024", quality="auto")) == (
        "req-model",
        "1024x1024",
        "auto",
    )


def test_resolution_reads_process_environment_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    prov = OpenAIProvider(KEY)
    monkeypatch.setenv("OPENAI_IMAGE_QUALITY", "medium")
    assert prov.resolve(request("x.png"))[2] == "medium"


async def test_resolved_values_are_what_goes_on_the_wire(
    fake: FakeOpenAI, sleep: RecordingSleep, scene: str
) -> None:
    env = {"OPENAI_IMAGE_MODEL": "env-model", "OPENAI_IMAGE_SIZE": "768x1152"}
    async with provider(fake, sleep, environ=env) as prov:
        result = await prov.generate(request(scene, quality="medium"))
    assert fake.requests[0].fields[:3] == [
        ("model", "env-model"),
        ("size", "768x1152"),
        ("quality", "medium"),
    ]
    assert (result.model, result.size, result.quality) == ("env-model", "768x1152", "medium")


# --- retries ---------------------------------------------------------------------------------------


async def test_429_is_retried_after_the_retry_after_delay(
    fake: FakeOpenAI, sleep: RecordingSleep, scene: str
) -> None:
    fake.enqueue(("status", 429, {"Retry-After": "3"}), ("ok",))
    async with provider(fake, sleep) as prov:
        result = await prov.generate(request(scene))
    assert [r.status for r in fake.requests] == [429, 200]
    assert sleep.delays == [3.0]
    assert result.attempts == 2
    assert result.request_id == fake.requests[1].request_id


async def test_retry_after_is_capped_at_backoff_max(
    fake: FakeOpenAI, sleep: RecordingSleep, scene: str
) -> None:
    fake.enqueue(("status", 503, {"Retry-After": "3600"}), ("ok",))
    async with provider(fake, sleep, backoff_max=1.5) as prov:
        result = await prov.generate(request(scene))
    assert sleep.delays == [1.5]
    assert result.attempts == 2


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = time.time()
    in_ten = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(seconds=10), usegmt=True)
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(in_ten, now=now) == pytest.approx(10, abs=1)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


async def test_500s_are_retried_with_exponential_backoff_until_max_attempts(
    fake: FakeOpenAI, sleep: RecordingSleep, scene: str, caplog: pytest.LogCaptureFixture
) -> None:
    fake.default = ("status", 500, {}, '{"error": {"message": "boom"}}')
    caplog.set_level(logging.WARNING, logger="kroma.engine.providers.openai")
    async with provider(fake, sleep, max_attempts=4, backoff_base=0.5, backoff_max=1.5) as prov:
        error = await failure(prov, request(scene))
    assert error.message == 'HTTP 500: {"error": {"message": "boom"}}'
    assert (error.status, error.attempts, error.retryable) == (500, 4, True)
    assert error.request_id == fake.requests[-1].request_id
    assert len(fake.requests) == 4
    assert sleep.delays == [0.5, 1.0, 1.5]  # base * 2^k, capped
    assert len(caplog.records) == 3 and KEY not in caplog.text


async def test_jitter_stays_within_its_fraction(fake: FakeOpenAI, sleep: RecordingSleep, scene: str) -> None:
    fake.enqueue(("status", 502), ("status", 502), ("ok",))
    async with provider(fake, sleep, jitter=0.1, backoff_base=1.0) as prov:
        await prov.generate(request(scene))
    assert 1.0 <= sleep.delays[0] <= 1.1 and 2.0 <= sleep.delays[1] <= 2.2


async def test_400_is_not_retried(fake: FakeOpenAI, sleep: RecordingSleep, scene: str) -> None:
    fake.enqueue(("status", 400, {}, '{"error": {"message": "Invalid size"}}'))
    async with provider(fake, sleep) as prov:
        error = await failure(prov, request(scene))
    assert error.message == 'HTTP 400: {"error": {"message": "Invalid size"}}'
    assert (error.status, error.attempts, error.retryable) == (400, 1, False)
    assert len(fake.requests) == 1 and sleep.delays == []


async def test_error_body_is_truncated(fake: FakeOpenAI, sleep: RecordingSleep, scene: str) -> None:
    fake.enqueue(("status", 422, {}, "x" * 5000))
    async with provider(fake, sleep) as prov:
        error = await failure(prov, request(scene))
    assert error.message == "HTTP 422: " + "x" * 500


async def test_slow_response_times_out_is_retried_then_fails(
    fake: FakeOpenAI, sleep: RecordingSleep, scene: str
) -> None:
    fake.enqueue(("slow", 5), ("slow", 5))
    started = time.monotonic()
    async with provider(fake, sleep, timeout=0.2, max_attempts=2) as prov:
        error = await failure(prov, request(scene))
    assert time.monotonic() - started < 2
    assert error.message.startswith("OpenAI request failed: ")
    assert (error.status, error.attempts) == (None, 2)
    assert len(fake.requests) == 2 and len(sleep.delays) == 1


async def test_dropped_connection_is_retried_then_succeeds(
    fake: FakeOpenAI, sleep: RecordingSleep, scene: str
) -> None:
    fake.enqueue(("drop",), ("ok",))
    async with provider(fake, sleep) as prov:
        result = await prov.generate(request(scene))
    assert result.attempts == 2 and sleep.delays == [0.5]


async def test_unreachable_server_fails_with_request_failed(sleep: RecordingSleep, scene: str) -> None:
    with FakeOpenAI(api_key=KEY) as gone:
        base_url = gone.base_url  # a port nobody listens on once the fake has stopped
    async with OpenAIProvider(KEY, base_url=base_url, environ={}, sleep=sleep, max_attempts=2) as prov:
        error = await failure(prov, request(scene))
    assert error.message.startswith("OpenAI request failed: ") and error.attempts == 2


# --- unusable 200 answers fail at once -----------------------------------------------------------


async def test_response_without_an_image_is_an_error(
    fake: FakeOpenAI, sleep: RecordingSleep, scene: str
) -> None:
    fake.enqueue(("no_image",))
    async with provider(fake, sleep) as prov:
        error = await failure(prov, request(scene))
    assert error.message == "API returned no image payload"
    assert len(fake.requests) == 1 and sleep.delays == []


async def test_bad_json_is_a_decode_error(fake: FakeOpenAI, sleep: RecordingSleep, scene: str) -> None:
    fake.enqueue(("bad_json",))
    async with provider(fake, sleep) as prov:
        error = await failure(prov, request(scene))
    assert error.message.startswith("OpenAI JSON decode failed: ")
    assert len(fake.requests) == 1


async def test_bad_base64_is_a_decode_error(fake: FakeOpenAI, sleep: RecordingSleep, scene: str) -> None:
    fake.enqueue(("bad_b64",))
    async with provider(fake, sleep) as prov:
        error = await failure(prov, request(scene))
    assert error.message.startswith("image base64 decode failed: ")


# --- input validation happens before any request ------------------------------------------------


async def test_missing_input_file_fails_before_sending(
    fake: FakeOpenAI, sleep: RecordingSleep, scene: str, tmp_path: Path
) -> None:
    missing = str(tmp_path / "nope.png")
    async with provider(fake, sleep) as prov:
        error = await failure(prov, request(scene, missing))
    assert error.message == f"generate-one input image not found: {missing}"
    assert fake.requests == []


async def test_blank_prompt_fails_before_sending(fake: FakeOpenAI, sleep: RecordingSleep, scene: str) -> None:
    async with provider(fake, sleep) as prov:
        error = await failure(prov, request(scene, prompt="  \n"))
    assert error.message == "generate-one requires non-empty prompt"
    assert fake.requests == []


async def test_no_input_images_fails_before_sending(fake: FakeOpenAI, sleep: RecordingSleep) -> None:
    async with provider(fake, sleep) as prov:
        error = await failure(prov, request())
    assert error.message == "generate-one --input-images-file contains no image paths"
    assert fake.requests == []


def test_empty_api_key_is_refused() -> None:
    with pytest.raises(OpenAIProviderError, match=r"^Missing OPENAI_API_KEY in environment or \.env$"):
        OpenAIProvider("  ")


# --- the key stays secret -----------------------------------------------------------------------


async def test_api_key_never_appears_in_errors_results_or_repr(
    fake: FakeOpenAI, sleep: RecordingSleep, scene: str
) -> None:
    fake.enqueue(("status", 401, {}, f'{{"error": {{"message": "Incorrect API key provided: {KEY}"}}}}'))
    async with provider(fake, sleep) as prov:
        error = await failure(prov, request(scene))
        result = await prov.generate(request(scene))
    assert error.message == 'HTTP 401: {"error": {"message": "Incorrect API key provided: ***"}}'
    assert error.__cause__ is None and error.__context__ is None
    assert KEY not in repr(prov)
    assert KEY.encode() not in msgspec.json.encode(result)
    assert KEY not in repr(result.parameters)


async def test_transport_error_does_not_chain_the_request_headers(sleep: RecordingSleep, scene: str) -> None:
    with FakeOpenAI(api_key=KEY) as gone:
        base_url = gone.base_url
    async with OpenAIProvider(KEY, base_url=base_url, environ={}, sleep=sleep, max_attempts=1) as prov:
        error = await failure(prov, request(scene))
    assert error.__cause__ is None and error.__context__ is None


async def test_wrong_key_gets_the_fakes_401(sleep: RecordingSleep, scene: str) -> None:
    with FakeOpenAI(api_key="the-right-key") as fake:
        async with provider(fake, sleep) as prov:
            error = await failure(prov, request(scene))
    assert error.message.startswith("HTTP 401: ") and "invalid_api_key" in error.message
    assert fake.requests[0].behaviour is None  # the check answered, the script was not consumed


# --- client ownership ------------------------------------------------------------------------------


async def test_aclose_closes_an_owned_client_but_not_a_given_one(
    fake: FakeOpenAI, sleep: RecordingSleep, scene: str
) -> None:
    async with httpx.AsyncClient() as client:
        given = provider(fake, sleep, client=client)
        result = await given.generate(request(scene))
        await given.aclose()
        assert not client.is_closed and result.attempts == 1
    owned = provider(fake, sleep)
    await owned.generate(request(scene))
    inner = owned._client
    await owned.aclose()
    assert inner is not None and inner.is_closed


# --- the fake from sync code -----------------------------------------------------------------------


def test_fake_serves_sync_clients_and_checks_path_and_key() -> None:
    with FakeOpenAI(api_key=KEY) as fake:
        files = [("image[]", ("scene.png", SCENE_PNG, "image/png"))]
        auth = {"Authorization": f"Bearer {KEY}"}
        ok = httpx.post(fake.edits_url, data={"prompt": "p"}, files=files, headers=auth)
        no_key = httpx.post(fake.edits_url, data={"prompt": "p"}, files=files)
        wrong_path = httpx.post(f"{fake.base_url}/images/generations", headers=auth)
        no_image = httpx.post(fake.edits_url, data={"prompt": "p"}, headers=auth, files=[("x", ("a", b"1"))])
    assert ok.status_code == 200 and ok.headers["x-request-id"]
    assert (no_key.status_code, wrong_path.status_code, no_image.status_code) == (401, 404, 400)
    assert [r.status for r in fake.requests] == [200, 401, 404, 400]
