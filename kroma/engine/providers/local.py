"""The embedded offline provider: renders an ink drawing of the scene (kroma.imaging.ink), with no
network and no key, deterministically for a given request."""

from __future__ import annotations

import io
import re
from pathlib import Path

import anyio
import anyio.to_thread
from PIL import Image

from kroma.engine.providers.base import GenerationRequest, GenerationResult, ProviderError
from kroma.imaging.ink import render_ink

MODEL = "kroma-ink-1"
QUALITY = "standard"
MAX_SIDE = 8192
_SIZE = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")


def parse_size(size: str | None) -> tuple[int, int] | None:
    """`"WIDTHxHEIGHT"` as (width, height); None for no size or `auto` (the scene's size)."""
    if size is None or size.strip().lower() in ("", "auto"):
        return None
    match = _SIZE.fullmatch(size)
    if match is None:
        raise ProviderError(f"invalid size '{size}': expected WIDTHxHEIGHT")
    width, height = int(match.group(1)), int(match.group(2))
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ProviderError(f"invalid size '{size}': each side must be 1..{MAX_SIDE}")
    return width, height


def _read_inputs(paths: tuple[str, ...]) -> list[bytes]:
    images: list[bytes] = []
    for path in paths:
        try:
            images.append(Path(path).read_bytes())
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ProviderError(f"generate-one input image not found: {path}") from exc
    return images


def _render(request: GenerationRequest, size: tuple[int, int] | None) -> tuple[bytes, tuple[int, int]]:
    """Read the inputs and render (in a worker thread): the PNG and its (width, height)."""
    if not request.input_images:
        raise ProviderError("generate-one --input-images-file contains no image paths")
    scene, *style_refs = _read_inputs(request.input_images)
    try:
        png = render_ink(scene, style_refs, request.prompt, request.seed, size)
    except ValueError as exc:
        raise ProviderError(
            f"generate-one input image could not be decoded: {request.input_images[0]}: {exc}"
        ) from exc
    with Image.open(io.BytesIO(png)) as rendered:
        return png, rendered.size


class LocalProvider:
    """Provider `local`: one ink rendering per call, in a worker thread bounded by `limiter`."""

    code = "local"

    def __init__(self, limiter: anyio.CapacityLimiter | None = None) -> None:
        self.limiter = limiter

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """The candidate image for `request`: the same request always gives the same bytes.
        Raises ProviderError with the contract's messages (empty prompt, missing input image)."""
        if not request.prompt.strip():
            raise ProviderError("generate-one requires non-empty prompt")
        size = parse_size(request.size)
        png, (width, height) = await anyio.to_thread.run_sync(_render, request, size, limiter=self.limiter)
        size_text = f"{width}x{height}"
        return GenerationResult(
            image=png,
            provider=self.code,
            model=MODEL,
            size=size_text,
            quality=QUALITY,
            seed=request.seed,
            parameters={"seed": request.seed, "size": size_text, "model": MODEL, "quality": QUALITY},
        )

    async def aclose(self) -> None:
        """Nothing to release: the provider holds no connection."""
