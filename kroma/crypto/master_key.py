"""Master-key loading: the key that wraps every per-secret data key.

Sources, first hit wins:
1. env `KROMA_MASTER_KEY` (or the reference's `IAT_MASTER_KEY`): base64url of exactly 32 bytes;
2. the key file: env `KROMA_MASTER_KEY_FILE` / `IAT_MASTER_KEY_FILE` when set (a relative path is
   taken relative to the working directory), else the path the caller passes
   (`<data_dir>/master.key`). Surrounding whitespace is ignored.
3. With `create_if_missing=True` and no file: a new random key is written as base64url + newline,
   mode 0600. The file is written under a temporary name opened with `os.open(..., 0o600)` and
   then hard-linked into place, so it is never readable by others, never seen half-written, and
   never clobbers a key another process created first (that key is used instead).

A blank key file is an error, never silently replaced: it means a key was lost, and a fresh key
would hide that until old secrets failed to decrypt.

Where both a `KROMA_*` and an `IAT_*` variable are set, the `KROMA_*` one wins. Blank values
count as unset.

Key ref: `KROMA_MASTER_KEY_REF` / `IAT_MASTER_KEY_REF`, default `local-master`.

Previous keys (for rotation): `KROMA_MASTER_KEY_PREVIOUS` / `IAT_MASTER_KEY_PREVIOUS`, a
comma-separated list. Each entry is either a bare base64url key (the reference's form; its ref is
unknown) or `ref=key`. The two cannot be confused: a bare 32-byte key contains `=` only as its
final padding character, so an entry is read as `ref=key` exactly when something other than `=`
follows its first `=`.

Keys decode from canonical base64url, with or without `=` padding; the standard alphabet (`+`,
`/`) is rejected as the reference does. Errors never echo the key text.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kroma.crypto.aead import KEY_LEN, CryptoError

DEFAULT_KEY_REF = "local-master"
MASTER_KEY_FILE_NAME = "master.key"

ENV_KEY = ("KROMA_MASTER_KEY", "IAT_MASTER_KEY")
ENV_KEY_FILE = ("KROMA_MASTER_KEY_FILE", "IAT_MASTER_KEY_FILE")
ENV_KEY_REF = ("KROMA_MASTER_KEY_REF", "IAT_MASTER_KEY_REF")
ENV_KEY_PREVIOUS = ("KROMA_MASTER_KEY_PREVIOUS", "IAT_MASTER_KEY_PREVIOUS")


class MasterKeyError(CryptoError):
    """A master key that is malformed, unreadable or (subclass) absent."""


class MasterKeyNotFoundError(MasterKeyError):
    """No env key, no key file, and creation was not allowed."""


@dataclass(frozen=True, slots=True)
class MasterKey:
    """One master key. `ref` is None for a bare previous key whose ref was not given."""

    ref: str | None
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class MasterKeyring:
    """The current master key plus the previous ones still accepted for unwrapping."""

    current: MasterKey
    previous: tuple[MasterKey, ...] = ()
    source: str = ""  # "env:KROMA_MASTER_KEY", "file:/path/master.key": for logs, never secret
    created: bool = False  # True when this load generated the key file

    @property
    def current_ref(self) -> str:
        return self.current.ref or DEFAULT_KEY_REF

    def candidates(self, ref: str | None = None) -> list[bytes]:
        """Keys to try for a value wrapped under `ref`: keys carrying that ref first, then the
        current key, then the previous keys in configured order (each key once)."""
        everything = (self.current, *self.previous)
        ordered = [k for k in everything if ref is not None and k.ref == ref]
        ordered += [k for k in everything if k not in ordered]
        out: list[bytes] = []
        for k in ordered:
            if k.key not in out:
                out.append(k.key)
        return out


def generate_key() -> bytes:
    return os.urandom(KEY_LEN)


def encode_key(key: bytes) -> str:
    """Canonical text form of a key: padded base64url, as written to the key file."""
    if len(key) != KEY_LEN:
        raise MasterKeyError(f"master key must be exactly {KEY_LEN} bytes")
    return base64.urlsafe_b64encode(key).decode("ascii")


def decode_key(text: str, *, what: str = "master key") -> bytes:
    """Decode base64url (padded or not) of exactly 32 bytes, else `MasterKeyError`."""
    value = text.strip()
    try:
        raw = base64.urlsafe_b64decode((value + "=" * (-len(value) % 4)).encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise MasterKeyError(f"{what} is invalid (expected base64url of a {KEY_LEN}-byte key)") from None
    canonical = base64.urlsafe_b64encode(raw).decode("ascii")
    if value not in (canonical, canonical.rstrip("=")):
        raise MasterKeyError(f"{what} is invalid (expected base64url of a {KEY_LEN}-byte key)")
    if len(raw) != KEY_LEN:
        raise MasterKeyError(f"{what} must decode to exactly {KEY_LEN} bytes, got {len(raw)}")
    return raw


def _env(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def key_ref(environ: Mapping[str, str] | None = None) -> str:
    """The current key ref: env `KROMA_MASTER_KEY_REF` / `IAT_MASTER_KEY_REF`, else `local-master`."""
    found = _env(os.environ if environ is None else environ, ENV_KEY_REF)
    return found[1] if found else DEFAULT_KEY_REF


def previous_keys(environ: Mapping[str, str] | None = None) -> tuple[MasterKey, ...]:
    """Parse `KROMA_MASTER_KEY_PREVIOUS` / `IAT_MASTER_KEY_PREVIOUS` (see the module docstring)."""
    found = _env(os.environ if environ is None else environ, ENV_KEY_PREVIOUS)
    if found is None:
        return ()
    name, raw = found
    out: list[MasterKey] = []
    for index, entry in enumerate(raw.split(",")):
        entry = entry.strip()
        if not entry:
            continue
        ref, sep, rest = entry.partition("=")
        what = f"{name} entry {index + 1}"
        if sep and rest.strip("="):
            if not ref.strip():
                raise MasterKeyError(f"{what} has an empty ref before '='")
            out.append(MasterKey(ref=ref.strip(), key=decode_key(rest, what=what)))
        else:
            out.append(MasterKey(ref=None, key=decode_key(entry, what=what)))
    return tuple(out)


def _read_key_file(path: Path) -> bytes | None:
    """The key in `path`, or None when the file does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MasterKeyError(f"master key file {path} cannot be read: {exc.strerror}") from None
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise MasterKeyError(f"master key file {path} is not base64url text") from None
    if not text:
        raise MasterKeyError(
            f"master key file {path} is empty; restore the key or delete the file to generate a new one"
        )
    return decode_key(text, what=f"master key file {path}")


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_new_file(path: Path, data: bytes) -> None:
    """Create `path` exclusively with mode 0600 and write `data` to it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)  # exact mode whatever the umask (which can only have removed bits)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_key_file(path: Path) -> tuple[bytes, bool]:
    """Create the key file; return (key, created). Loses gracefully to a concurrent creator."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = generate_key()
        data = (encode_key(key) + "\n").encode("ascii")
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        _write_new_file(tmp, data)
        try:
            os.link(tmp, path)  # atomic and never replaces an existing file
        except FileExistsError:
            existing = _read_key_file(path)
            if existing is None:  # created and removed again meanwhile: give up loudly
                raise MasterKeyError(f"master key file {path} vanished while being created") from None
            return existing, False
        except OSError:
            # Filesystem without hard links: exclusive create in place (still 0600, no clobber).
            try:
                _write_new_file(path, data)
            except FileExistsError:
                existing = _read_key_file(path)
                if existing is None:
                    raise MasterKeyError(f"master key file {path} vanished while being created") from None
                return existing, False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _fsync_dir(path.parent)
        return key, True
    except OSError as exc:
        raise MasterKeyError(f"master key file {path} cannot be created: {exc.strerror}") from None


