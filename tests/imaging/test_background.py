"""The offline `builtin` background remover: border-connected flood fill with a colour tolerance."""

from __future__ import annotations

import io
from collections import deque

import numpy as np
import pytest
from PIL import Image, ImageDraw

from kroma.imaging.background import (
    background_alpha,
    background_colours,
    border_connected,
    remove_background,
    soft_edge,
)

GREEN = (40, 160, 60)
RED = (200, 40, 40)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rgba_of(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.mode == "RGBA"
    return np.asarray(image)


def subject_on_flat_background() -> Image.Image:
    """48 x 40 green; a red square (10..29, 10..29) with a green hole (17..22, 17..22)."""
    image = Image.new("RGB", (48, 40), GREEN)
    draw = ImageDraw.Draw(image)
    draw.rectangle([10, 10, 29, 29], fill=RED)
    draw.rectangle([17, 17, 22, 22], fill=GREEN)
    return image


def test_flat_background_becomes_transparent_and_the_subject_stays_opaque() -> None:
    out = rgba_of(remove_background(png(subject_on_flat_background())))
    alpha = out[..., 3]
    assert out.shape == (40, 48, 4)
    assert alpha[0, 0] == 0 and alpha[39, 47] == 0 and alpha[5, 30] == 0
    assert (alpha[:9, :] == 0).all() and (alpha[:, 31:] == 0).all()
    assert (alpha[11:29, 11:29] == 255).all()  # the square inside its 1 px edge, hole included
    assert out[12, 12, :3].tolist() == list(RED)
    assert out[0, 0, :3].tolist() == list(GREEN)  # the colour under alpha 0 is left alone


def test_a_hole_of_the_background_colour_inside_the_subject_stays_opaque() -> None:
    alpha = rgba_of(remove_background(png(subject_on_flat_background())))[..., 3]
    assert (alpha[17:23, 17:23] == 255).all()


def test_the_edge_is_softened_by_one_pixel() -> None:
    alpha = rgba_of(remove_background(png(subject_on_flat_background())))[..., 3]
    assert alpha[20, 10] == 170  # a straight edge: 6 of 9 neighbours are subject
    assert alpha[10, 10] == 113  # a corner: 4 of 9
    assert alpha[20, 11] == 255
    assert alpha[20, 9] == 0


def test_soft_edge_shares() -> None:
    background = np.ones((5, 5), dtype=bool)
    background[2, 2] = False
    alpha = soft_edge(background)
    assert alpha[2, 2] == 28  # alone: 1 of 9, rounded
    assert alpha.sum() == 28


def test_a_subject_touching_no_border_is_kept_whole() -> None:
    image = Image.new("RGB", (30, 30), (250, 250, 250))
    ImageDraw.Draw(image).ellipse([5, 5, 24, 24], fill=(20, 20, 20))
    alpha = rgba_of(remove_background(png(image)))[..., 3]
    subject = np.asarray(image)[..., 0] < 128
    assert (alpha[subject] > 0).all()
    assert (alpha[~subject] == 0).all()


def test_a_subject_crossing_the_border_is_not_taken_for_background() -> None:
    image = Image.new("RGB", (40, 40), (230, 230, 230))
    ImageDraw.Draw(image).rectangle([12, 15, 27, 39], fill=(30, 60, 200))  # touches the bottom
    alpha = rgba_of(remove_background(png(image)))[..., 3]
    assert (alpha[17:, 14:26] == 255).all()
    assert alpha[39, 20] == 255
    assert alpha[39, 5] == 0 and alpha[0, 20] == 0


def test_a_backdrop_split_by_a_full_height_subject_is_removed_on_both_sides() -> None:
    image = Image.new("RGB", (40, 30), (240, 240, 240))
    ImageDraw.Draw(image).rectangle([16, 0, 23, 29], fill=(10, 10, 10))
    alpha = rgba_of(remove_background(png(image)))[..., 3]
    assert (alpha[:, :14] == 0).all() and (alpha[:, 26:] == 0).all()
    assert (alpha[:, 17:23] == 255).all()


def test_a_gradient_backdrop_is_followed_along_the_border() -> None:
    ramp = np.linspace(40, 230, 120, dtype=np.float32)[:, None]
    pixels = np.repeat(np.stack([ramp, ramp * 0.8, ramp * 0.5 + 60], axis=-1), 80, axis=1)
    image = Image.fromarray(pixels.astype(np.uint8))
    ImageDraw.Draw(image).rectangle([25, 30, 54, 89], fill=(200, 20, 20))
    alpha = rgba_of(remove_background(png(image)))[..., 3]
    assert alpha[0, 0] == 0 and alpha[119, 0] == 0 and alpha[60, 79] == 0
    assert (alpha[32:88, 27:53] == 255).all()


def test_tolerance_is_a_euclidean_rgb_distance() -> None:
    image = Image.new("RGB", (30, 30), (100, 100, 100))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 10, 29, 12], fill=(112, 112, 112))  # distance 20.8: within 24
    draw.rectangle([0, 20, 29, 22], fill=(116, 116, 116))  # distance 27.7: beyond 24
    alpha = rgba_of(remove_background(png(image)))[..., 3]
    assert (alpha[11] == 0).all()
    assert (alpha[21] == 255).all()
    strict = rgba_of(remove_background(png(image), tolerance=0.0))[..., 3]
    assert (strict[11] > 0).all() and strict[5, 5] == 0


