"""Provenance carried inside the image (PNG `kroma:*` text chunks), what an image is (MIME type,
size, digest), and the upload check that bytes really decode as an image."""

from __future__ import annotations

import hashlib
import io
import re
import struct
import zlib

from PIL import Image, UnidentifiedImageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PREFIX = "kroma:"
_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,73}")  # 73 + len("kroma:") = 79, PNG's keyword limit
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_MIME_BY_FORMAT = {"MPO": "image/jpeg"}  # Pillow names multi-picture JPEGs (many cameras) MPO


def _chunks(png: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """The PNG's chunks as (type, data, the chunk's raw bytes), in order; ValueError if the bytes
    are not a PNG."""
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG image (missing PNG signature)")
    chunks: list[tuple[bytes, bytes, bytes]] = []
    offset = len(PNG_SIGNATURE)
    while offset + 12 <= len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind = png[offset + 4 : offset + 8]
        end = offset + 12 + length
        if end > len(png):
            raise ValueError(f"truncated PNG: chunk {kind!r} runs past the end of the data")
        chunks.append((kind, png[offset + 8 : offset + 8 + length], png[offset:end]))
        offset = end
        if kind == b"IEND":
            break
    if not chunks or chunks[0][0] != b"IHDR" or chunks[-1][0] != b"IEND":
        raise ValueError("truncated PNG: no IHDR or IEND chunk")
    return chunks


def _encode(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _keyword(key: str) -> str:
    name = key.removeprefix(PREFIX)
    if not _KEY.fullmatch(name):
        raise ValueError(f"invalid provenance key {key!r}: use 1-73 characters of [A-Za-z0-9_.-]")
    return PREFIX + name


def _text_chunk(keyword: str, value: str) -> bytes:
    if value.isascii() and "\x00" not in value:
        return _encode(b"tEXt", keyword.encode("latin-1") + b"\x00" + value.encode("ascii"))
    # iTXt: keyword, NUL, compression flag 0, method 0, empty language tag and translated keyword.
    payload = keyword.encode("latin-1") + b"\x00\x00\x00\x00\x00" + value.encode("utf-8")
    return _encode(b"iTXt", payload)


def _decode_text(kind: bytes, data: bytes) -> tuple[str, str] | None:
    keyword, sep, rest = data.partition(b"\x00")
    if not sep:
        return None
    try:
        if kind == b"tEXt":
            return keyword.decode("latin-1"), rest.decode("latin-1")
        if kind == b"zTXt":
            return keyword.decode("latin-1"), zlib.decompress(rest[1:]).decode("latin-1")
        compressed, rest = rest[0], rest[2:]
        _language, _, rest = rest.partition(b"\x00")
        _translated, _, text = rest.partition(b"\x00")
        return keyword.decode("latin-1"), (zlib.decompress(text) if compressed else text).decode("utf-8")
    except (zlib.error, UnicodeDecodeError, IndexError):
        return None


def with_provenance(png: bytes, fields: dict[str, str]) -> bytes:
    """The same PNG with each field as a `kroma:<key>` text chunk (tEXt for ASCII values, iTXt
    UTF-8 otherwise) placed right after the header. Every other byte of the image is kept: the
    pixels, the mode and the other chunks are unchanged; a `kroma:` key already present is
    replaced. Keys may be given with or without the `kroma:` prefix."""
    chunks = _chunks(png)
    written = {_keyword(key): value for key, value in fields.items()}
    encoded = [_text_chunk(keyword, value) for keyword, value in written.items()]
    out = [PNG_SIGNATURE, chunks[0][2], *encoded]  # text chunks may follow IHDR anywhere
    for kind, data, raw in chunks[1:]:
        if kind in _TEXT_CHUNKS:
            decoded = _decode_text(kind, data)
            if decoded is not None and decoded[0] in written:
                continue
        out.append(raw)
    return b"".join(out)


def read_provenance(png: bytes) -> dict[str, str]:
    """The `kroma:*` text chunks of a PNG as {key without the prefix: value}; {} when the image
    has none or is not a PNG."""
    try:
        chunks = _chunks(png)
    except ValueError:
        return {}
    found: dict[str, str] = {}
    for kind, data, _raw in chunks:
        if kind in _TEXT_CHUNKS:
            decoded = _decode_text(kind, data)
            if decoded is not None and decoded[0].startswith(PREFIX):
                found[decoded[0].removeprefix(PREFIX)] = decoded[1]
    return found


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "unknown or unsupported image format"
    return str(exc) or type(exc).__name__


def _mime(image_format: str | None) -> str:
    if not image_format:
        return "application/octet-stream"
    return _MIME_BY_FORMAT.get(image_format) or Image.MIME.get(image_format) or "application/octet-stream"


def describe(png: bytes) -> dict[str, object]:
    """`{mime_type, width, height, sha256}` of an image's bytes: the type from the decoded format
    (not a file name), the size from its header, the SHA-256 hex digest of the bytes as given.
    ValueError if the bytes are not a recognisable image."""
    try:
        with Image.open(io.BytesIO(png)) as image:
            mime, (width, height) = _mime(image.format), image.size
    except Exception as exc:
        raise ValueError(f"data is not a recognisable image: {_reason(exc)}") from exc
    return {"mime_type": mime, "width": width, "height": height, "sha256": hashlib.sha256(png).hexdigest()}


def sniff_image(data: bytes) -> tuple[str, int, int]:
    """(mime type, width, height) of bytes that fully decode as an image; ValueError with the
    decoder's reason otherwise (empty, unknown format, truncated or corrupt pixel data)."""
    if not data:
        raise ValueError("image data is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return _mime(image.format), image.size[0], image.size[1]
    except Exception as exc:
        raise ValueError(f"data does not decode as an image: {_reason(exc)}") from exc
