"""Storage faults: the disk is full, the data folder cannot be written, or the database is locked.

They are the machine's condition, not a bug and not the request's fault: the HTTP layer answers them
503 `storage_unavailable` (retry later), nothing half-written stays behind (SQLite rolls the
transaction back), and the next write after space returns succeeds with no restart.
"""

from __future__ import annotations

import errno
import sqlite3

# Primary SQLite result codes (the low byte of an extended code).
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN = 5, 6, 8, 10, 13, 14
_SQLITE_CODES = frozenset(
    {SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN}
)
_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}
)
# Older SQLite builds do not always attach a code; their messages are stable.
_MESSAGES = (
    "disk is full",
    "readonly database",
    "disk i/o error",
    "unable to open database",
    "database is locked",
)


def _is_fault(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error) and not isinstance(
        exc, sqlite3.IntegrityError | sqlite3.ProgrammingError
    ):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in _SQLITE_CODES:
            return True
        text = str(exc).lower()
        return any(m in text for m in _MESSAGES)
    return isinstance(exc, OSError) and exc.errno in _ERRNOS


def storage_fault(exc: BaseException | None) -> BaseException | None:
    """The storage fault behind `exc` (itself, or an exception it was raised from or while
    handling: a ROLLBACK refused after SQLite already rolled back, an `Internal()` raised
    `from None`), or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _is_fault(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