def test_a_region_enclosed_by_the_subject_is_kept_even_when_it_touches_a_diagonal_gap() -> None:
    mask = np.ones((7, 7), dtype=bool)
    mask[1:6, 1:6] = False
    mask[2:5, 2:5] = True  # an enclosed region of background-like pixels
    mask[1, 1] = True  # touches the outside only diagonally via (0, 0)... and (1, 0) is outside
    reached = border_connected(mask)
    assert reached[1, 1]  # 4-connected to (1, 0) on the border
    assert not reached[3, 3]


def flood(mask: np.ndarray) -> np.ndarray:
    """A plain breadth-first flood from the border, 4-connected: the reference for the fast one."""
    height, width = mask.shape
    seen = np.zeros_like(mask)
    queue: deque[tuple[int, int]] = deque()
    for y in range(height):
        for x in range(width):
            if (y in (0, height - 1) or x in (0, width - 1)) and mask[y, x]:
                seen[y, x] = True
                queue.append((y, x))
    while queue:
        y, x = queue.popleft()
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                seen[ny, nx] = True
                queue.append((ny, nx))
    return seen


@pytest.mark.parametrize("seed", range(6))
def test_border_connected_matches_a_breadth_first_flood(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    mask = rng.random(shape) < rng.uniform(0.3, 0.7)
    assert np.array_equal(border_connected(mask), flood(mask))


def test_a_spiral_corridor_is_followed_to_its_end() -> None:
    size = 41
    wall = np.zeros((size, size), dtype=bool)
    for i in range(0, size // 2, 2):  # concentric square walls, each with a gap
        wall[i, i : size - i] = wall[size - 1 - i, i : size - i] = True
        wall[i : size - i, i] = wall[i : size - i, size - 1 - i] = True
        wall[i + 1, i] = False  # the gap
    wall[0, :] = False  # the outer corridor is open to the border
    mask = ~wall
    assert np.array_equal(border_connected(mask), flood(mask))


def test_existing_transparency_is_kept_and_counts_as_background() -> None:
    pixels = np.zeros((20, 20, 4), dtype=np.uint8)
    pixels[..., :3] = (90, 90, 250)
    pixels[..., 3] = 255
    pixels[:, :4, 3] = 0  # a transparent band on the left, of the same colour as the subject
    pixels[6:14, 6:14] = (250, 250, 250, 120)  # a half-transparent white patch inside
    alpha = rgba_of(remove_background(png(Image.fromarray(pixels, "RGBA"))))[..., 3]
    assert (alpha[:, :4] == 0).all()
    assert (alpha[8:12, 8:12] == 120).all()  # never raised above the input's own alpha


def test_an_image_of_only_background_becomes_fully_transparent() -> None:
    alpha = rgba_of(remove_background(png(Image.new("RGB", (9, 5), (7, 8, 9)))))[..., 3]
    assert (alpha == 0).all()


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (7, 1), (2, 2)])
def test_tiny_images_do_not_break(size: tuple[int, int]) -> None:
    out = rgba_of(remove_background(png(Image.new("RGB", size, (1, 2, 3)))))
    assert out.shape == (size[1], size[0], 4)
    assert (out[..., 3] == 0).all()


def test_a_noisy_border_falls_back_to_the_median_colour() -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    colours = background_colours(rgb, np.full((30, 30), 255, np.uint8), 24.0)
    assert colours.shape == (1, 3)
    assert background_alpha(rgb).shape == (30, 30)


def test_jpg_output_is_the_cut_out_flattened_onto_white() -> None:
    data = remove_background(png(subject_on_flat_background()), fmt="jpg")
    assert data[:3] == b"\xff\xd8\xff"
    out = np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16)
    assert np.abs(out[2, 2] - 255).max() <= 6  # was green, now white paper (JPEG noise aside)
    assert np.abs(out[19, 13] - RED).max() <= 6
    assert np.abs(out[20, 20] - GREEN).max() <= 6  # the hole keeps its colour


def test_webp_output_keeps_the_alpha() -> None:
    image = Image.open(io.BytesIO(remove_background(png(subject_on_flat_background()), fmt="webp")))
    assert image.format == "WEBP" and image.mode == "RGBA"
    assert np.asarray(image)[0, 0, 3] == 0 and np.asarray(image)[15, 15, 3] == 255


def test_bad_inputs_are_value_errors() -> None:
    with pytest.raises(ValueError, match="not a"):
        remove_background(b"nope")
    with pytest.raises(ValueError, match="tolerance"):
        remove_background(png(Image.new("RGB", (2, 2))), tolerance=-1.0)
    with pytest.raises(ValueError, match="tolerance"):
        remove_background(png(Image.new("RGB", (2, 2))), tolerance=float("nan"))
    with pytest.raises(ValueError, match="unsupported image format"):
        remove_background(png(Image.new("RGB", (2, 2))), fmt="bmp")


def test_a_full_size_picture_goes_through() -> None:
    """Speed sanity at the pipeline's size (1024 x 1536) on a hatched, noisy drawing; not timed."""
    rng = np.random.default_rng(0)
    rows = np.arange(1536)[:, None]
    cols = np.arange(1024)[None, :]
    paper = np.where((rows + cols) % 9 < 2, 30, 250).astype(np.uint8)  # diagonal hatching
    paper[rng.random((1536, 1024)) < 0.01] = 0  # grain
    paper[300:1300, 200:800] = 20  # the subject
    alpha = background_alpha(np.repeat(paper[..., None], 3, axis=2))
    assert alpha[800, 500] == 255
    assert (alpha[:200] == 0).mean() > 0.6  # the paper between the hatch lines
