"""A per-data-folder random key for keyed fingerprints.

Idempotency records keep a fingerprint of each keyed request's body, and a body may hold a secret
value. A plain SHA-256 of it would let anyone holding a copy of the event store guess weak values
offline; an HMAC under this key (kept outside the event store, mode 0600) does not.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
from pathlib import Path

PEPPER_FILE = "fingerprint.key"
_LEN = 32


def load_or_create(data_dir: Path) -> bytes:
    path = data_dir / PEPPER_FILE
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(_LEN))
    key = path.read_bytes()
    if len(key) != _LEN:
        raise ValueError(f"{path} is damaged: expected {_LEN} bytes")
    return key


def fingerprint(key: bytes, *parts: bytes) -> str:
    """Hex HMAC-SHA256 over the parts, each length-prefixed so no two part lists collide."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(len(part).to_bytes(8, "big"))
        mac.update(part)
    return mac.hexdigest()