def load_master_keys(
    key_file: str | os.PathLike[str] | None,
    *,
    create_if_missing: bool = False,
    environ: Mapping[str, str] | None = None,
) -> MasterKeyring:
    """Load the current master key (env, else key file, else create), its ref and previous keys.

    `key_file` is the default file location (the caller passes `<data_dir>/master.key`); env
    `KROMA_MASTER_KEY_FILE` / `IAT_MASTER_KEY_FILE` overrides it. Raises `MasterKeyError` for a
    malformed key and `MasterKeyNotFoundError` when there is no key and creation is not allowed.
    """
    env = os.environ if environ is None else environ
    ref = key_ref(env)
    previous = previous_keys(env)

    found = _env(env, ENV_KEY)
    if found is not None:
        name, value = found
        key = decode_key(value, what=name)
        return MasterKeyring(MasterKey(ref, key), previous, source=f"env:{name}")

    file_env = _env(env, ENV_KEY_FILE)
    if file_env is not None:
        path = Path(file_env[1]).expanduser()
    elif key_file is not None:
        path = Path(key_file)
    else:
        raise MasterKeyNotFoundError(
            "master key not found: set KROMA_MASTER_KEY or KROMA_MASTER_KEY_FILE, or pass a key file"
        )

    key_or_none = _read_key_file(path)
    created = False
    if key_or_none is None:
        if not create_if_missing:
            raise MasterKeyNotFoundError(
                f"master key not found: no KROMA_MASTER_KEY and no key file at {path}"
            )
        key_or_none, created = _create_key_file(path)
    return MasterKeyring(MasterKey(ref, key_or_none), previous, source=f"file:{path}", created=created)
