"""The data-key store on PostgreSQL: the SQLite key store's behaviour on a shared table, and the move
of a data folder's keys.db (and fingerprint key) into it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kroma.crypto import DataKeyExistsError, KeyStore, MasterKeyring, encode_key, load_master_keys
from kroma.crypto.pepper import load_or_create
from kroma.crypto.pg_keystore import PostgresKeyStore, load_or_create_pepper
from tests.events.postgres_server import POSTGRES_URL


def keyring(key: bytes) -> MasterKeyring:
    return load_master_keys(None, environ={"KROMA_MASTER_KEY": encode_key(key)})


async def test_keys_are_shared_rewrapped_and_shredded(pg_schema: str) -> None:
    ring = keyring(os.urandom(32))
    one, two = (
        PostgresKeyStore(POSTGRES_URL, pg_schema, ring),
        PostgresKeyStore(POSTGRES_URL, pg_schema, ring),
    )
    async with one, two:
        token = await one.encrypt_secret("k1", "sk-value")
        assert await two.decrypt_secret("k1", token) == "sk-value"
        with pytest.raises(DataKeyExistsError):
            await two.create_data_key("k1")
        report = await two.rewrap(force=True)
        assert report.rotated == 1
        assert await one.decrypt_secret("k1", token) == "sk-value"
        assert await two.destroy("k1") is True
        assert await one.data_key("k1") is None
        assert await one.refs() == {}


async def test_a_data_folders_keys_move_into_the_shared_table(pg_schema: str, tmp_path: Path) -> None:
    ring = keyring(os.urandom(32))
    legacy = tmp_path / "keys.db"
    async with KeyStore(legacy, ring) as local:
        token = await local.encrypt_secret("old", "sk-before-the-move")
    async with PostgresKeyStore(POSTGRES_URL, pg_schema, ring, legacy) as shared:
        assert await shared.decrypt_secret("old", token) == "sk-before-the-move"
    assert not legacy.exists()  # one place only: a key destroyed later cannot come back from a copy

    pepper = load_or_create(tmp_path)
    assert await load_or_create_pepper(POSTGRES_URL, pg_schema, tmp_path) == pepper
    assert await load_or_create_pepper(POSTGRES_URL, pg_schema) == pepper  # the first one set it
