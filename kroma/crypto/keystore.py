"""The data-key store: per-secret AES keys, wrapped by the master key, kept OUTSIDE the event log.

Envelope encryption for crypto-shredding:

    event payload  = enc:v1 token of the secret value under its DATA key   (append-only, forever)
    keys.db row    = enc:v1 token of the data key under the MASTER key      (deletable)

Events can never be rewritten, so a secret is erased by destroying its data key: once the
`data_keys` row is gone, the ciphertext left in old events cannot be opened by anyone, master key
included. `keys.db` is a separate SQLite file opened with `secure_delete=ON` (deleted rows are
overwritten with zeros in the file) and the rollback journal in DELETE mode (no WAL file keeping
stale page copies; the journal exists only during a write and is unlinked on commit). The file
is created with mode 0600.

Limits, stated plainly: SQLite cannot scrub blocks the filesystem already freed (an unlinked
journal, copy-on-write or SSD remapping), and Python cannot reliably zero key bytes in memory.
What is left there is a data key still wrapped under the master key, so shredding is as strong as
the secrecy of the master keys (current and previous) that wrapped it.

Key ids are the caller's choice; use a fresh id per secret lifetime (e.g. a new UUID whenever a
secret is created) so a destroyed id is never reused. Reusing one after `destroy` creates an
unrelated key, and old ciphertext still fails to open (GCM authenticates the key).

One aiosqlite connection; every operation runs under one asyncio lock, so a multi-statement
operation never interleaves with another on the shared connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Self

import aiosqlite

from kroma.crypto.aead import KEY_LEN, CryptoError, DecryptError, seal, unseal, unseal_any
from kroma.crypto.master_key import MasterKeyring

KEYS_DB_NAME = "keys.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS data_keys (
    key_id         TEXT PRIMARY KEY,
    wrapped        TEXT NOT NULL,  -- enc:v1 token of the 32-byte data key under the master key
    master_key_ref TEXT NOT NULL,
    created_at     TEXT NOT NULL
);
"""

_SELECT = "SELECT key_id, wrapped, master_key_ref FROM data_keys"


class KeyStoreError(CryptoError):
    """Key-store failure: not open, storage guarantees unavailable, or a subclass below."""


class DataKeyExistsError(KeyStoreError):
    """`create_data_key` for an id that already has a key (it is never silently replaced)."""


class DataKeyNotFoundError(KeyStoreError):
    """No data key for this id: it was destroyed (crypto-shredded) or never created."""


class DataKeyUnwrapError(KeyStoreError):
    """A stored data key does not open with any configured master key (current or previous)."""


class RewrapOutcome(StrEnum):
    ROTATED = "rotated"  # re-wrapped under the current master key
    SKIPPED_CURRENT_KEY_REF = "skipped_current_key_ref"  # already under the current ref, no force
    SKIPPED_OTHER_KEY_REF = "skipped_other_key_ref"  # requested id, but not under from_key_ref
    MISSING = "missing"  # requested id has no key (destroyed or never created)


@dataclass(frozen=True, slots=True)
class RewrapReport:
    target_key_ref: str
    outcomes: Mapping[str, RewrapOutcome]  # key_id -> outcome, in key_id order

    def _count(self, outcome: RewrapOutcome) -> int:
        return sum(1 for o in self.outcomes.values() if o is outcome)

    @property
    def scanned(self) -> int:
        """Keys in scope (rotated + skipped because already current)."""
        return self.rotated + self.skipped_current_key_ref

    @property
    def rotated(self) -> int:
        return self._count(RewrapOutcome.ROTATED)

    @property
    def skipped_current_key_ref(self) -> int:
        return self._count(RewrapOutcome.SKIPPED_CURRENT_KEY_REF)

    @property
    def missing(self) -> list[str]:
        return [k for k, o in self.outcomes.items() if o is RewrapOutcome.MISSING]


