"""PNG provenance chunks, image descriptions and the upload check."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from kroma.imaging.provenance import describe, read_provenance, sniff_image, with_provenance


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def noisy(mode: str = "RGBA", size: tuple[int, int] = (23, 17)) -> Image.Image:
    channels = len(mode)
    pixels = np.random.default_rng(3).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(pixels if channels > 1 else pixels[:, :, 0])


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_fields_round_trip_including_non_ascii_values() -> None:
    fields = {"run_id": "run_01", "prompt": "Café at night — 夜のカフェ", "seed": "42"}
    assert read_provenance(with_provenance(encode(noisy()), fields)) == fields


def test_rgba_pixels_and_mode_are_kept_exactly() -> None:
    original = noisy("RGBA")
    out = decoded(with_provenance(encode(original), {"run_id": "r"}))
    assert out.mode == "RGBA"
    assert out.tobytes() == original.tobytes()


def test_palette_image_keeps_its_palette_and_indices() -> None:
    original = noisy("RGB").convert("P")
    out = decoded(with_provenance(encode(original), {"job": "j"}))
    assert out.mode == "P"
    assert out.tobytes() == original.tobytes()
    assert out.getpalette() == decoded(encode(original)).getpalette()


def test_only_text_chunks_are_added() -> None:
    data = encode(noisy())
    out = with_provenance(data, {"a": "1"})
    assert out.startswith(data[:33])  # signature and the IHDR chunk are untouched
    assert out.endswith(data[33:])  # every chunk after IHDR follows unchanged


def test_ascii_values_use_text_and_non_ascii_values_use_itxt() -> None:
    out = with_provenance(encode(noisy()), {"plain": "abc", "fancy": "é"})
    assert b"tEXtkroma:plain\x00abc" in out
    assert b"iTXtkroma:fancy\x00" in out
    assert "é".encode() in out


def test_pillow_reads_the_chunks_with_their_prefix() -> None:
    out = decoded(with_provenance(encode(noisy()), {"run_id": "r9", "note": "ü"}))
    assert out.text == {"kroma:run_id": "r9", "kroma:note": "ü"}  # type: ignore[attr-defined]


def test_setting_a_key_again_replaces_it() -> None:
    once = with_provenance(encode(noisy()), {"run_id": "first", "job": "j1"})
    twice = with_provenance(once, {"kroma:run_id": "second"})
    assert read_provenance(twice) == {"run_id": "second", "job": "j1"}
    assert twice.count(b"kroma:run_id") == 1


def test_other_text_chunks_are_left_alone_and_not_reported() -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "other tool")
    buffer = io.BytesIO()
    noisy().save(buffer, format="PNG", pnginfo=info)
    out = with_provenance(buffer.getvalue(), {"run_id": "r"})
    assert read_provenance(out) == {"run_id": "r"}
    assert decoded(out).text["Software"] == "other tool"  # type: ignore[attr-defined]


@pytest.mark.parametrize("key", ["", "has space", "x" * 74, "semi;colon"])
def test_invalid_keys_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="invalid provenance key"):
        with_provenance(encode(noisy()), {key: "v"})


def test_with_provenance_refuses_non_png_bytes() -> None:
    with pytest.raises(ValueError, match="not a PNG"):
        with_provenance(encode(noisy("RGB"), "JPEG"), {"a": "b"})


def test_read_provenance_of_a_plain_or_foreign_image_is_empty() -> None:
    assert read_provenance(encode(noisy())) == {}
    assert read_provenance(encode(noisy("RGB"), "JPEG")) == {}
    assert read_provenance(b"") == {}


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif")],
)
def test_describe_reports_type_size_and_digest(fmt: str, mime: str) -> None:
    data = encode(noisy("RGB", (31, 12)), fmt)
    assert describe(data) == {
        "mime_type": mime,
        "width": 31,
        "height": 12,
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def test_describe_refuses_bytes_that_are_not_an_image() -> None:
    with pytest.raises(ValueError, match="not a recognisable image"):
        describe(b"%PDF-1.4 hello")


def test_sniff_image_returns_type_and_size() -> None:
    assert sniff_image(encode(noisy("RGB", (40, 30)), "JPEG")) == ("image/jpeg", 40, 30)
    assert sniff_image(encode(noisy("RGBA", (7, 9)))) == ("image/png", 7, 9)


def test_sniff_image_rejects_a_truncated_png() -> None:
    data = encode(noisy("RGB", (200, 200)))
    with pytest.raises(ValueError, match="does not decode as an image: image file is truncated"):
        sniff_image(data[: len(data) // 2])


def test_sniff_image_rejects_unknown_bytes_and_empty_data() -> None:
    with pytest.raises(ValueError, match="unknown or unsupported image format"):
        sniff_image(b"GIF89 but not really" * 4)
    with pytest.raises(ValueError, match="empty"):
        sniff_image(b"")


def test_compressed_kroma_chunks_written_by_another_tool_are_read() -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("kroma:note", "é" * 200, zip=True)
    info.add_text("kroma:plain", "z" * 300, zip=True)  # a zTXt chunk
    buffer = io.BytesIO()
    noisy().save(buffer, format="PNG", pnginfo=info)
    assert read_provenance(buffer.getvalue()) == {"note": "é" * 200, "plain": "z" * 300}


def test_with_provenance_refuses_a_truncated_png() -> None:
    data = encode(noisy("RGB", (100, 100)))
    with pytest.raises(ValueError, match="truncated PNG"):
        with_provenance(data[: len(data) // 2], {"a": "b"})
