"""The post-processing pass adapters the engine calls (pipeline spec §5.3 background removal, §5.4
upscale, §5.5 colour), and the postprocess config as the adapters read it (§5.1, "Adapter parser
(lenient)" column).

Each pass takes the current image's bytes and returns `(output bytes, run-log record)`. A pass
never writes into the project: the engine writes the output, archives a replaced file and adds
provenance. External tools (rembg, Real-ESRGAN) work on files in a private temporary folder that
is removed afterwards. Every failure is a `PassError` whose `message` is the spec's verbatim text
and whose `kind` says how the engine maps it (§4.2): `preflight` (an adapter's own error, HTTP 400
`planning_preflight_failed`), `command` (an external process failed or timed out, HTTP 400
`pipeline_command_failed`; `exit_code` is -1 for a timeout) or `io` (an external program could not
be started, HTTP 500).

Where we depart from the reference (spec §10.7), on purpose:

- `builtin` is a backend of both passes (Kroma's own in-process code, `kroma.imaging`), and the
  defaults are chosen so a fresh install works with no key, no network and no tool: the
  background chain is `rembg` then `builtin`, in the adapter parser too (defect 5: one default
  set), and the upscale backend is the installed Real-ESRGAN (`default_upscale_backend`: python,
  else ncnn) or else `builtin`.
- rembg's output is converted to the configured format (defect 3); so is any backend's answer
  that is not in the requested format (a JPEG flattened onto white).
- The python Real-ESRGAN backend calls the upstream `inference_realesrgan.py` with its own option
  names (`--model_name`, `--tile_pad`, `--pre_pad`, an output folder and `--suffix ""`) and takes
  the one file it writes, so an input file becomes exactly one output file at the given scale
  (defect 4: the wrapper's semantics on the upstream script).
- Colour correction keeps the alpha channel (defect 2; done by `kroma.imaging.color`).
- The HTTP calls (PhotoRoom, remove.bg, OpenAI refine) retry 429, 5xx and transport errors with
  exponential backoff honouring `Retry-After`, like the OpenAI image provider; the reference
  never retries. API keys go in headers only: they are scrubbed from error bodies and never ride
  along an exception chain.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path, PurePath
from types import TracebackType
from typing import Any, Final, Literal, TypeVar

import anyio
import anyio.abc
import anyio.to_thread
import httpx
import msgspec

from kroma.engine.paths import display_path
from kroma.engine.postprocess_config import BG_REMOVE_BACKENDS, DEFAULT_BG_REMOVE_BACKENDS
from kroma.engine.providers import select
from kroma.engine.providers.openai import (
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    DEFAULT_QUALITY,
    ENV_MODEL,
    ENV_QUALITY,
    ERROR_BODY_LIMIT,
    mime_type_for,
    parse_retry_after,
)
from kroma.engine.settings_layer import UPSCALE_BACKENDS, ascii_lower, join_path, trim
from kroma.imaging import background as background_image
from kroma.imaging import color as color_image
from kroma.imaging import encode as encode_image
from kroma.imaging import upscale as upscale_image

__all__ = [
    "COMMAND_TIMEOUT_ENV",
    "DEFAULT_COMMAND_TIMEOUT",
    "DEFAULT_REFINE_PROMPT",
    "AdapterConfig",
    "PassEnv",
    "PassError",
    "adapter_config",
    "background_remove",
    "color",
    "command_timeout_from",
    "default_upscale_backend",
    "run_command",
    "upscale",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
ErrorKind = Literal["preflight", "command", "io"]

COMMAND_TIMEOUT_ENV: Final = "KROMA_COMMAND_TIMEOUT_SECONDS"
DEFAULT_COMMAND_TIMEOUT: Final = 300.0
DEFAULT_REFINE_PROMPT: Final = (
    "Refine this subject cutout for production compositing. Keep identity and details unchanged. "
    "Clean edge artifacts and preserve transparency."
)
REALESRGAN_PYTHON_SCRIPT: Final = "tools/realesrgan-python/src/Real-ESRGAN/inference_realesrgan.py"
REALESRGAN_NCNN_BINARY: Final = "tools/realesrgan/realesrgan-ncnn-vulkan"
BUILTIN_UPSCALE_MODEL: Final = "lanczos"
BG_FORMATS: Final = ("png", "jpg", "webp")
BG_HTTP_TIMEOUT: Final = (60.0, 15.0)  # total, connect (§5.3)
REFINE_HTTP_TIMEOUT: Final = (120.0, 30.0)
_STDERR_LIMIT: Final = 64 * 1024
_U32_MAX: Final = 2**32 - 1


class PassError(Exception):
    """A pass failed. `message` is the spec's text; `kind` is how the engine maps it (module
    docstring); `exit_code` is the external process's status (-1 on timeout) for `command`."""

    def __init__(self, message: str, *, kind: ErrorKind = "preflight", exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.kind: ErrorKind = kind
        self.exit_code = exit_code


# ---------------------------------------------------------------------------------------------
# Installation and environment


def default_upscale_backend(app_root: Path) -> str:
    """The upscale backend when none is configured: `python` when the Real-ESRGAN python inference
    script is installed under the app root, else `ncnn` when the ncnn-vulkan binary is, else
    `builtin` (always available)."""
    if (app_root / REALESRGAN_PYTHON_SCRIPT).is_file():
        return "python"
    if (app_root / REALESRGAN_NCNN_BINARY).is_file():
        return "ncnn"
    return "builtin"


def command_timeout_from(env: Mapping[str, str]) -> float:
    """`KROMA_COMMAND_TIMEOUT_SECONDS` (a positive number of seconds), else 300."""
    text = (env.get(COMMAND_TIMEOUT_ENV) or "").strip()
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_COMMAND_TIMEOUT
    return value if math.isfinite(value) and value > 0 else DEFAULT_COMMAND_TIMEOUT


class PassEnv:
    """What the passes need from the run: the app root, the environment (process over `.env`, see
    `create`), the CPU limiter for in-process image work, an HTTP client (one is created, and
    closed by `aclose`, when none is given), the OpenAI key and base URL for the refine (None:
    from the environment), the external-process timeout (None: `KROMA_COMMAND_TIMEOUT_SECONDS`,
    default 300 s) and the HTTP retry policy."""

    def __init__(
        self,
        app_root: Path,
        env: Mapping[str, str],
        cpu: anyio.CapacityLimiter,
        *,
        http: httpx.AsyncClient | None = None,
        openai_key: str | None = None,
        openai_base_url: str | None = None,
        command_timeout: float | None = None,
        max_attempts: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        sleep: Sleep | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.app_root = app_root
        self.env = env
        self.cpu = cpu
        self.http = http
        self._owns_http = http is None
        self.openai_key = openai_key
        self.openai_base_url = openai_base_url
        self.command_timeout = command_timeout if command_timeout is not None else command_timeout_from(env)
        if not self.command_timeout > 0:
            raise ValueError("command_timeout must be positive")
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.sleep: Sleep = sleep or anyio.sleep

    @classmethod
    async def create(
        cls,
        app_root: Path,
        environ: Mapping[str, str] | None = None,
        cpu: anyio.CapacityLimiter | None = None,
        **options: Any,
    ) -> PassEnv:
        """A PassEnv whose `env` is `environ` (default: the process environment) over
        `<app root>/.env`."""
        merged = await anyio.to_thread.run_sync(
            select.environment, app_root, dict(os.environ) if environ is None else environ
        )
        return cls(app_root, merged, cpu or anyio.CapacityLimiter(1), **options)

    def __repr__(self) -> str:  # never the key
        return f"PassEnv(app_root={str(self.app_root)!r}, command_timeout={self.command_timeout:g})"

    def client(self) -> httpx.AsyncClient:
        if self.http is None:
            self.http = httpx.AsyncClient()
        return self.http

    async def aclose(self) -> None:
        """Close the HTTP client if this PassEnv created it (a client passed in stays open)."""
        if self._owns_http and self.http is not None:
            client, self.http = self.http, None
            await client.aclose()

    async def __aenter__(self) -> PassEnv:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def path(self, value: str) -> Path:
        """A configured path: relative -> under the app root, absolute kept."""
        return Path(join_path(self.app_root, value))


# ---------------------------------------------------------------------------------------------
# The adapter parser (§5.1, lenient: a value of the wrong type or out of range is ignored)


class AdapterConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The postprocess config as the adapters read it, with the adapter defaults."""

    upscale_backend: str | None = None  # None: resolved by installation (default_upscale_backend)
    upscale_scale: int = 2
    upscale_format: str = "png"
    upscale_tile: int = 0
    upscale_binary: str = REALESRGAN_NCNN_BINARY
    upscale_model_dir: str = "tools/realesrgan/models"
    upscale_model_name: str = "realesrgan-x4plus"
    python_bin: str = "tools/realesrgan-python/.venv/bin/python"
    python_inference_script: str = REALESRGAN_PYTHON_SCRIPT
    python_model_name: str = "RealESRGAN_x4plus"
    python_tile: int = 0
    python_tile_pad: int = 10
    python_pre_pad: int = 0
    python_fp32: bool = False
    python_gpu_id: int | None = None
    color_default_profile: str = "neutral"
    color_settings_file: str | None = None
    bg_backends: tuple[str, ...] = DEFAULT_BG_REMOVE_BACKENDS
    bg_format: str = "png"
    bg_size: str = "auto"
    bg_crop: bool = False
    rembg_python_bin: str = "python3"  # parsed, unused (as at HEAD): the rembg CLI is used
    rembg_model: str = "birefnet-general"
    photoroom_endpoint: str = "https://sdk.photoroom.com/v1/segment"
    photoroom_api_key_env: str = "PHOTOROOM_API_KEY"
    removebg_endpoint: str = "https://api.remove.bg/v1.0/removebg"
    removebg_api_key_env: str = "REMOVE_BG_API_KEY"
    openai_enabled: bool = True
    openai_required: bool = False
    openai_api_key_env: str = "OPENAI_API_KEY"
    openai_model: str | None = None  # None: OPENAI_IMAGE_MODEL, else gpt-image-1
    openai_quality: str | None = None  # None: OPENAI_IMAGE_QUALITY, else high
    openai_input_fidelity: str = "high"
    openai_background: str = "transparent"
    openai_prompt: str = DEFAULT_REFINE_PROMPT


def _section(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    """A non-blank string, trimmed."""
    return trim(value) if isinstance(value, str) and trim(value) else None


def _u32(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U32_MAX:
        return None
    return value


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _bg_format(value: Any) -> str | None:
    text = _text(value)
    normalized = "jpg" if text is not None and ascii_lower(text) == "jpeg" else ascii_lower(text or "")
    return normalized if normalized in BG_FORMATS else None


def _set(values: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        values[key] = value


def _adapter_upscale(section: dict[str, Any], values: dict[str, Any]) -> None:
    backend = ascii_lower(_text(section.get("backend")) or "")
    _set(values, "upscale_backend", backend if backend in UPSCALE_BACKENDS else None)
    scale = _u32(section.get("scale"))
    _set(values, "upscale_scale", scale if scale is not None and 1 <= scale <= 255 else None)
    fmt = _text(section.get("format"))
    _set(values, "upscale_format", ascii_lower(fmt) if fmt else None)
    _set(values, "upscale_tile", _u32(section.get("tile")))
    _set(values, "upscale_binary", _text(section.get("binary")))
    _set(values, "upscale_model_dir", _text(section.get("model_dir")))
    _set(values, "upscale_model_name", _text(section.get("model_name")))
    if isinstance(section.get("python"), dict):
        python = section["python"]
        _set(values, "python_bin", _text(python.get("python_bin")))
        _set(values, "python_inference_script", _text(python.get("inference_script")))
        _set(values, "python_model_name", _text(python.get("model_name")))
        tile = _u32(python.get("tile"))
        _set(values, "python_tile", tile if tile is not None else values.get("upscale_tile"))
        _set(values, "python_tile_pad", _u32(python.get("tile_pad")))
        _set(values, "python_pre_pad", _u32(python.get("pre_pad")))
        _set(values, "python_fp32", _flag(python.get("fp32")))
        gpu = python.get("gpu_id")
        _set(values, "python_gpu_id", _u32(gpu))


def _adapter_bg_remove(section: dict[str, Any], values: dict[str, Any]) -> None:
    if isinstance(section.get("backends"), list):
        names = tuple(ascii_lower(name) for name in map(_text, section["backends"]) if name)
        _set(values, "bg_backends", names or None)
    _set(values, "bg_format", _bg_format(section.get("format")))
    _set(values, "bg_size", _text(section.get("size")))
    _set(values, "bg_crop", _flag(section.get("crop")))
    rembg = _section(section.get("rembg"))
    _set(values, "rembg_python_bin", _text(rembg.get("python_bin")))
    _set(values, "rembg_model", _text(rembg.get("model")))
    for service in ("photoroom", "removebg"):
        settings = _section(section.get(service))
        _set(values, f"{service}_endpoint", _text(settings.get("endpoint")))
        _set(values, f"{service}_api_key_env", _text(settings.get("api_key_env")))
    openai = _section(section.get("openai"))
    _set(values, "openai_enabled", _flag(openai.get("enabled")))
    _set(values, "openai_required", _flag(openai.get("required")))
    for key in ("api_key_env", "model", "quality", "input_fidelity", "background"):
        _set(values, f"openai_{key}", _text(openai.get(key)))
    prompt = openai.get("prompt")
    _set(values, "openai_prompt", prompt if isinstance(prompt, str) and prompt.strip() else None)


def adapter_config(raw: dict[str, Any] | None) -> AdapterConfig:
    """The decoded postprocess config (`PostprocessConfig.raw`; None or `{}` without a file) as
    the adapters read it: every known key that has a usable value, the adapter default otherwise."""
    document = raw if isinstance(raw, dict) else {}
    values: dict[str, Any] = {}
    if isinstance(document.get("upscale"), dict):
        _adapter_upscale(document["upscale"], values)
    color_section = _section(document.get("color"))
    _set(values, "color_default_profile", _text(color_section.get("default_profile")))
    _set(values, "color_settings_file", _text(color_section.get("settings_file")))
    if isinstance(document.get("bg_remove"), dict):
        _adapter_bg_remove(document["bg_remove"], values)
    return AdapterConfig(**values)


# ---------------------------------------------------------------------------------------------
# Image bytes helpers


def sniff_format(data: bytes) -> str | None:
    """`png`, `jpg` or `webp` by magic number; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _normalize_format(fmt: str) -> str:
    lowered = ascii_lower(trim(fmt))
    return "jpg" if lowered == "jpeg" else lowered


def _convert(data: bytes, fmt: str) -> bytes:
    """`data` re-encoded as `fmt` unless it already is (a JPEG target is flattened onto white)."""
    if sniff_format(data) == fmt:
        return data
    return encode_image.encode(encode_image.decode(data), fmt)


async def _in_thread(env: PassEnv, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run CPU-bound image work in a worker thread, bounded by the run's CPU limiter."""
    return await anyio.to_thread.run_sync(functools.partial(function, *args, **kwargs), limiter=env.cpu)


async def _to_format(env: PassEnv, data: bytes, fmt: str, what: str) -> bytes:
    if sniff_format(data) == fmt:
        return data
    try:
        return await _in_thread(env, _convert, data, fmt)
    except (OSError, ValueError) as error:
        raise PassError(f"{what} returned an unreadable image: {error}") from None


def _suffix_for(data: bytes, name: str | None = None) -> str:
    found = sniff_format(data)
    if found is not None:
        return f".{found}"
    suffix = PurePath(name or "").suffix.lower()
    return suffix if suffix else ".png"


# ---------------------------------------------------------------------------------------------
# External processes (§4.2: wall-clock limit, killed on timeout, `Command timed out after {n} seconds`)


def _seconds_text(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def _first_line(stderr: bytes) -> str:
    for line in stderr.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            return line.strip()
    return ""


def _kill_group(process: anyio.abc.Process) -> None:
    """Kill the process and everything it started (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()


async def run_command(args: Sequence[str], *, timeout: float, cwd: Path | None = None) -> None:
    """Run an external program to completion; stdout is discarded, stderr kept for the error.

    Raises PassError: `io` when it cannot be started, `command` with the first stderr line when it
    exits non-zero, `command` with exit code -1 and `Command timed out after {n} seconds` when it
    runs longer than `timeout` (it and its children are then killed)."""
    try:
        process = await anyio.open_process(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as error:
        raise PassError(f"failed to run {args[0]}: {error.strerror or error}", kind="io") from None
    stderr = bytearray()
    drained = anyio.Event()

    async def drain() -> None:
        try:
            if process.stderr is not None:
                async for chunk in process.stderr:
                    if len(stderr) < _STDERR_LIMIT:
                        stderr.extend(chunk[: _STDERR_LIMIT - len(stderr)])
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        finally:
            drained.set()

    code: int | None = None
    try:
        with anyio.move_on_after(timeout):
            async with anyio.create_task_group() as group:
                group.start_soon(drain)
                code = await process.wait()
                with anyio.move_on_after(1.0):  # a child may still hold stderr open
                    await drained.wait()
                group.cancel_scope.cancel()
    finally:
        if code is None:  # timed out, or the run was cancelled: kill it and its children
            _kill_group(process)
        with anyio.CancelScope(shield=True):
            await process.aclose()
    if code is None:
        raise PassError(f"Command timed out after {_seconds_text(timeout)} seconds", kind="command", exit_code=-1)
    if code != 0:
        message = _first_line(bytes(stderr)) or f"command failed with exit code {code}"
        raise PassError(message, kind="command", exit_code=code)


# ---------------------------------------------------------------------------------------------
# HTTP (multipart POST with retries; the key never leaves the header)


def _describe(error: Exception) -> str:
    text = str(error).strip()
    return text or type(error).__name__


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret and secret in text else text


def _delay(env: PassEnv, attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(retry_after, env.backoff_max)
    delay = env.backoff_base * (2 ** (attempt - 1)) * (1 + random.uniform(0, 0.1))
    return min(delay, env.backoff_max)


async def _post(
    env: PassEnv,
    url: str,
    *,
    headers: dict[str, str],
    fields: dict[str, str],
    files: list[tuple[str, tuple[str, bytes, str]]],
    timeouts: tuple[float, float],
    secret: str,
    transport_prefix: str,
) -> httpx.Response:
    """POST multipart; a 2xx response, else PassError (`HTTP {status}: {body}`, or
    `{transport_prefix}{error}`) after retrying 429 / 5xx / transport failures."""
    total, connect = timeouts
    timeout = httpx.Timeout(total, connect=min(connect, total))
    attempt = 0
    while True:
        attempt += 1
        response: httpx.Response | None = None
        failure = f"timed out after {total:g}s"
        try:
            with anyio.move_on_after(total):  # httpx's timeouts are per operation
                response = await env.client().post(
                    url, data=fields, files=files, headers=headers, timeout=timeout
                )
        except httpx.HTTPError as error:  # the request (with the key) is not chained
            failure = _describe(error)
        retry_after: float | None = None
        if response is None:
            message, retryable = f"{transport_prefix}{failure}", True
        elif 200 <= response.status_code < 300:
            return response
        else:
            status = response.status_code
            message = f"HTTP {status}: {response.text[:ERROR_BODY_LIMIT]}"
            retryable = status == 429 or status >= 500
            if retryable:
                retry_after = parse_retry_after(response.headers.get("retry-after"))
        message = _scrub(message, secret)
        if not retryable or attempt >= env.max_attempts:
            raise PassError(message)
        wait = _delay(env, attempt, retry_after)
        log.warning("POST %s attempt %d/%d failed (%s); retrying in %.2fs", url, attempt,
                    env.max_attempts, message[:200], wait)
        await env.sleep(wait)


# ---------------------------------------------------------------------------------------------
# Background removal (§5.3)


async def _rembg(env: PassEnv, cfg: AdapterConfig, data: bytes, input_name: str, fmt: str) -> bytes:
    executable = shutil.which("rembg", path=env.env.get("PATH", os.defpath))
    if executable is None:
        raise PassError("rembg executable not found on PATH")
    with tempfile.TemporaryDirectory(prefix="kroma-rembg-") as folder:
        source = anyio.Path(folder) / f"input{_suffix_for(data, input_name)}"
        target = anyio.Path(folder) / "output.png"
        await source.write_bytes(data)
        await run_command(
            [executable, "i", "-m", cfg.rembg_model, str(source), str(target)], timeout=env.command_timeout
        )
        if not await target.is_file():
            raise PassError("rembg produced no output file")
        result = await target.read_bytes()
    return await _to_format(env, result, fmt, "rembg")


async def _http_remover(
    env: PassEnv,
    cfg: AdapterConfig,
    data: bytes,
    input_name: str,
    fmt: str,
    *,
    service: str,
) -> bytes:
    if service == "photoroom":
        endpoint, key_env, header = cfg.photoroom_endpoint, cfg.photoroom_api_key_env, "x-api-key"
    else:
        endpoint, key_env, header = cfg.removebg_endpoint, cfg.removebg_api_key_env, "X-Api-Key"
    key = (env.env.get(key_env) or "").strip()
    if not key:
        raise PassError(f"Missing {key_env} for background remove")
    fields: dict[str, str] = {}
    if ascii_lower(cfg.bg_size) != "auto":
        fields["size"] = cfg.bg_size
    fields["format"] = fmt
    if cfg.bg_crop:
        fields["crop"] = "true"
    name = PurePath(input_name).name or "image.png"
    response = await _post(
        env,
        endpoint,
        headers={header: key},
        fields=fields,
        files=[("image_file", (name, data, mime_type_for(name)))],
        timeouts=BG_HTTP_TIMEOUT,
        secret=key,
        transport_prefix="request failed: ",
    )
    if not response.content:
        raise PassError("empty response body")
    return await _to_format(env, response.content, fmt, service)


async def _builtin_remover(env: PassEnv, data: bytes, fmt: str) -> bytes:
    try:
        return await _in_thread(env, background_image.remove_background, data, fmt=fmt)
    except (OSError, ValueError) as error:
        raise PassError(_describe(error)) from None


def _refine_key(env: PassEnv, cfg: AdapterConfig) -> str:
    key = (env.openai_key or "").strip() or (env.env.get(cfg.openai_api_key_env) or "").strip()
    if not key:
        raise PassError(f"Missing {cfg.openai_api_key_env} for OpenAI background refinement")
    return key


async def _refine(env: PassEnv, cfg: AdapterConfig, cutout: bytes, input_name: str, fmt: str) -> bytes:
    """One OpenAI images/edits call on the cut-out; the refined image in `fmt`."""
    key = _refine_key(env, cfg)
    base = (env.openai_base_url or env.env.get("OPENAI_BASE_URL") or "").strip() or DEFAULT_BASE_URL
    fields = {
        "model": cfg.openai_model or (env.env.get(ENV_MODEL) or "").strip() or DEFAULT_MODEL,
        "prompt": cfg.openai_prompt,
        "quality": cfg.openai_quality or (env.env.get(ENV_QUALITY) or "").strip() or DEFAULT_QUALITY,
        "input_fidelity": cfg.openai_input_fidelity,
        "output_format": fmt,
        "background": cfg.openai_background,
    }
    name = f"{PurePath(input_name).stem or 'image'}.{fmt}"
    response = await _post(
        env,
        f"{base.rstrip('/')}/images/edits",
        headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
        fields=fields,
        files=[("image[]", (name, cutout, mime_type_for(name)))],
        timeouts=REFINE_HTTP_TIMEOUT,
        secret=key,
        transport_prefix="OpenAI request failed: ",
    )
    try:
        payload = json.loads(response.content)
    except ValueError as error:
        raise PassError(f"OpenAI JSON decode failed: {error}") from None
    data = payload.get("data") if isinstance(payload, dict) else None
    first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
    b64 = first.get("b64_json")
    if not isinstance(b64, str) or not b64:
        raise PassError("OpenAI refine returned no image payload")
    try:
        image = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as error:
        raise PassError(f"image base64 decode failed: {error}") from None
    return await _to_format(env, image, fmt, "OpenAI refine")


def _check_backends(backends: Sequence[str]) -> list[str]:
    if not backends:
        raise PassError("background remove requires at least one backend")
    names = [ascii_lower(trim(name)) for name in backends]
    unknown = [name for name in names if name not in BG_REMOVE_BACKENDS]
    if unknown:
        raise PassError(
            f"Unsupported background-remove backend(s): {', '.join(unknown)}. "
            f"Expected {'|'.join(BG_REMOVE_BACKENDS)}."
        )
    return names


async def background_remove(
    env: PassEnv,
    cfg: AdapterConfig,
    data: bytes,
    *,
    input_name: str,
    input_display: str,
    output_display: str,
    backends: Sequence[str],
    fmt: str,
    refine: bool,
    refine_required: bool,
) -> tuple[bytes, dict[str, Any]]:
    """Cut the subject out: the backends in order, the first success wins (failures are collected
    as `{backend}: {message}`), then, when `refine`, the OpenAI refine of the cut-out (its failure
    aborts when `refine_required`, else it is recorded as `refine_error`).

    `input_name` names the file part sent to HTTP backends; the displays go into messages and the
    record `{input, output, backend, backends_tried, refine_openai, refine_error}`."""
    names = _check_backends(backends)
    target = _normalize_format(fmt)
    if target not in BG_FORMATS:
        raise PassError(f"unsupported background-remove format '{fmt}'. Expected {'|'.join(BG_FORMATS)}.")
    failures: list[str] = []
    tried: list[str] = []
    result: bytes | None = None
    winner: str | None = None
    for name in names:
        tried.append(name)
        try:
            if name == "rembg":
                result = await _rembg(env, cfg, data, input_name, target)
            elif name == "builtin":
                result = await _builtin_remover(env, data, target)
            else:
                result = await _http_remover(env, cfg, data, input_name, target, service=name)
        except PassError as error:
            failures.append(f"{name}: {error.message}")
            continue
        winner = name
        break
    if result is None or winner is None:
        raise PassError(f"Background remove failed for {input_display}. {' | '.join(failures)}")
    applied = False
    refine_error: str | None = None
    if refine:
        try:
            result = await _refine(env, cfg, result, input_name, target)
            applied = True
        except PassError as error:
            if refine_required:
                raise PassError(f"OpenAI refine failed for {input_display}: {error.message}") from None
            refine_error = error.message
    record = {
        "input": input_display,
        "output": output_display,
        "backend": winner,
        "backends_tried": tried,
        "refine_openai": applied,
        "refine_error": refine_error,
    }
    return result, record


# ---------------------------------------------------------------------------------------------
# Upscale (§5.4)


def _program(env: PassEnv, value: str) -> str:
    """`python_bin`: a path (under the app root) when it has a `/` or starts with `.`, else a
    command name looked up on PATH (kept as is when not found: starting it then fails)."""
    if "/" in value or value.startswith("."):
        return str(env.path(value))
    return shutil.which(value, path=env.env.get("PATH", os.defpath)) or value


async def _ncnn(env: PassEnv, cfg: AdapterConfig, data: bytes, scale: int, fmt: str) -> tuple[bytes, str]:
    binary = env.path(cfg.upscale_binary)
    if not await anyio.Path(binary).is_file():
        raise PassError(f"Real-ESRGAN binary not found: {binary}")
    models = env.path(cfg.upscale_model_dir)
    if not await anyio.Path(models).is_dir():
        raise PassError(f"Real-ESRGAN models dir not found: {models}")
    with tempfile.TemporaryDirectory(prefix="kroma-upscale-") as folder:
        source = anyio.Path(folder) / f"input{_suffix_for(data)}"
        target = anyio.Path(folder) / f"output.{fmt}"
        await source.write_bytes(data)
        await run_command(
            [
                str(binary), "-i", str(source), "-o", str(target), "-s", str(scale),
                "-m", str(models), "-n", cfg.upscale_model_name, "-f", fmt, "-t", str(cfg.upscale_tile),
            ],
            timeout=env.command_timeout,
        )
        if not await target.is_file():
            raise PassError("Real-ESRGAN produced no output file")
        result = await target.read_bytes()
    return result, cfg.upscale_model_name


async def _python(env: PassEnv, cfg: AdapterConfig, data: bytes, scale: int, fmt: str) -> tuple[bytes, str]:
    script = env.path(cfg.python_inference_script)
    if not await anyio.Path(script).is_file():
        raise PassError(
            f"Real-ESRGAN python inference script not found: {script}. "
            "Run: bash scripts/setup-realesrgan-python.sh"
        )
    with tempfile.TemporaryDirectory(prefix="kroma-upscale-") as folder:
        source = anyio.Path(folder) / f"input{_suffix_for(data)}"
        out_dir = anyio.Path(folder) / "out"
        await source.write_bytes(data)
        await out_dir.mkdir()
        args = [
            _program(env, cfg.python_bin), str(script),
            "--input", str(source), "--output", str(out_dir),
            "--model_name", cfg.python_model_name, "--outscale", str(scale),
            "--tile", str(cfg.python_tile), "--tile_pad", str(cfg.python_tile_pad),
            "--pre_pad", str(cfg.python_pre_pad), "--suffix", "", "--ext", "png",
        ]
        if cfg.python_fp32:
            args.append("--fp32")
        if cfg.python_gpu_id is not None:
            args += ["--gpu-id", str(cfg.python_gpu_id)]
        # Upstream looks for `weights/` relative to the working directory: run it from its repo.
        await run_command(args, timeout=env.command_timeout, cwd=script.parent)
        produced = sorted([path async for path in out_dir.iterdir() if await path.is_file()])
        if len(produced) != 1:
            raise PassError(f"Real-ESRGAN wrote {len(produced)} output files, expected 1")
        result = await produced[0].read_bytes()
    return result, cfg.python_model_name


async def upscale(
    env: PassEnv,
    cfg: AdapterConfig,
    data: bytes,
    *,
    input_display: str,
    output_display: str,
    backend: str,
    scale: int,
    fmt: str,
) -> tuple[bytes, dict[str, Any]]:
    """Upscale by `scale` with `backend` (`builtin`: in-process Lanczos; `ncnn` / `python`:
    Real-ESRGAN as an external process); the output is in `fmt`. Record
    `{backend, input, output, scale, model}`."""
    name = ascii_lower(trim(backend))
    if name not in UPSCALE_BACKENDS:
        raise PassError(f"invalid upscale backend '{name}'. Expected {'|'.join(UPSCALE_BACKENDS)}.")
    if isinstance(scale, bool) or not 1 <= scale <= 255:
        raise PassError(f"invalid upscale scale {scale}: expected 1..=255")
    target = _normalize_format(fmt)
    if name == "builtin":
        try:
            result = await _in_thread(env, upscale_image.upscale, data, scale, target)
        except (OSError, ValueError) as error:
            raise PassError(f"upscale failed: {_describe(error)}") from None
        model = BUILTIN_UPSCALE_MODEL
    elif name == "ncnn":
        result, model = await _ncnn(env, cfg, data, scale, target)
    else:
        result, model = await _python(env, cfg, data, scale, target)
    if name != "builtin" and target in BG_FORMATS:
        result = await _to_format(env, result, target, "Real-ESRGAN")
    record = {"backend": name, "input": input_display, "output": output_display, "scale": scale, "model": model}
    return result, record


# ---------------------------------------------------------------------------------------------
# Colour (§5.5)


def _profiles(env: PassEnv, cfg: AdapterConfig) -> tuple[dict[str, Any], str, str]:
    """(profiles, where they come from as messages show it, the record's `settings`)."""
    if cfg.color_settings_file is None:
        return dict(color_image.BUILTIN_PROFILES), "builtin", "builtin"
    path = env.path(cfg.color_settings_file)
    profiles = color_image.load_profiles(path)
    return profiles, str(path), display_path(path, env.app_root)


def _correct(env: PassEnv, cfg: AdapterConfig, data: bytes, name: str) -> tuple[bytes, str]:
    profiles, source, settings = _profiles(env, cfg)
    profile = color_image.find_profile(profiles, name, source)
    try:
        return color_image.apply_profile(data, profile, "png"), settings
    except (OSError, ValueError) as error:
        raise PassError(f"color correction failed: {_describe(error)}") from None


async def color(
    env: PassEnv,
    cfg: AdapterConfig,
    data: bytes,
    *,
    input_display: str,
    output_display: str,
    profile: str,
) -> tuple[bytes, dict[str, Any]]:
    """Apply a colour profile (from `color.settings_file` under the app root, else the built-in
    ones; a blank name means `color.default_profile`). The output is PNG and keeps the alpha
    channel. Record `{input, output, profile, settings}` (`settings`: the settings file,
    app-root-relative, or `builtin`; messages name it by its full path, as `load_profiles` does)."""
    name = trim(profile) or cfg.color_default_profile
    try:
        result, settings = await _in_thread(env, _correct, env, cfg, data, name)
    except color_image.ColorError as error:
        raise PassError(error.message) from None
    record = {"input": input_display, "output": output_display, "profile": name, "settings": settings}
    return result, record