def plan_rewrap(
    rows: Mapping[str, tuple[str, str]],
    ids: list[str] | None,
    source_ref: str | None,
    target: str,
    force: bool,
) -> tuple[dict[str, RewrapOutcome], list[str]]:
    """What a rewrap does to each key in scope (`rows`: key_id -> (wrapped, master_key_ref)): the
    outcomes of the keys it leaves alone, and the ids to unwrap and seal again under `target`
    (their outcome is ROTATED). One decision for every key store, whatever holds the rows."""
    outcomes: dict[str, RewrapOutcome] = {}
    rotate: list[str] = []
    for key_id in sorted(rows if ids is None else ids):
        if key_id not in rows:
            outcomes[key_id] = RewrapOutcome.MISSING
            continue
        ref = rows[key_id][1]
        if source_ref is not None and ref != source_ref:
            if ids is not None:
                outcomes[key_id] = RewrapOutcome.SKIPPED_OTHER_KEY_REF
            continue
        if ref == target and not force:
            outcomes[key_id] = RewrapOutcome.SKIPPED_CURRENT_KEY_REF
            continue
        outcomes[key_id] = RewrapOutcome.ROTATED
        rotate.append(key_id)
    return outcomes, rotate


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_key_id(key_id: str) -> None:
    if not isinstance(key_id, str) or not key_id:
        raise KeyStoreError("key_id must be a non-empty string")


