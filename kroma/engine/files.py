"""Output names, folders and archiving under a project root (pipeline spec §4.3, §6.5, §8.1)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

OUTPUTS = "outputs"
ARCHIVE_BAD = "archive/bad"
ARCHIVE_REPLACED = "archive/replaced"


def sanitize_name(text: str) -> str:
    """`execution.rs::sanitize_id`: lowercase, `[a-z0-9_-]` kept, any run of other characters one
    `_`, leading/trailing `_` stripped; existing `_` runs are kept (so `__c2` survives)."""
    return re.sub(r"[^a-z0-9_-]+", "_", text.translate(_ASCII_LOWER)).strip("_")


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def candidate_file_name(job_key: str, index: int, total: int) -> str:
    if index < 1:
        raise ValueError("candidate index must be >= 1")
    if total < 1:
        raise ValueError("total candidates must be >= 1")
    return f"{job_key}.png" if total == 1 else f"{job_key}__c{index}.png"


def derived_path(folder: Path, current: Path, suffix: str, ext: str) -> Path:
    """`build_file_output_path`: `{folder}/{sanitized stem or 'image'}_{sanitized suffix}{ext}`."""
    base = sanitize_name(current.stem) or "image"
    tail = f"_{sanitize_name(suffix)}" if suffix else ""
    return folder / f"{base}{tail}{ext}"


def stamp(now: float | None = None) -> str:
    """`<unix seconds>-<milliseconds, 3 digits>`."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms // 1000}-{ms % 1000:03d}"


def _free(path: Path) -> Path:
    """`path`, or `stem-2.ext`, `stem-3.ext`, ... when a same-millisecond move already took it."""
    n = 1
    candidate = path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def archive(path: Path, project_root: Path, folder: str, tag: str) -> Path:
    """Move `path` to `<project root>/<folder>/{sanitized stem}_{tag}_{stamp}{.ext}`; the target."""
    target_dir = project_root / folder
    target_dir.mkdir(parents=True, exist_ok=True)
    target = _free(target_dir / f"{sanitize_name(path.stem) or 'image'}_{tag}_{stamp()}{path.suffix}")
    os.replace(path, target)
    return target


def write_new(path: Path, data: bytes, project_root: Path) -> Path | None:
    """Write an output file; one already there is first moved to `archive/replaced/` (never lost)
    and its new path returned. Written to a temporary name and renamed, so a reader never sees
    half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    moved = archive(path, project_root, ARCHIVE_REPLACED, "replaced") if path.exists() else None
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return moved
