"""The offline `local` provider: reads the inputs, renders in a worker thread, reports the call."""

from __future__ import annotations

import io
from pathlib import Path

import anyio
import pytest
from PIL import Image, ImageDraw

from kroma.engine.providers.base import GenerationRequest, Provider, ProviderError
from kroma.engine.providers.local import LocalProvider


def write_png(path: Path, image: Image.Image) -> str:
    image.save(path, format="PNG")
    return str(path)


@pytest.fixture
def scene(tmp_path: Path) -> str:
    image = Image.new("RGB", (120, 180), (200, 190, 170))
    ImageDraw.Draw(image).rectangle([20, 60, 90, 170], fill=(60, 50, 40))
    return write_png(tmp_path / "scene.png", image)


def request(
    *paths: str, prompt: str = "a street at dusk", seed: int = 7, size: str | None = None
) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, input_images=tuple(paths), seed=seed, size=size)


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


async def test_result_describes_the_local_call(scene: str) -> None:
    result = await LocalProvider().generate(request(scene))
    assert result.provider == "local"
    assert result.model == "kroma-ink-1"
    assert result.quality == "standard"
    assert result.size == "120x180"
    assert result.seed == 7
    assert result.parameters["seed"] == 7 and result.parameters["size"] == "120x180"
    image = decoded(result.image)
    assert image.format == "PNG" and image.size == (120, 180)


async def test_requested_size_is_honoured(scene: str) -> None:
    result = await LocalProvider().generate(request(scene, size="64x96"))
    assert result.size == "64x96"
    assert decoded(result.image).size == (64, 96)


async def test_same_request_gives_the_same_image_and_seeds_differ(scene: str) -> None:
    provider = LocalProvider()
    first = await provider.generate(request(scene, seed=1))
    again = await provider.generate(request(scene, seed=1))
    other = await provider.generate(request(scene, seed=2))
    assert first.image == again.image
    assert first.image != other.image


async def test_style_references_after_the_scene_influence_the_drawing(scene: str, tmp_path: Path) -> None:
    dark = write_png(tmp_path / "dark.png", Image.new("L", (32, 32), 10))
    plain = await LocalProvider().generate(request(scene))
    styled = await LocalProvider().generate(request(scene, dark))
    assert plain.image != styled.image


async def test_missing_input_image_is_the_contract_error(scene: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.png")
    with pytest.raises(ProviderError) as caught:
        await LocalProvider().generate(request(scene, missing))
    assert caught.value.message == f"generate-one input image not found: {missing}"


@pytest.mark.parametrize("prompt", ["", "   "])
async def test_empty_prompt_is_the_contract_error(scene: str, prompt: str) -> None:
    with pytest.raises(ProviderError) as caught:
        await LocalProvider().generate(request(scene, prompt=prompt))
    assert caught.value.message == "generate-one requires non-empty prompt"


@pytest.mark.parametrize("size", ["big", "0x10", "10x99999"])
async def test_invalid_size_is_refused(scene: str, size: str) -> None:
    with pytest.raises(ProviderError, match="invalid size"):
        await LocalProvider().generate(request(scene, size=size))


async def test_undecodable_scene_is_a_provider_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ProviderError, match="could not be decoded"):
        await LocalProvider().generate(request(str(bad)))


async def test_rendering_waits_for_the_limiter(scene: str) -> None:
    limiter = anyio.CapacityLimiter(1)
    provider = LocalProvider(limiter=limiter)
    finished = anyio.Event()

    async def generate() -> None:
        await provider.generate(request(scene))
        finished.set()

    async with anyio.create_task_group() as group:
        async with limiter:  # hold the only token: the render cannot start
            group.start_soon(generate)
            await anyio.sleep(0.2)
            assert not finished.is_set()
        with anyio.fail_after(10):
            await finished.wait()


async def test_local_provider_satisfies_the_protocol(scene: str) -> None:
    provider: Provider = LocalProvider()
    assert provider.code == "local"
    await provider.aclose()