def _prepare_file(path: Path) -> None:
    """Create the database file (and its directory) owner-only before SQLite opens it.
    SQLite gives its journal the database file's permissions."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    os.close(fd)


class KeyStore:
    """Data keys in `<data_dir>/keys.db`, wrapped by the keyring's current master key."""

    def __init__(self, path: str | os.PathLike[str], keyring: MasterKeyring) -> None:
        self._path = Path(path)
        self._keyring = keyring
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def in_data_dir(cls, data_dir: str | os.PathLike[str], keyring: MasterKeyring) -> KeyStore:
        return cls(Path(data_dir) / KEYS_DB_NAME, keyring)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def keyring(self) -> MasterKeyring:
        return self._keyring

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._conn is not None:
            return
        await asyncio.to_thread(_prepare_file, self._path)
        conn = await aiosqlite.connect(self._path, isolation_level=None)
        try:
            await self._pragma(conn, "secure_delete=ON", "secure_delete", 1)
            await self._pragma(conn, "journal_mode=DELETE", "journal_mode", "delete")
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA busy_timeout=5000")
            await conn.executescript(SCHEMA)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    @staticmethod
    async def _pragma(conn: aiosqlite.Connection, assignment: str, name: str, expected: object) -> None:
        await conn.execute(f"PRAGMA {assignment}")
        async with conn.execute(f"PRAGMA {name}") as cur:
            row = await cur.fetchone()
        if row is None or row[0] != expected:
            raise KeyStoreError(f"keys.db: PRAGMA {assignment} did not take effect (got {row!r})")

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _db(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise KeyStoreError("key store is not open")
        return self._conn

    # -- data keys ---------------------------------------------------------------------------

    def _unwrap(self, key_id: str, wrapped: str, ref: str) -> bytes:
        try:
            key = unseal_any(self._keyring.candidates(ref), wrapped)
        except DecryptError:
            raise DataKeyUnwrapError(
                f"data key {key_id!r} (wrapped under master key ref {ref!r}) does not open with any "
                "configured master key; is the old key missing from KROMA_MASTER_KEY_PREVIOUS?"
            ) from None
        if len(key) != KEY_LEN:
            raise DataKeyUnwrapError(f"data key {key_id!r} does not unwrap to {KEY_LEN} bytes")
        return key

    def _wrap_new(self) -> tuple[bytes, str]:
        key = os.urandom(KEY_LEN)
        return key, seal(self._keyring.current.key, key)

    async def _row(self, key_id: str) -> tuple[str, str, str] | None:
        async with self._db().execute(f"{_SELECT} WHERE key_id = ?", (key_id,)) as cur:
            row = await cur.fetchone()
        return None if row is None else (row[0], row[1], row[2])

    async def create_data_key(self, key_id: str) -> bytes:
        """A new random 32-byte data key for `key_id`, stored wrapped under the current master key.
        Raises `DataKeyExistsError` when the id already has one."""
        _check_key_id(key_id)
        key, wrapped = self._wrap_new()
        async with self._lock:
            try:
                await self._db().execute(
                    "INSERT INTO data_keys (key_id, wrapped, master_key_ref, created_at) VALUES (?,?,?,?)",
                    (key_id, wrapped, self._keyring.current_ref, _now()),
                )
            except sqlite3.IntegrityError:
                raise DataKeyExistsError(f"data key {key_id!r} already exists") from None
        return key

    async def data_key(self, key_id: str) -> bytes | None:
        """The unwrapped data key, or None when destroyed or never created.
        Raises `DataKeyUnwrapError` when no configured master key opens it."""
        _check_key_id(key_id)
        async with self._lock:
            row = await self._row(key_id)
        return None if row is None else self._unwrap(*row)

    async def _data_key_or_create(self, key_id: str) -> bytes:
        _check_key_id(key_id)
        _, wrapped = self._wrap_new()
        async with self._lock:
            await self._db().execute(
                "INSERT INTO data_keys (key_id, wrapped, master_key_ref, created_at) VALUES (?,?,?,?)"
                " ON CONFLICT(key_id) DO NOTHING",
                (key_id, wrapped, self._keyring.current_ref, _now()),
            )
            row = await self._row(key_id)
        if row is None:  # pragma: no cover - the insert above and the read run under one lock
            raise DataKeyNotFoundError(f"data key {key_id!r} vanished while being created")
        return self._unwrap(*row)

    async def destroy(self, key_id: str) -> bool:
        """Crypto-shred: delete the data key (overwritten on disk). True when a key was deleted."""
        _check_key_id(key_id)
        async with self._lock, self._db().execute("DELETE FROM data_keys WHERE key_id = ?", (key_id,)) as cur:
            return cur.rowcount > 0

    async def refs(self) -> dict[str, str]:
        """key_id -> master_key_ref of every stored data key, in key_id order."""
        async with (
            self._lock,
            self._db().execute("SELECT key_id, master_key_ref FROM data_keys ORDER BY key_id") as cur,
        ):
            rows = await cur.fetchall()
        return {row[0]: row[1] for row in rows}

    async def rewrap(
        self,
        key_ids: Iterable[str] | None = None,
        *,
        force: bool = False,
        from_key_ref: str | None = None,
    ) -> RewrapReport:
        """Re-wrap data keys under the current master key (the data keys themselves, and so every
        ciphertext in the event log, stay unchanged).

        Scope: every stored key, or only `key_ids`; narrowed to keys whose ref equals
        `from_key_ref` when that is given (trimmed, non-blank). A key already under the current
        ref is skipped unless `force`. All updates commit in one transaction; if any key in scope
        fails to unwrap, `DataKeyUnwrapError` is raised and nothing changes.
        """
        ids = None if key_ids is None else list(dict.fromkeys(key_ids))
        for key_id in ids or ():
            _check_key_id(key_id)
        source_ref = (from_key_ref or "").strip() or None
        target = self._keyring.current_ref
        current = self._keyring.current.key
        db = self._db()
        async with self._lock:
            await db.execute("BEGIN IMMEDIATE")
            try:
                params: tuple[str, ...] = ()
                if ids is None:
                    sql = f"{_SELECT} ORDER BY key_id"
                else:
                    sql = f"{_SELECT} WHERE key_id IN (SELECT value FROM json_each(?)) ORDER BY key_id"
                    params = (json.dumps(ids),)
                async with db.execute(sql, params) as cur:
                    rows = {r[0]: (r[1], r[2]) for r in await cur.fetchall()}
                outcomes, rotate = plan_rewrap(rows, ids, source_ref, target, force)
                updates = [(seal(current, self._unwrap(k, *rows[k])), target, k) for k in rotate]
                if updates:
                    await db.executemany(
                        "UPDATE data_keys SET wrapped = ?, master_key_ref = ? WHERE key_id = ?", updates
                    )
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")
        return RewrapReport(target_key_ref=target, outcomes=outcomes)

    # -- secrets -----------------------------------------------------------------------------

    async def encrypt_secret(self, key_id: str, plaintext: str) -> str:
        """Seal `plaintext` (UTF-8, not trimmed) under the data key of `key_id`, creating that key
        on first use. The returned `enc:v1:` token is what goes into events."""
        key = await self._data_key_or_create(key_id)
        return seal(key, plaintext.encode("utf-8"))

    async def decrypt_secret(self, key_id: str, token: str) -> str:
        """Open a token sealed by `encrypt_secret`. Raises `DataKeyNotFoundError` once the key is
        destroyed, `DecryptError` (or `TokenFormatError`) for a token that does not open. A value
        without the `enc:v1:` prefix is an error here, never passed through as plaintext."""
        key = await self.data_key(key_id)
        if key is None:
            raise DataKeyNotFoundError(f"data key {key_id!r} is destroyed or was never created")
        raw = unseal(key, token)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptError("decrypted secret is not valid UTF-8") from None
