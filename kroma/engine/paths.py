"""Where a run may read and write: reference paths, display paths and the allowed write roots.

Scene and style references (and `input`) resolve against the project root first, then the app root
(the reference's behaviour), so the `rel_path` of an upload works as is. Nothing a client sends can
make the server read outside those roots or write outside the allowed write roots.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"})


class PathRefused(Exception):
    """A path a client sent escapes the roots; `message` is the reference's wording (§4.4)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _canonical(path: Path) -> Path:
    """The canonical form of `path`, or of its nearest existing ancestor with the rest appended."""
    missing: list[str] = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current.name)
        current = current.parent
    return current.resolve().joinpath(*reversed(missing))


def resolve_reference(value: str, field: str, project_root: Path, app_root: Path) -> Path:
    """The absolute path a scene/style reference or `input` names.

    Relative: under the project root when it exists there, else under the app root. Absolute: only
    inside the project root. A `..` component, or a symlink leading out of its root, is refused.
    """
    text = value.strip()
    if not text:
        raise PathRefused(f"{field} must not be empty")
    given = Path(text)
    if given.is_absolute():
        if ".." in given.parts or not is_within(Path(os.path.normpath(given)), project_root):
            raise PathRefused(f"{field} must be a relative path under app root")
        return _contained(Path(os.path.normpath(given)), project_root, field)
    if ".." in PurePosixPath(text.replace("\\", "/")).parts:
        raise PathRefused(f"{field} must stay within app root")
    in_project = project_root / given
    if in_project.exists():
        return _contained(in_project, project_root, field)
    return _contained(app_root / given, app_root, field)


def _contained(path: Path, root: Path, field: str) -> Path:
    if not is_within(_canonical(path), _canonical(root)):
        raise PathRefused(f"{field} resolved outside app root (symlink traversal detected)")
    return path


def display_path(path: Path, app_root: Path) -> str:
    """App-root-relative with `/` separators when under the app root, else absolute (§0)."""
    if is_within(path, app_root) and path != app_root:
        return path.relative_to(app_root).as_posix()
    return str(path)


def writable_root(project_root: Path, write_roots: tuple[Path, ...]) -> bool:
    """Whether the project root lies inside one of the roots the server may write into (symlinks
    resolved, so a link out of an allowed root does not count)."""
    canonical = _canonical(project_root)
    return any(is_within(canonical, _canonical(root)) for root in write_roots)


def is_image_name(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS if "." in name else False


def list_images(path: Path) -> list[Path]:
    """An `input` path's images (§3.4): a file is itself when it has an image extension; a folder is
    listed recursively, entries sorted by name at each level, folders descended in that order."""
    if path.is_file():
        return [path] if is_image_name(path.name) else []
    found: list[Path] = []
    for entry in sorted(path.iterdir(), key=lambda p: p.name):
        if entry.is_dir():
            found.extend(list_images(entry))
        elif is_image_name(entry.name):
            found.append(entry)
    return found
