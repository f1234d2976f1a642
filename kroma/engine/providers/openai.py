"""The OpenAI image provider: one `POST {base_url}/images/edits` per candidate (contract §4.4).

The request is the reference's, field for field: `Authorization: Bearer <key>`, multipart/form-data
with the text fields `model`, `size`, `quality`, `prompt`, `output_format=png`, `input_fidelity=high`
in that order, then one `image[]` file part per input image (scene first, then style references),
named by the file's base name with the MIME type of its extension. The answer's `data[0].b64_json`
is base64-decoded and returned as is (PNG). Error messages are the contract's verbatim texts.

Where we depart from the reference (which never retries): 429, 5xx and transport errors/timeouts are
retried with exponential backoff (plus a little jitter), honouring `Retry-After` capped at
`backoff_max`, `max_attempts` attempts in all. Any other 4xx, and a 2xx whose body is unusable, fail
at once.

The API key is sent in the header and nowhere else: it is kept out of results, log lines, error
messages (an error body that echoes it is scrubbed) and exception chains (httpx exceptions carry the
request, headers included, so they are not chained).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import PurePath
from types import TracebackType
from typing import Any, Final

import anyio
import httpx

from kroma.engine.providers.base import GenerationRequest, GenerationResult, ProviderError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
DEFAULT_MODEL: Final = "gpt-image-1"
DEFAULT_SIZE: Final = "1024x1536"
DEFAULT_QUALITY: Final = "high"
ENV_MODEL: Final = "OPENAI_IMAGE_MODEL"
ENV_SIZE: Final = "OPENAI_IMAGE_SIZE"
ENV_QUALITY: Final = "OPENAI_IMAGE_QUALITY"
OUTPUT_FORMAT: Final = "png"
INPUT_FIDELITY: Final = "high"
ERROR_BODY_LIMIT: Final = 500  # characters of an error response kept in `HTTP {status}: {body}`

_MIME_BY_EXTENSION: Final = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    "gif": "image/gif",
}

Sleep = Callable[[float], Awaitable[None]]


def mime_type_for(path: str) -> str:
    """The part's Content-Type by file extension (§4.4), `application/octet-stream` otherwise."""
    suffix = PurePath(path).suffix.lower().lstrip(".")
    return _MIME_BY_EXTENSION.get(suffix, "application/octet-stream")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date); None if absent
    or unreadable. A date in the past means 0."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP date is GMT; be lenient with a missing zone
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN / inf
        return None
    return max(0.0, seconds)


