"""The secrets vault: the master keyring and the data-key store, loaded on first use.

Master key: env `KROMA_MASTER_KEY` (or `IAT_MASTER_KEY`), else the key file (env
`KROMA_MASTER_KEY_FILE`, default `<data_dir>/master.key`, created with mode 0600 by the first
secret upsert only). `KROMA_MASTER_KEY_REF` names it (default `local-master`);
`KROMA_MASTER_KEY_PREVIOUS` lists the keys a rotation re-wraps from (see
`kroma.crypto.master_key`). The keyring is read once per process: rotating the master key means
restarting with the new key current and the old one in `KROMA_MASTER_KEY_PREVIOUS`, then
`POST .../secrets/rotate`.

Data keys live in `<data_dir>/keys.db` (`kroma.crypto.keystore`), never in the event log; with
the log on PostgreSQL they move with it, to a table of their own there (`kroma.crypto.pg_keystore`),
still wrapped by the master key every process is given.
Every failure here (no key, malformed key, a data key that does not unwrap) is a 500 with the
sanitised message; details go to the log only, and they never contain key material.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from kroma.crypto import (
    KEYS_DB_NAME,
    MASTER_KEY_FILE_NAME,
    CryptoError,
    KeyStore,
    MasterKeyring,
    load_master_keys,
)
from kroma.crypto.master_key import key_ref
from kroma.domain.errors import Internal

log = logging.getLogger(__name__)


class Vault:
    def __init__(
        self,
        data_dir: Path,
        environ: Mapping[str, str] | None = None,
        key_store: Callable[[MasterKeyring], KeyStore] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.environ = environ  # None: os.environ at load time
        self.key_store = key_store  # None: keys.db in data_dir
        self._keyring: MasterKeyring | None = None
        self._store: KeyStore | None = None
        self._lock = asyncio.Lock()

    @property
    def keys_path(self) -> Path:
        return self.data_dir / KEYS_DB_NAME

    async def keys(self, *, create_master_key: bool = False) -> KeyStore:
        """The open data-key store. `create_master_key`: generate the key file when there is no
        master key at all (secret upsert only; rotation and delete never create one)."""
        async with self._lock:
            if self._store is not None:
                return self._store
            try:
                if self._keyring is None:
                    self._keyring = await asyncio.to_thread(
                        load_master_keys,
                        self.data_dir / MASTER_KEY_FILE_NAME,
                        create_if_missing=create_master_key,
                        environ=self.environ,
                    )
                    if self._keyring.created:
                        log.warning("created a new master key file (%s)", self._keyring.source)
                if self.key_store is None:
                    store = KeyStore(self.keys_path, self._keyring)
                else:
                    store = self.key_store(self._keyring)
                await store.open()
            except CryptoError as exc:
                log.error("secrets vault unavailable: %s", exc)
                raise Internal() from None
            self._store = store
            return store

    @property
    def current_key_ref(self) -> str:
        """The ref new values and rotations use: the loaded keyring's, else the configured one
        (read without loading any key, so a rotation with nothing to do needs no master key)."""
        if self._keyring is not None:
            return self._keyring.current_ref
        return key_ref(self.environ)

    async def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            await store.close()


def crypto_failure(exc: Exception) -> Internal:
    """Map a crypto failure to the contract's 500 (logged without key material)."""
    log.error("secret operation failed: %s", exc)
    return Internal()
