"""The post-process pass adapters (pipeline spec §5.1 adapter parser, §5.3 background removal,
§5.4 upscale, §5.5 colour, §4.2 external-process timeout) against real local servers
(tests/fakes/bgremove_server.py, tests/fakes/openai_server.py) and real external processes (small
scripts standing in for rembg and Real-ESRGAN)."""

from __future__ import annotations

import io
import json
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image

from kroma.engine import passes
from kroma.engine.passes import (
    DEFAULT_REFINE_PROMPT,
    AdapterConfig,
    PassEnv,
    PassError,
    adapter_config,
    command_timeout_from,
    default_upscale_backend,
)
from tests.fakes.bgremove_server import FakeBgRemove
from tests.fakes.openai_server import FakeOpenAI

OPENAI_KEY = "sk-refine-0123456789SECRET"
PHOTOROOM_KEY = "pr-key-0123456789SECRET"
REMOVEBG_KEY = "rb-key-0123456789SECRET"


def subject_png(size: tuple[int, int] = (24, 16)) -> bytes:
    """A red square on a white backdrop: `builtin` removes the backdrop, keeps the square."""
    image = Image.new("RGB", size, (255, 255, 255))
    width, height = size
    image.paste((200, 20, 20), (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def rgba_png(size: tuple[int, int] = (10, 6)) -> bytes:
    """A half-transparent RGBA image (what a refine might answer)."""
    image = Image.new("RGBA", size, (10, 200, 10, 255))
    image.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def alpha_range(data: bytes) -> tuple[int, int]:
    image = opened(data)
    assert image.mode == "RGBA", image.mode
    low, high = image.getchannel("A").getextrema()
    return int(low), int(high)


def script(path: Path, body: str, interpreter: str = sys.executable) -> Path:
    """An executable script (default: this Python, so it can use Pillow)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{interpreter}\n{body}", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def app_root(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    (root / "bin").mkdir(parents=True)
    return root


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


class Envs:
    """Builds PassEnvs over one app root (PATH = `<app root>/bin` only) and closes them."""

    def __init__(self, app_root: Path, sleep: RecordingSleep) -> None:
        self.app_root = app_root
        self.sleep = sleep
        self.made: list[PassEnv] = []

    def __call__(self, extra: dict[str, str] | None = None, **options: Any) -> PassEnv:
        env = {"PATH": str(self.app_root / "bin"), **(extra or {})}
        options.setdefault("sleep", self.sleep)
        made = PassEnv(self.app_root, env, anyio.CapacityLimiter(2), **options)
        self.made.append(made)
        return made


@pytest.fixture
async def make_env(app_root: Path, sleep: RecordingSleep) -> AsyncIterator[Envs]:
    envs = Envs(app_root, sleep)
    yield envs
    for env in envs.made:
        await env.aclose()


@pytest.fixture
def bg_fake() -> Iterator[FakeBgRemove]:
    with FakeBgRemove(removebg_key=REMOVEBG_KEY, photoroom_key=PHOTOROOM_KEY) as server:
        yield server


@pytest.fixture
def openai_fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=OPENAI_KEY) as server:
        yield server


def http_config(fake: FakeBgRemove, **bg: Any) -> AdapterConfig:
    return adapter_config(
        {
            "bg_remove": {
                "photoroom": {"endpoint": fake.photoroom_url},
                "removebg": {"endpoint": fake.removebg_url},
                **bg,
            }
        }
    )


async def remove(
    env: PassEnv,
    cfg: AdapterConfig,
    backends: list[str],
    *,
    data: bytes | None = None,
    fmt: str = "png",
    refine: bool = False,
    refine_required: bool = False,
) -> tuple[bytes, dict[str, Any]]:
    return await passes.background_remove(
        env,
        cfg,
        subject_png() if data is None else data,
        input_name="scene_01.png",
        input_display="projects/demo/outputs/scene_01.png",
        output_display="projects/demo/background_removed/scene_01_nobg.png",
        backends=backends,
        fmt=fmt,
        refine=refine,
        refine_required=refine_required,
    )


async def remove_error(env: PassEnv, cfg: AdapterConfig, backends: list[str], **kwargs: Any) -> PassError:
    with pytest.raises(PassError) as caught:
        await remove(env, cfg, backends, **kwargs)
    assert str(caught.value) == caught.value.message
    return caught.value


FAILED = "Background remove failed for projects/demo/outputs/scene_01.png. "


# --- installation and environment ----------------------------------------------------------------

PYTHON_SCRIPT = "tools/realesrgan-python/src/Real-ESRGAN/inference_realesrgan.py"
NCNN_BINARY = "tools/realesrgan/realesrgan-ncnn-vulkan"


@pytest.mark.parametrize(
    ("installed", "expected"),
    [((), "builtin"), ((NCNN_BINARY,), "ncnn"), ((PYTHON_SCRIPT,), "python"), ((PYTHON_SCRIPT, NCNN_BINARY), "python")],
)
def test_default_upscale_backend_is_python_then_ncnn_then_builtin(
    tmp_path: Path, installed: tuple[str, ...], expected: str
) -> None:
    for item in installed:
        (tmp_path / item).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / item).write_bytes(b"")
    (tmp_path / "tools/realesrgan-python/src/Real-ESRGAN/other.py").parent.mkdir(parents=True, exist_ok=True)
    assert default_upscale_backend(tmp_path) == expected


def test_command_timeout_comes_from_the_environment_with_a_300_second_default(app_root: Path) -> None:
    assert command_timeout_from({}) == 300
    assert command_timeout_from({"KROMA_COMMAND_TIMEOUT_SECONDS": " 12 "}) == 12
    assert command_timeout_from({"KROMA_COMMAND_TIMEOUT_SECONDS": "0.5"}) == 0.5
    for bad in ("", "abc", "0", "-3", "nan", "inf"):
        assert command_timeout_from({"KROMA_COMMAND_TIMEOUT_SECONDS": bad}) == 300
    env = PassEnv(app_root, {"KROMA_COMMAND_TIMEOUT_SECONDS": "7"}, anyio.CapacityLimiter(1))
    assert env.command_timeout == 7
    assert PassEnv(app_root, {}, anyio.CapacityLimiter(1), command_timeout=2).command_timeout == 2


async def test_create_merges_the_dotenv_file_under_the_process_environment(app_root: Path) -> None:
    (app_root / ".env").write_text("REMOVE_BG_API_KEY=from-dotenv\nPHOTOROOM_API_KEY=dotenv\n", encoding="utf-8")
    env = await PassEnv.create(app_root, {"PHOTOROOM_API_KEY": "process"})
    async with env:
        assert env.env["REMOVE_BG_API_KEY"] == "from-dotenv"
        assert env.env["PHOTOROOM_API_KEY"] == "process"
        assert "process" not in repr(env)
        client = env.client()
    assert client.is_closed  # an owned client is closed with the env


# --- the adapter parser (§5.1, lenient) -----------------------------------------------------------


def test_adapter_defaults_match_the_table() -> None:
    cfg = adapter_config(None)
    assert cfg == adapter_config({}) == AdapterConfig()
    assert cfg.upscale_backend is None  # resolved by installation
    assert (cfg.upscale_scale, cfg.upscale_format, cfg.upscale_tile) == (2, "png", 0)
    assert cfg.upscale_binary == "tools/realesrgan/realesrgan-ncnn-vulkan"
    assert (cfg.upscale_model_dir, cfg.upscale_model_name) == ("tools/realesrgan/models", "realesrgan-x4plus")
    assert cfg.python_bin == "tools/realesrgan-python/.venv/bin/python"
    assert cfg.python_inference_script == PYTHON_SCRIPT
    assert (cfg.python_model_name, cfg.python_tile, cfg.python_tile_pad, cfg.python_pre_pad) == (
        "RealESRGAN_x4plus", 0, 10, 0,
    )
    assert (cfg.python_fp32, cfg.python_gpu_id) == (False, None)
    assert (cfg.color_default_profile, cfg.color_settings_file) == ("neutral", None)
    assert cfg.bg_backends == ("rembg", "builtin")  # one default chain for planner and adapters
    assert (cfg.bg_format, cfg.bg_size, cfg.bg_crop) == ("png", "auto", False)
    assert (cfg.rembg_python_bin, cfg.rembg_model) == ("python3", "birefnet-general")
    assert (cfg.photoroom_endpoint, cfg.photoroom_api_key_env) == (
        "https://sdk.photoroom.com/v1/segment", "PHOTOROOM_API_KEY",
    )
    assert (cfg.removebg_endpoint, cfg.removebg_api_key_env) == (
        "https://api.remove.bg/v1.0/removebg", "REMOVE_BG_API_KEY",
    )
    assert (cfg.openai_enabled, cfg.openai_required, cfg.openai_api_key_env) == (True, False, "OPENAI_API_KEY")
    assert (cfg.openai_model, cfg.openai_quality) == (None, None)
    assert (cfg.openai_input_fidelity, cfg.openai_background) == ("high", "transparent")
    assert cfg.openai_prompt == DEFAULT_REFINE_PROMPT


def test_adapter_reads_every_key() -> None:
    cfg = adapter_config(
        {
            "upscale": {
                "backend": " NCNN ", "scale": 4, "format": "WEBP", "tile": 128, "binary": "bin/esr",
                "model_dir": "m", "model_name": "anime",
                "python": {"python_bin": "python3", "inference_script": "s.py", "model_name": "X2",
                           "tile": 64, "tile_pad": 5, "pre_pad": 2, "fp32": True, "gpu_id": 1},
            },
            "color": {"default_profile": "cold_rain", "settings_file": "config/color.json"},
            "bg_remove": {
                "backends": [" PhotoRoom ", "builtin"], "format": "jpeg", "size": "preview", "crop": True,
                "rembg": {"python_bin": "py", "model": "u2net"},
                "photoroom": {"endpoint": "http://p", "api_key_env": "PR"},
                "removebg": {"endpoint": "http://r", "api_key_env": "RB"},
                "openai": {"enabled": False, "required": True, "api_key_env": "OK", "model": "m",
                           "quality": "low", "input_fidelity": "low", "background": "opaque", "prompt": "p"},
            },
        }
    )
    assert (cfg.upscale_backend, cfg.upscale_scale, cfg.upscale_format, cfg.upscale_tile) == ("ncnn", 4, "webp", 128)
    assert (cfg.upscale_binary, cfg.upscale_model_dir, cfg.upscale_model_name) == ("bin/esr", "m", "anime")
    assert (cfg.python_bin, cfg.python_inference_script, cfg.python_model_name) == ("python3", "s.py", "X2")
    assert (cfg.python_tile, cfg.python_tile_pad, cfg.python_pre_pad, cfg.python_fp32, cfg.python_gpu_id) == (
        64, 5, 2, True, 1,
    )
    assert (cfg.color_default_profile, cfg.color_settings_file) == ("cold_rain", "config/color.json")
    assert cfg.bg_backends == ("photoroom", "builtin")
    assert (cfg.bg_format, cfg.bg_size, cfg.bg_crop) == ("jpg", "preview", True)
    assert (cfg.rembg_python_bin, cfg.rembg_model) == ("py", "u2net")
    assert (cfg.photoroom_endpoint, cfg.photoroom_api_key_env) == ("http://p", "PR")
    assert (cfg.removebg_endpoint, cfg.removebg_api_key_env) == ("http://r", "RB")
    assert (cfg.openai_enabled, cfg.openai_required, cfg.openai_api_key_env) == (False, True, "OK")
    assert (cfg.openai_model, cfg.openai_quality, cfg.openai_input_fidelity) == ("m", "low", "low")
    assert (cfg.openai_background, cfg.openai_prompt) == ("opaque", "p")


def test_adapter_ignores_unusable_values_instead_of_failing() -> None:
    cfg = adapter_config(
        {
            "upscale": {"backend": "vulkan", "scale": 0, "format": "  ", "tile": -1, "binary": 5,
                        "python": {"tile_pad": "x", "fp32": "yes", "gpu_id": None}},
            "color": {"default_profile": "", "settings_file": 3},
            "bg_remove": {"backends": [], "format": "tiff", "size": None, "crop": "true",
                          "openai": {"enabled": "no", "prompt": "   "}},
        }
    )
    assert cfg == AdapterConfig()
    assert adapter_config({"upscale": [], "color": "x", "bg_remove": None}) == AdapterConfig()
    assert adapter_config({"upscale": {"scale": 256}}).upscale_scale == 2
    assert adapter_config({"upscale": {"scale": True}}).upscale_scale == 2
    assert adapter_config({"bg_remove": {"backends": ["", 5, " RemBG "]}}).bg_backends == ("rembg",)


def test_python_tile_inherits_the_upscale_tile_only_when_the_python_object_exists() -> None:
    assert adapter_config({"upscale": {"tile": 32, "python": {}}}).python_tile == 32
    assert adapter_config({"upscale": {"tile": 32, "python": {"tile": 8}}}).python_tile == 8
    assert adapter_config({"upscale": {"tile": 32}}).python_tile == 0


# --- background removal: the chain (§5.3) ---------------------------------------------------------


async def test_empty_backend_list_is_rejected(make_env: Envs) -> None:
    error = await remove_error(make_env(), AdapterConfig(), [])
    assert error.message == "background remove requires at least one backend"


async def test_unknown_backends_are_named_with_the_allowed_list(make_env: Envs) -> None:
    error = await remove_error(make_env(), AdapterConfig(), ["rembg", "bria", "u2net"])
    assert error.message == (
        "Unsupported background-remove backend(s): bria, u2net. Expected rembg|photoroom|removebg|builtin."
    )


async def test_builtin_cuts_the_backdrop_out_with_no_key_and_no_network(make_env: Envs) -> None:
    out, record = await remove(make_env(), AdapterConfig(), ["builtin"])
    assert alpha_range(out) == (0, 255)
    image = opened(out)
    assert image.getpixel((0, 0))[3] == 0  # backdrop
    assert image.getpixel((12, 8)) == (200, 20, 20, 255)  # subject
    assert record == {
        "input": "projects/demo/outputs/scene_01.png",
        "output": "projects/demo/background_removed/scene_01_nobg.png",
        "backend": "builtin",
        "backends_tried": ["builtin"],
        "refine_openai": False,
        "refine_error": None,
    }


async def test_missing_rembg_falls_back_to_builtin(make_env: Envs) -> None:
    out, record = await remove(make_env(), AdapterConfig(), list(AdapterConfig().bg_backends))
    assert (record["backend"], record["backends_tried"]) == ("builtin", ["rembg", "builtin"])
    assert alpha_range(out)[0] == 0


async def test_all_backends_failing_joins_every_message_in_order(make_env: Envs) -> None:
    error = await remove_error(make_env(), AdapterConfig(), ["rembg", "photoroom", "removebg"])
    assert error.message == (
        FAILED
        + "rembg: rembg executable not found on PATH | "
        "photoroom: Missing PHOTOROOM_API_KEY for background remove | "
        "removebg: Missing REMOVE_BG_API_KEY for background remove"
    )
    assert error.kind == "preflight"


async def test_builtin_failure_is_collected_like_any_other(make_env: Envs) -> None:
    error = await remove_error(make_env(), AdapterConfig(), ["builtin"], data=b"not an image")
    assert error.message.startswith(FAILED + "builtin: not a decodable image")


REMBG = """
import json, sys
from pathlib import Path
from PIL import Image
args = sys.argv[1:]
Path(__file__).with_name("rembg-args.json").write_text(json.dumps(args))
if Path(__file__).with_name("rembg-fail").exists():
    sys.stderr.write("\\nrembg: model download failed\\nTraceback ...\\n")
    sys.exit(2)
image = Image.open(args[3]).convert("RGBA")
image.putpixel((0, 0), (0, 0, 255, 0))
image.save(args[4], format="PNG")
"""


async def test_first_success_wins_and_later_backends_are_not_tried(make_env: Envs, app_root: Path) -> None:
    script(app_root / "bin" / "rembg", REMBG)
    _, record = await remove(make_env(), AdapterConfig(), ["builtin", "rembg"])
    assert (record["backend"], record["backends_tried"]) == ("builtin", ["builtin"])
    assert not (app_root / "bin" / "rembg-args.json").exists()


async def test_rembg_cli_is_called_with_the_model_and_its_output_converted_to_the_format(
    make_env: Envs, app_root: Path
) -> None:
    script(app_root / "bin" / "rembg", REMBG)
    cfg = adapter_config({"bg_remove": {"rembg": {"model": "u2net"}}})
    out, record = await remove(make_env(), cfg, ["rembg", "builtin"], fmt="jpeg")
    args = json.loads((app_root / "bin" / "rembg-args.json").read_text())
    assert args[:3] == ["i", "-m", "u2net"]
    assert args[3].endswith(".png") and args[4].endswith(".png")
    assert (record["backend"], record["backends_tried"]) == ("rembg", ["rembg"])
    image = opened(out)  # HEAD wrote rembg's PNG under a .jpg name; we convert (flattened on white)
    assert (image.format, image.mode) == ("JPEG", "RGB")
    assert all(abs(a - b) <= 8 for a, b in zip(image.getpixel((0, 0)), (255, 255, 255), strict=True))


async def test_rembg_failure_reports_its_first_stderr_line_and_the_chain_goes_on(
    make_env: Envs, app_root: Path
) -> None:
    script(app_root / "bin" / "rembg", REMBG)
    (app_root / "bin" / "rembg-fail").write_text("", encoding="utf-8")
    error = await remove_error(make_env(), AdapterConfig(), ["rembg"])
    assert error.message == FAILED + "rembg: rembg: model download failed"
    _, record = await remove(make_env(), AdapterConfig(), ["rembg", "builtin"])
    assert record["backends_tried"] == ["rembg", "builtin"]


async def test_rembg_timeout_is_a_chain_failure(make_env: Envs, app_root: Path) -> None:
    script(app_root / "bin" / "rembg", "sleep 30\n", interpreter="/bin/sh")
    started = time.monotonic()
    error = await remove_error(make_env(command_timeout=0.3), AdapterConfig(), ["rembg"])
    assert error.message == FAILED + "rembg: Command timed out after 0.3 seconds"
    assert time.monotonic() - started < 5


# --- background removal: PhotoRoom and remove.bg over HTTP ----------------------------------------


async def test_photoroom_request_shape_and_cut_out(make_env: Envs, bg_fake: FakeBgRemove) -> None:
    env = make_env({"PHOTOROOM_API_KEY": PHOTOROOM_KEY})
    out, record = await remove(env, http_config(bg_fake), ["photoroom", "builtin"])
    assert (record["backend"], record["backends_tried"]) == ("photoroom", ["photoroom"])
    (request,) = bg_fake.requests
    assert (request.method, request.service, request.status) == ("POST", "photoroom", 200)
    assert "x-api-key" in request.header_names  # PhotoRoom's spelling
    assert request.api_key == PHOTOROOM_KEY
    assert request.fields == [("format", "png")]  # size auto: not sent; crop false: not sent
    (part,) = request.files
    assert (part.name, part.filename, part.content_type) == ("image_file", "scene_01.png", "image/png")
    assert part.data == subject_png()
    assert alpha_range(out) == (0, 255)


async def test_removebg_sends_size_format_and_crop_with_its_header_spelling(
    make_env: Envs, bg_fake: FakeBgRemove
) -> None:
    env = make_env({"MY_RB_KEY": REMOVEBG_KEY})
    cfg = http_config(bg_fake, size="preview", crop=True, removebg={"endpoint": bg_fake.removebg_url,
                                                                      "api_key_env": "MY_RB_KEY"})
    out, record = await remove(env, cfg, ["removebg"], fmt="webp")
    (request,) = bg_fake.served("removebg")
    assert "X-Api-Key" in request.header_names
    assert request.fields == [("size", "preview"), ("format", "webp"), ("crop", "true")]
    assert record["backend"] == "removebg"
    image = opened(out)
    assert (image.format, image.mode) == ("WEBP", "RGBA")


async def test_http_backend_without_its_key_is_not_called(make_env: Envs, bg_fake: FakeBgRemove) -> None:
    cfg = http_config(bg_fake, photoroom={"endpoint": bg_fake.photoroom_url, "api_key_env": "PR_KEY"})
    error = await remove_error(make_env(), cfg, ["photoroom"])
    assert error.message == FAILED + "photoroom: Missing PR_KEY for background remove"
    assert bg_fake.requests == []


async def test_http_error_status_and_body_are_reported_without_the_key(
    make_env: Envs, bg_fake: FakeBgRemove
) -> None:
    env = make_env({"REMOVE_BG_API_KEY": REMOVEBG_KEY, "PHOTOROOM_API_KEY": "wrong"})
    bg_fake.enqueue("removebg", ("status", 402, f"no credits left for {REMOVEBG_KEY}"))
    error = await remove_error(env, http_config(bg_fake), ["removebg", "photoroom"])
    assert error.message == (
        FAILED + "removebg: HTTP 402: no credits left for *** | "
        'photoroom: HTTP 401: {"detail": "Invalid API key"}'
    )
    assert REMOVEBG_KEY not in error.message


async def test_http_backend_retries_a_server_error(
    make_env: Envs, bg_fake: FakeBgRemove, sleep: RecordingSleep
) -> None:
    env = make_env({"REMOVE_BG_API_KEY": REMOVEBG_KEY})
    bg_fake.enqueue("removebg", ("status", 503, "busy"))
    _, record = await remove(env, http_config(bg_fake), ["removebg"])
    assert record["backend"] == "removebg"
    assert [r.status for r in bg_fake.requests] == [503, 200]
    assert len(sleep.delays) == 1


async def test_http_answer_in_another_format_is_converted(make_env: Envs, bg_fake: FakeBgRemove) -> None:
    env = make_env({"REMOVE_BG_API_KEY": REMOVEBG_KEY})
    bg_fake.enqueue("removebg", ("image", rgba_png()))
    out, _ = await remove(env, http_config(bg_fake), ["removebg"], fmt="jpg")
    assert opened(out).format == "JPEG"


# --- background removal: OpenAI refine ------------------------------------------------------------


async def test_refine_sends_the_cut_out_with_every_field_and_uses_the_answer(
    make_env: Envs, openai_fake: FakeOpenAI
) -> None:
    env = make_env(openai_key=OPENAI_KEY, openai_base_url=openai_fake.base_url)
    refined = rgba_png()
    openai_fake.enqueue(("image", refined))
    out, record = await remove(env, AdapterConfig(), ["builtin"], refine=True, refine_required=True)
    (request,) = openai_fake.edit_requests
    assert request.authorization == f"Bearer {OPENAI_KEY}"
    assert request.fields == [
        ("model", "gpt-image-1"),
        ("prompt", DEFAULT_REFINE_PROMPT),
        ("quality", "high"),
        ("input_fidelity", "high"),
        ("output_format", "png"),
        ("background", "transparent"),
    ]
    (part,) = request.files
    assert (part.name, part.filename, part.content_type) == ("image[]", "scene_01.png", "image/png")
    assert alpha_range(part.data) == (0, 255)  # the cut-out, not the original
    assert out == refined
    assert (record["refine_openai"], record["refine_error"]) == (True, None)


async def test_refine_settings_come_from_the_config_then_the_environment(
    make_env: Envs, openai_fake: FakeOpenAI
) -> None:
    env = make_env(
        {"MY_OPENAI": OPENAI_KEY, "OPENAI_BASE_URL": openai_fake.base_url,
         "OPENAI_IMAGE_MODEL": "gpt-image-1.5", "OPENAI_IMAGE_QUALITY": "medium"}
    )
    cfg = adapter_config({"bg_remove": {"openai": {"api_key_env": "MY_OPENAI", "quality": "low",
                                                   "background": "auto", "prompt": "Clean it."}}})
    openai_fake.enqueue(("image", rgba_png()))
    out, record = await remove(env, cfg, ["builtin"], fmt="webp", refine=True)
    (request,) = openai_fake.edit_requests
    assert request.form == {
        "model": "gpt-image-1.5", "prompt": "Clean it.", "quality": "low", "input_fidelity": "high",
        "output_format": "webp", "background": "auto",
    }
    assert (request.files[0].filename, request.files[0].content_type) == ("scene_01.webp", "image/webp")
    assert opened(out).format == "WEBP"
    assert record["refine_openai"] is True


async def test_required_refine_failure_aborts_with_its_message(make_env: Envs, openai_fake: FakeOpenAI) -> None:
    env = make_env(openai_key=OPENAI_KEY, openai_base_url=openai_fake.base_url)
    openai_fake.enqueue(("status", 400, {}, "bad image"))
    error = await remove_error(env, AdapterConfig(), ["builtin"], refine=True, refine_required=True)
    assert error.message == "OpenAI refine failed for projects/demo/outputs/scene_01.png: HTTP 400: bad image"


async def test_optional_refine_failure_keeps_the_cut_out_and_records_the_error(
    make_env: Envs, openai_fake: FakeOpenAI
) -> None:
    env = make_env(openai_key=OPENAI_KEY, openai_base_url=openai_fake.base_url)
    openai_fake.enqueue(("no_image",))
    out, record = await remove(env, AdapterConfig(), ["builtin"], refine=True, refine_required=False)
    assert (record["refine_openai"], record["refine_error"]) == (False, "OpenAI refine returned no image payload")
    cut_out, _ = await remove(env, AdapterConfig(), ["builtin"])
    assert out == cut_out


async def test_refine_without_a_key(make_env: Envs, openai_fake: FakeOpenAI) -> None:
    env = make_env(openai_base_url=openai_fake.base_url)
    error = await remove_error(env, AdapterConfig(), ["builtin"], refine=True, refine_required=True)
    assert error.message == (
        "OpenAI refine failed for projects/demo/outputs/scene_01.png: "
        "Missing OPENAI_API_KEY for OpenAI background refinement"
    )
    _, record = await remove(env, AdapterConfig(), ["builtin"], refine=True)
    assert record["refine_error"] == "Missing OPENAI_API_KEY for OpenAI background refinement"
    assert openai_fake.requests == []


async def test_refine_error_body_never_carries_the_key(make_env: Envs, openai_fake: FakeOpenAI) -> None:
    env = make_env(openai_key=OPENAI_KEY, openai_base_url=openai_fake.base_url, max_attempts=1)
    openai_fake.enqueue(("status", 500, {}, f"upstream echoed {OPENAI_KEY}"))
    _, record = await remove(env, AdapterConfig(), ["builtin"], refine=True)
    assert record["refine_error"] == "HTTP 500: upstream echoed ***"


# --- upscale (§5.4) --------------------------------------------------------------------------------


async def up(env: PassEnv, cfg: AdapterConfig, backend: str, data: bytes, scale: int = 2, fmt: str = "png") -> tuple[bytes, dict[str, Any]]:
    return await passes.upscale(
        env, cfg, data, input_display="in.png", output_display="out.png", backend=backend, scale=scale, fmt=fmt
    )


async def up_error(env: PassEnv, cfg: AdapterConfig, backend: str, **kwargs: Any) -> PassError:
    with pytest.raises(PassError) as caught:
        await up(env, cfg, backend, subject_png(), **kwargs)
    return caught.value


async def test_builtin_upscale_scales_exactly_and_keeps_alpha(make_env: Envs) -> None:
    out, record = await up(make_env(), AdapterConfig(), "builtin", rgba_png((10, 6)), scale=3)
    image = opened(out)
    assert (image.format, image.size, image.mode) == ("PNG", (30, 18), "RGBA")
    assert alpha_range(out) == (0, 255)
    assert record == {"backend": "builtin", "input": "in.png", "output": "out.png", "scale": 3, "model": "lanczos"}
    out, _ = await up(make_env(), AdapterConfig(), " BUILTIN ", subject_png(), fmt="jpeg")
    assert opened(out).format == "JPEG"


async def test_unknown_upscale_backend(make_env: Envs) -> None:
    error = await up_error(make_env(), AdapterConfig(), "vulkan")
    assert error.message == "invalid upscale backend 'vulkan'. Expected ncnn|python|builtin."


async def test_ncnn_binary_and_models_must_exist(make_env: Envs, app_root: Path) -> None:
    error = await up_error(make_env(), AdapterConfig(), "ncnn")
    assert error.message == f"Real-ESRGAN binary not found: {app_root}/tools/realesrgan/realesrgan-ncnn-vulkan"
    script(app_root / NCNN_BINARY, "")
    error = await up_error(make_env(), AdapterConfig(), "ncnn")
    assert error.message == f"Real-ESRGAN models dir not found: {app_root}/tools/realesrgan/models"


async def test_python_inference_script_must_exist(make_env: Envs, app_root: Path) -> None:
    error = await up_error(make_env(), AdapterConfig(), "python")
    assert error.message == (
        f"Real-ESRGAN python inference script not found: {app_root}/{PYTHON_SCRIPT}. "
        "Run: bash scripts/setup-realesrgan-python.sh"
    )


NCNN = """
import json, sys
from pathlib import Path
from PIL import Image
args = sys.argv[1:]
Path(__file__).with_name("ncnn-args.json").write_text(json.dumps(args))
opts = dict(zip(args[::2], args[1::2]))
image = Image.open(opts["-i"])
scale = int(opts["-s"])
image.resize((image.width * scale, image.height * scale)).save(opts["-o"], format=opts["-f"].upper().replace("JPG", "JPEG"))
"""


async def test_ncnn_runs_the_binary_with_the_reference_flags(make_env: Envs, app_root: Path) -> None:
    script(app_root / NCNN_BINARY, NCNN)
    (app_root / "tools/realesrgan/models").mkdir()
    cfg = adapter_config({"upscale": {"tile": 256}})
    out, record = await up(make_env(), cfg, "ncnn", subject_png((8, 5)), scale=4, fmt="webp")
    args = json.loads((app_root / "tools/realesrgan/ncnn-args.json").read_text())
    assert args[0] == "-i" and args[1].endswith(".png")
    assert args[2] == "-o" and args[3].endswith(".webp")
    assert args[4:] == ["-s", "4", "-m", str(app_root / "tools/realesrgan/models"), "-n", "realesrgan-x4plus",
                        "-f", "webp", "-t", "256"]
    image = opened(out)
    assert (image.format, image.size) == ("WEBP", (32, 20))
    assert record == {"backend": "ncnn", "input": "in.png", "output": "out.png", "scale": 4, "model": "realesrgan-x4plus"}


INFERENCE = """
import json, os, sys
from pathlib import Path
from PIL import Image
args = sys.argv[1:]
Path(__file__).with_name("python-args.json").write_text(json.dumps({"args": args, "cwd": os.getcwd()}))
opts = {}
i = 0
while i < len(args):
    if args[i] == "--fp32":
        i += 1
        continue
    opts[args[i]] = args[i + 1]
    i += 2
image = Image.open(opts["--input"])
scale = int(opts["--outscale"])
name = Path(opts["--input"]).stem + ("_" + opts["--suffix"] if opts["--suffix"] else "")
image.resize((image.width * scale, image.height * scale)).save(Path(opts["--output"]) / (name + "." + opts["--ext"]))
"""


async def test_python_backend_calls_upstream_real_esrgan_and_takes_its_one_output(
    make_env: Envs, app_root: Path
) -> None:
    script(app_root / PYTHON_SCRIPT, INFERENCE)
    cfg = adapter_config({"upscale": {"python": {"python_bin": sys.executable, "tile": 64, "fp32": True, "gpu_id": 0}}})
    out, record = await up(make_env(), cfg, "python", subject_png((8, 5)), scale=2, fmt="jpg")
    seen = json.loads((app_root / "tools/realesrgan-python/src/Real-ESRGAN/python-args.json").read_text())
    args = seen["args"]
    assert args[0] == "--input" and args[1].endswith(".png")
    assert args[2] == "--output"
    assert args[4:] == [
        "--model_name", "RealESRGAN_x4plus", "--outscale", "2", "--tile", "64", "--tile_pad", "10",
        "--pre_pad", "0", "--suffix", "", "--ext", "png", "--fp32", "--gpu-id", "0",
    ]
    assert seen["cwd"] == str(app_root / "tools/realesrgan-python/src/Real-ESRGAN")  # where weights/ lives
    image = opened(out)
    assert (image.format, image.size) == ("JPEG", (16, 10))
    assert record["model"] == "RealESRGAN_x4plus"


def process_gone(pid: int) -> bool:
    """No such process, or only a zombie left (killed, not yet reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


async def test_external_process_timeout_kills_it_and_its_children_with_the_spec_message(
    make_env: Envs, app_root: Path
) -> None:
    script(app_root / PYTHON_SCRIPT, "")
    child_pid = app_root / "child.pid"
    sleeper = script(
        app_root / "bin" / "slow-python", f"sleep 30 &\necho $! > {child_pid}\nwait\n", interpreter="/bin/sh"
    )
    cfg = adapter_config({"upscale": {"python": {"python_bin": str(sleeper)}}})
    started = time.monotonic()
    error = await up_error(make_env(command_timeout=0.25), cfg, "python")
    assert time.monotonic() - started < 5
    assert (error.message, error.kind, error.exit_code) == ("Command timed out after 0.25 seconds", "command", -1)
    pid = int(child_pid.read_text())
    for _ in range(150):  # the tool's own child is killed too (its process group); allow 3 s
        if process_gone(pid):
            break
        await anyio.sleep(0.02)
    assert process_gone(pid)


async def test_external_process_failure_reports_the_first_stderr_line(make_env: Envs, app_root: Path) -> None:
    script(app_root / PYTHON_SCRIPT, "import sys\nsys.stderr.write('weights missing: RealESRGAN_x4plus\\nmore\\n')\nsys.exit(3)\n")
    cfg = adapter_config({"upscale": {"python": {"python_bin": sys.executable}}})
    error = await up_error(make_env(), cfg, "python")
    assert (error.message, error.kind, error.exit_code) == ("weights missing: RealESRGAN_x4plus", "command", 3)


async def test_missing_interpreter_is_an_io_error(make_env: Envs, app_root: Path) -> None:
    script(app_root / PYTHON_SCRIPT, "")
    cfg = adapter_config({"upscale": {"python": {"python_bin": "no-such-python-kroma"}}})
    error = await up_error(make_env(), cfg, "python")
    assert error.kind == "io"
    assert error.message.startswith("failed to run no-such-python-kroma: ")


# --- colour (§5.5) ---------------------------------------------------------------------------------


async def paint(env: PassEnv, cfg: AdapterConfig, data: bytes, profile: str) -> tuple[bytes, dict[str, Any]]:
    return await passes.color(env, cfg, data, input_display="in.png", output_display="out.png", profile=profile)


async def test_builtin_profile_gives_png_and_keeps_alpha(make_env: Envs) -> None:
    out, record = await paint(make_env(), AdapterConfig(), rgba_png(), "cinematic_warm")
    assert opened(out).format == "PNG"
    assert alpha_range(out) == (0, 255)
    assert record == {"input": "in.png", "output": "out.png", "profile": "cinematic_warm", "settings": "builtin"}
    _, record = await paint(make_env(), adapter_config({"color": {"default_profile": "cold_rain"}}), rgba_png(), " ")
    assert record["profile"] == "cold_rain"  # a blank name means the configured default


async def test_profiles_from_the_settings_file(make_env: Envs, app_root: Path) -> None:
    (app_root / "config").mkdir()
    (app_root / "config/color.json").write_text(json.dumps({"profiles": {"dark": {"brightness": 0.5}}}))
    cfg = adapter_config({"color": {"settings_file": "config/color.json"}})
    source = Image.new("RGB", (4, 4), (200, 100, 50))
    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    out, record = await paint(make_env(), cfg, buffer.getvalue(), "dark")
    assert opened(out).getpixel((0, 0)) == (100, 50, 25)
    assert record["settings"] == "config/color.json"
    with pytest.raises(PassError) as caught:
        await paint(make_env(), cfg, buffer.getvalue(), "neutral")  # the file replaces the built-ins
    assert caught.value.message == f"Profile 'neutral' not found in {app_root}/config/color.json"


async def test_unknown_builtin_profile_and_missing_settings_file(make_env: Envs, app_root: Path) -> None:
    with pytest.raises(PassError) as caught:
        await paint(make_env(), AdapterConfig(), rgba_png(), "sepia")
    assert caught.value.message == "Profile 'sepia' not found in builtin"
    cfg = adapter_config({"color": {"settings_file": "config/absent.json"}})
    with pytest.raises(PassError) as caught:
        await paint(make_env(), cfg, rgba_png(), "neutral")
    assert caught.value.message == f"missing color settings file: {app_root}/config/absent.json"


# --- the whole chain -------------------------------------------------------------------------------


async def test_alpha_survives_bg_remove_then_upscale_then_color(make_env: Envs) -> None:
    env = make_env()
    cfg = AdapterConfig()
    cut, _ = await remove(env, cfg, ["rembg", "builtin"])
    big, _ = await up(env, cfg, "builtin", cut, scale=2)
    final, _ = await paint(env, cfg, big, "neutral")
    image = opened(final)
    assert (image.size, image.mode) == ((48, 32), "RGBA")
    assert image.getpixel((0, 0))[3] == 0
    assert image.getpixel((24, 16))[3] == 255