class OpenAIProviderError(ProviderError):
    """A failed OpenAI call. `message` is the contract's verbatim text; the extra attributes say
    what happened: the HTTP status (None for transport/input errors), the number of HTTP attempts
    made, the `x-request-id` of the last response, and whether the last failure was retryable."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        attempts: int = 0,
        request_id: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts
        self.request_id = request_id
        self.retryable = retryable


class _Attempt(Exception):
    """One failed HTTP attempt (internal): the error to raise, and how long the server asked us to
    wait (Retry-After) when it is retryable."""

    def __init__(self, error: OpenAIProviderError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


class OpenAIProvider:
    """`Provider` for the OpenAI Images edits endpoint (one image per call, no `n`).

    Model, size and quality resolve, per call: the request's value -> the constructor's value ->
    `environ` (`OPENAI_IMAGE_MODEL` / `OPENAI_IMAGE_SIZE` / `OPENAI_IMAGE_QUALITY`; `os.environ`
    when None, read at call time) -> `gpt-image-1` / `1024x1536` / `high`. Blank values count as
    unset.
    """

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        model: str | None = None,
        size: str | None = None,
        quality: str | None = None,
        environ: Mapping[str, str] | None = None,
        max_attempts: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        jitter: float = 0.1,
        timeout: float = 120.0,
        connect_timeout: float = 30.0,
        client: httpx.AsyncClient | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        if not api_key or not api_key.strip():
            raise OpenAIProviderError("Missing OPENAI_API_KEY in environment or .env")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if backoff_base < 0 or backoff_max < 0 or jitter < 0:
            raise ValueError("backoff_base, backoff_max and jitter must not be negative")
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeout and connect_timeout must be positive")
        self._api_key = api_key.strip()
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.model = _blank_to_none(model)
        self.size = _blank_to_none(size)
        self.quality = _blank_to_none(quality)
        self._environ = environ
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.jitter = jitter
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._http_timeout = httpx.Timeout(timeout, connect=min(connect_timeout, timeout))
        self._client = client
        self._owns_client = client is None
        self._sleep: Sleep = sleep or anyio.sleep

    @property
    def code(self) -> str:
        return "openai"

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/images/edits"

    def __repr__(self) -> str:  # never the key
        return f"OpenAIProvider(base_url={self.base_url!r}, max_attempts={self.max_attempts})"

    async def __aenter__(self) -> OpenAIProvider:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this provider created it (a client passed in stays open)."""
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def resolve(self, request: GenerationRequest) -> tuple[str, str, str]:
        """The (model, size, quality) this request will be sent with."""
        environ: Mapping[str, str] = os.environ if self._environ is None else self._environ

        def pick(from_request: str | None, configured: str | None, env_name: str, default: str) -> str:
            return (
                _blank_to_none(from_request) or configured or _blank_to_none(environ.get(env_name)) or default
            )

        return (
            pick(request.model, self.model, ENV_MODEL, DEFAULT_MODEL),
            pick(request.size, self.size, ENV_SIZE, DEFAULT_SIZE),
            pick(request.quality, self.quality, ENV_QUALITY, DEFAULT_QUALITY),
        )

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if not request.input_images:
            raise OpenAIProviderError("generate-one --input-images-file contains no image paths")
        if not request.prompt or not request.prompt.strip():
            raise OpenAIProviderError("generate-one requires non-empty prompt")
        model, size, quality = self.resolve(request)
        images = [await _read_input(path) for path in request.input_images]
        fields = {
            "model": model,
            "size": size,
            "quality": quality,
            "prompt": request.prompt,
            "output_format": OUTPUT_FORMAT,
            "input_fidelity": INPUT_FIDELITY,
        }
        files = [
            ("image[]", (PurePath(path).name, content, mime_type_for(path)))
            for path, content in zip(request.input_images, images, strict=True)
        ]

        attempt = 0
        while True:
            attempt += 1
            failed: _Attempt | None = None
            try:
                image, request_id, usage = await self._attempt(fields, files, attempt)
            except _Attempt as e:
                failed = e
            if failed is not None:
                error = failed.error
                if not error.retryable or attempt >= self.max_attempts:
                    raise error
                delay = self._delay(attempt, failed.retry_after)
                log.warning(
                    "OpenAI images/edits attempt %d/%d failed (%s); retrying in %.2fs",
                    attempt,
                    self.max_attempts,
                    error.message[:200],
                    delay,
                )
                await self._sleep(delay)
                continue
            parameters: dict[str, Any] = {
                "model": model,
                "size": size,
                "quality": quality,
                "output_format": OUTPUT_FORMAT,
                "input_fidelity": INPUT_FIDELITY,
                "input_images": len(files),
            }
            if usage is not None:
                parameters["usage"] = usage
            return GenerationResult(
                image=image,
                provider=self.code,
                model=model,
                size=size,
                quality=quality,
                seed=request.seed,
                request_id=request_id,
                attempts=attempt,
                parameters=parameters,
            )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt `attempt + 1`: the server's Retry-After when it gave one,
        else base * 2^(attempt-1) plus up to `jitter` of it; never more than backoff_max."""
        if retry_after is not None:
            return min(retry_after, self.backoff_max)
        delay = self.backoff_base * (2 ** (attempt - 1))
        if self.jitter:
            delay *= 1 + random.uniform(0, self.jitter)
        return min(delay, self.backoff_max)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._http_timeout)
        return self._client

    async def _attempt(
        self,
        fields: dict[str, str],
        files: list[tuple[str, tuple[str, bytes, str]]],
        attempt: int,
    ) -> tuple[bytes, str | None, dict[str, Any] | None]:
        """One HTTP call; returns (image bytes, request id, usage) or raises `_Attempt`."""
        headers = {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"}
        response: httpx.Response | None = None
        transport_error = f"timed out after {self.timeout:g}s"
        try:
            # httpx's timeouts are per operation; the contract's 120 s is for the whole call.
            with anyio.move_on_after(self.timeout):
                response = await self._http().post(
                    self.endpoint, data=fields, files=files, headers=headers, timeout=self._http_timeout
                )
        except httpx.HTTPError as e:  # transport errors, timeouts, protocol errors
            transport_error = _describe(e)
        if response is None:
            # Raised outside the `except`: an httpx exception carries the request, headers and
            # all, and must not ride along as the `__context__` of what we raise.
            raise self._failure(f"OpenAI request failed: {transport_error}", attempt, retryable=True)

        request_id = response.headers.get("x-request-id")
        status = response.status_code
        if not 200 <= status < 300:
            body = response.text[:ERROR_BODY_LIMIT]
            retryable = status == 429 or status >= 500
            raise self._failure(
                f"HTTP {status}: {body}",
                attempt,
                status=status,
                request_id=request_id,
                retryable=retryable,
                retry_after=parse_retry_after(response.headers.get("retry-after")) if retryable else None,
            )
        try:
            payload = json.loads(response.content)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise self._failure(
                f"OpenAI JSON decode failed: {e}", attempt, status=status, request_id=request_id
            ) from None
        b64 = _first_b64_json(payload)
        if b64 is None:
            raise self._failure(
                "API returned no image payload", attempt, status=status, request_id=request_id
            )
        try:
            image = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise self._failure(
                f"image base64 decode failed: {e}", attempt, status=status, request_id=request_id
            ) from None
        usage = payload.get("usage") if isinstance(payload, dict) else None
        return image, request_id, usage if isinstance(usage, dict) else None

    def _failure(
        self,
        message: str,
        attempt: int,
        *,
        status: int | None = None,
        request_id: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> _Attempt:
        error = OpenAIProviderError(
            self._scrub(message),
            status=status,
            attempts=attempt,
            request_id=request_id,
            retryable=retryable,
        )
        return _Attempt(error, retry_after)

    def _scrub(self, text: str) -> str:
        """Remove the key from text that came from elsewhere (an error body may echo it)."""
        return text.replace(self._api_key, "***") if self._api_key in text else text


def _blank_to_none(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _describe(e: Exception) -> str:
    """httpx exceptions often have an empty message (a read timeout): fall back to the class name."""
    text = str(e).strip()
    return text or type(e).__name__


def _first_b64_json(payload: object) -> str | None:
    if not isinstance(payload, dict):
        return None
    data = payload.get("data")
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        return None
    b64 = data[0].get("b64_json")
    return b64 if isinstance(b64, str) and b64 else None


async def _read_input(path: str) -> bytes:
    """Read an input image off the event loop (they can be several MB)."""
    try:
        return await anyio.Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise OpenAIProviderError(f"generate-one input image not found: {path}") from None
    except OSError as e:
        raise OpenAIProviderError(
            f"generate-one input image could not be read: {path}: {e.strerror or e}"
        ) from None
