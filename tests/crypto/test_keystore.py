"""The data-key store: envelope encryption, rotation of the master key, and crypto-shredding."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sqlite3
import stat
from pathlib import Path

import aiosqlite
import pytest

from kroma.crypto.aead import DecryptError, TokenFormatError, unseal, unseal_any
from kroma.crypto.keystore import (
    DataKeyExistsError,
    DataKeyNotFoundError,
    DataKeyUnwrapError,
    KeyStore,
    KeyStoreError,
    RewrapOutcome,
)
from kroma.crypto.master_key import MasterKeyring, load_master_keys

V0 = bytes(range(200, 232))
V1 = bytes(range(32))
V2 = bytes(range(100, 132))
V3 = bytes(range(50, 82))


def b64(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def ring(current: bytes, ref: str, previous: str = "") -> MasterKeyring:
    env = {"KROMA_MASTER_KEY": b64(current), "KROMA_MASTER_KEY_REF": ref}
    if previous:
        env["KROMA_MASTER_KEY_PREVIOUS"] = previous
    return load_master_keys(None, environ=env)


def rows(db_path: Path) -> dict[str, tuple[str, str, str]]:
    conn = sqlite3.connect(db_path)
    try:
        return {r[0]: (r[1], r[2], r[3]) for r in conn.execute("SELECT * FROM data_keys")}
    finally:
        conn.close()


def encodings(label: str, raw: bytes) -> dict[str, bytes]:
    """The raw bytes and every base64 spelling of them (standard/urlsafe, padded/unpadded)."""
    std = base64.b64encode(raw)
    url = base64.urlsafe_b64encode(raw)
    return {
        label: raw,
        f"{label} (base64)": std,
        f"{label} (base64, unpadded)": std.rstrip(b"="),
        f"{label} (base64url)": url,
        f"{label} (base64url, unpadded)": url.rstrip(b"="),
    }


def scan(root: Path, needles: dict[str, bytes]) -> list[tuple[str, str]]:
    """(file, label) for every needle found in the raw bytes of any file under root."""
    hits = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            hits += [(str(path.relative_to(root)), label) for label, n in needles.items() if n in data]
    return hits


@pytest.fixture
async def store(tmp_path):
    ks = KeyStore.in_data_dir(tmp_path, ring(V1, "v1"))
    await ks.open()
    yield ks
    await ks.close()


# -- storage ---------------------------------------------------------------------------------


async def test_keys_db_lives_in_the_data_dir_and_is_owner_only(tmp_path, store):
    await store.create_data_key("k")
    assert store.path == tmp_path / "keys.db"
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


async def test_keys_db_uses_a_rollback_journal_and_leaves_no_wal_or_journal_file(tmp_path, store):
    for i in range(5):
        await store.encrypt_secret(f"k{i}", "value")
    await store.destroy("k1")
    await store.rewrap(force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.db"]
    header = store.path.read_bytes()[:20]
    assert header[18:20] == b"\x01\x01"  # file format versions 1 = legacy rollback journal, 2 = WAL
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        conn.close()


async def test_store_turns_secure_delete_on_even_where_sqlite_defaults_it_off(tmp_path, monkeypatch):
    real_connect = aiosqlite.connect

    async def connect_with_secure_delete_off(*args, **kwargs):
        conn = await real_connect(*args, **kwargs)
        await conn.execute("PRAGMA secure_delete=OFF")
        return conn

    monkeypatch.setattr(aiosqlite, "connect", connect_with_secure_delete_off)
    async with KeyStore.in_data_dir(tmp_path, ring(V1, "v1")) as ks:
        conn = ks._conn  # the store's own connection: secure_delete is a per-connection setting
        assert conn is not None
        async with conn.execute("PRAGMA secure_delete") as cur:
            assert (await cur.fetchone())[0] == 1
        async with conn.execute("PRAGMA journal_mode") as cur:
            assert (await cur.fetchone())[0] == "delete"


async def test_opening_converts_a_keys_db_left_in_wal_mode(tmp_path):
    path = tmp_path / "keys.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    async with KeyStore(path, ring(V1, "v1")) as ks:
        await ks.create_data_key("k")
    assert path.read_bytes()[18:20] == b"\x01\x01"
    assert not (tmp_path / "keys.db-wal").exists()


async def test_closed_store_raises_key_store_error(tmp_path):
    ks = KeyStore.in_data_dir(tmp_path, ring(V1, "v1"))
    with pytest.raises(KeyStoreError, match="not open"):
        await ks.data_key("k")
    async with ks:
        await ks.create_data_key("k")
    with pytest.raises(KeyStoreError, match="not open"):
        await ks.encrypt_secret("k", "x")


# -- data keys -------------------------------------------------------------------------------


async def test_create_data_key_stores_32_random_bytes_wrapped_under_the_current_master_key(store):
    key = await store.create_data_key("secret-1")
    other = await store.create_data_key("secret-2")
    assert len(key) == 32 and key != other
    wrapped, ref, created_at = rows(store.path)["secret-1"]
    assert wrapped.startswith("enc:v1:")
    assert unseal(V1, wrapped) == key
    assert ref == "v1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created_at)
    assert await store.data_key("secret-1") == key
    assert key not in store.path.read_bytes()


async def test_create_data_key_refuses_to_replace_an_existing_key(store):
    key = await store.create_data_key("k")
    with pytest.raises(DataKeyExistsError):
        await store.create_data_key("k")
    assert await store.data_key("k") == key


async def test_data_key_of_unknown_id_is_none(store):
    assert await store.data_key("never-created") is None


async def test_empty_key_id_is_rejected(store):
    with pytest.raises(KeyStoreError):
        await store.create_data_key("")
    with pytest.raises(KeyStoreError):
        await store.encrypt_secret("", "x")


async def test_refs_maps_each_key_id_to_its_master_key_ref(store):
    await store.create_data_key("b")
    await store.create_data_key("a")
    assert await store.refs() == {"a": "v1", "b": "v1"}


# -- secrets ---------------------------------------------------------------------------------


async def test_secret_is_sealed_under_its_data_key_not_the_master_key(store):
    token = await store.encrypt_secret("secret-1", "sk-test-plaintext")
    data_key = await store.data_key("secret-1")
    assert token.startswith("enc:v1:")
    assert unseal(data_key, token) == b"sk-test-plaintext"
    with pytest.raises(DecryptError):
        unseal(V1, token)
    assert await store.decrypt_secret("secret-1", token) == "sk-test-plaintext"


async def test_encrypt_secret_creates_the_data_key_once_and_reuses_it(store):
    first = await store.encrypt_secret("s", "one")
    key = await store.data_key("s")
    second = await store.encrypt_secret("s", "two")
    assert await store.data_key("s") == key
    assert unseal(key, first) == b"one" and unseal(key, second) == b"two"


async def test_concurrent_first_encryptions_of_one_id_share_one_data_key(store):
    tokens = await asyncio.gather(*(store.encrypt_secret("s", f"v{i}") for i in range(20)))
    assert await store.refs() == {"s": "v1"}
    assert [await store.decrypt_secret("s", t) for t in tokens] == [f"v{i}" for i in range(20)]


async def test_secret_text_round_trips_unchanged_including_unicode_and_whitespace(store):
    value = "  clé-🔑 \n"
    assert await store.decrypt_secret("s", await store.encrypt_secret("s", value)) == value


async def test_decrypt_secret_rejects_values_without_the_enc_v1_prefix(store):
    await store.create_data_key("s")
    with pytest.raises(TokenFormatError):
        await store.decrypt_secret("s", "sk-legacy-plaintext")


async def test_decrypt_secret_with_another_secrets_token_fails(store):
    token = await store.encrypt_secret("a", "alpha")
    await store.create_data_key("b")
    with pytest.raises(DecryptError):
        await store.decrypt_secret("b", token)


async def test_data_key_that_no_configured_master_key_opens_raises_unwrap_error(tmp_path):
    async with KeyStore.in_data_dir(tmp_path, ring(V1, "v1")) as ks:
        token = await ks.encrypt_secret("s", "alpha")
    async with KeyStore.in_data_dir(tmp_path, ring(V2, "v2")) as ks:
        with pytest.raises(DataKeyUnwrapError):
            await ks.data_key("s")
        with pytest.raises(DataKeyUnwrapError):
            await ks.decrypt_secret("s", token)
        with pytest.raises(DataKeyUnwrapError):
            await ks.encrypt_secret("s", "beta")


# -- destroy (crypto-shredding) --------------------------------------------------------------


async def test_destroy_makes_decrypt_impossible(tmp_path, store):
    token = await store.encrypt_secret("s", "sk-test-plaintext")
    keep = await store.encrypt_secret("t", "other")
    assert await store.destroy("s") is True
    assert await store.data_key("s") is None
    assert await store.refs() == {"t": "v1"}
    with pytest.raises(DataKeyNotFoundError):
        await store.decrypt_secret("s", token)
    assert await store.decrypt_secret("t", keep) == "other"
    await store.close()

    async with KeyStore.in_data_dir(tmp_path, ring(V1, "v1")) as reopened:
        with pytest.raises(DataKeyNotFoundError):
            await reopened.decrypt_secret("s", token)


async def test_destroy_of_a_missing_key_returns_false(store):
    assert await store.destroy("nothing") is False
    await store.create_data_key("k")
    assert await store.destroy("k") is True
    assert await store.destroy("k") is False


async def test_reusing_a_destroyed_key_id_does_not_resurrect_old_ciphertext(store):
    old = await store.encrypt_secret("s", "old value")
    await store.destroy("s")
    new = await store.encrypt_secret("s", "new value")
    assert await store.decrypt_secret("s", new) == "new value"
    with pytest.raises(DecryptError):
        await store.decrypt_secret("s", old)


async def test_destroyed_secret_leaves_no_plaintext_or_key_material_in_any_file(tmp_path):
    data_dir = tmp_path / "data"
    keyring = load_master_keys(data_dir / "master.key", create_if_missing=True, environ={})
    plaintext = "sk-live-SHRED-ME-0123456789abcdef!"  # 34 bytes: base64 forms need padding
    assert len(plaintext.encode()) % 3 != 0

    # A stand-in for the event log: a WAL-mode SQLite file that keeps the sealed value forever.
    events = sqlite3.connect(data_dir / "events.db")
    events.execute("PRAGMA journal_mode=WAL")
    events.execute("CREATE TABLE events (position INTEGER PRIMARY KEY, data BLOB NOT NULL)")

    async with KeyStore.in_data_dir(data_dir, keyring) as ks:
        for i in range(20):  # neighbours on the same page, so the row is deleted from a live page
            await ks.encrypt_secret(f"neighbour-{i:02}", f"neighbour value {i}")
        token = await ks.encrypt_secret("secret-1", plaintext)
        data_key = await ks.data_key("secret-1")
        wrapped = rows(ks.path)["secret-1"][0]
        payload = json.dumps({"provider_code": "openai", "secret_value": token}).encode()
        with events:
            events.execute("INSERT INTO events (data) VALUES (?)", (payload,))

        secret_needles = encodings("plaintext", plaintext.encode())
        key_needles = {
            **encodings("data key", data_key),
            "wrapped data key": wrapped.encode(),
            "wrapped data key payload": base64.urlsafe_b64decode(wrapped.removeprefix("enc:v1:")),
        }
        # The scan sees the live key and the event; the plaintext was never written anywhere.
        assert ("keys.db", "wrapped data key") in scan(data_dir, key_needles)
        assert any(label == "token" for _, label in scan(data_dir, {"token": token.encode()}))
        assert scan(data_dir, secret_needles) == []

        assert await ks.destroy("secret-1")
        with pytest.raises(DataKeyNotFoundError):
            await ks.decrypt_secret("secret-1", token)
        assert await ks.decrypt_secret("neighbour-07", await ks.encrypt_secret("neighbour-07", "x")) == "x"

        assert scan(data_dir, {**secret_needles, **key_needles}) == []  # store still open
    assert scan(data_dir, {**secret_needles, **key_needles}) == []  # and after close

    # The ciphertext is still in the append-only log, and no master key opens it.
    assert scan(data_dir, {"token": token.encode()})
    events.close()
    with pytest.raises(DecryptError):
        unseal_any(keyring.candidates(), token)
    async with KeyStore.in_data_dir(data_dir, keyring) as ks:
        with pytest.raises(DataKeyNotFoundError):
            await ks.decrypt_secret("secret-1", token)


def test_scan_does_find_a_deleted_row_when_secure_delete_is_off(tmp_path):
    """Control for the shredding test: without secure_delete SQLite leaves deleted bytes behind,
    so a clean scan above is evidence, not an accident of the scanner."""
    needle = b"enc:v1:" + base64.urlsafe_b64encode(bytes(range(60)))
    conn = sqlite3.connect(tmp_path / "plain.db")
    conn.execute("PRAGMA secure_delete=OFF")
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")
    with conn:
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(f"n{i}", "x" * 40) for i in range(20)])
        conn.execute("INSERT INTO t VALUES ('k', ?)", (needle.decode(),))
    with conn:
        conn.execute("DELETE FROM t WHERE k = 'k'")
    conn.close()
    assert scan(tmp_path, {"needle": needle}) == [("plain.db", "needle")]


# -- master-key rotation (rewrap) ------------------------------------------------------------


async def test_rotation_from_v1_to_v2_rewraps_data_keys_and_keeps_old_ciphertext_readable(tmp_path):
    async with KeyStore.in_data_dir(tmp_path, ring(V1, "v1")) as ks:
        t1 = await ks.encrypt_secret("s1", "alpha")
        t2 = await ks.encrypt_secret("s2", "beta")
        k1 = await ks.data_key("s1")

    async with KeyStore.in_data_dir(tmp_path, ring(V2, "v2", previous=f"v1={b64(V1)}")) as ks:
        assert await ks.refs() == {"s1": "v1", "s2": "v1"}
        assert await ks.decrypt_secret("s1", t1) == "alpha"  # through the previous key
        t3 = await ks.encrypt_secret("s3", "gamma")  # new keys go under the current key at once

        report = await ks.rewrap()
        assert report.target_key_ref == "v2"
        assert dict(report.outcomes) == {
            "s1": RewrapOutcome.ROTATED,
            "s2": RewrapOutcome.ROTATED,
            "s3": RewrapOutcome.SKIPPED_CURRENT_KEY_REF,
        }
        assert (report.scanned, report.rotated, report.skipped_current_key_ref) == (3, 2, 1)
        assert await ks.refs() == {"s1": "v2", "s2": "v2", "s3": "v2"}
        assert await ks.data_key("s1") == k1  # the data key itself is unchanged
    assert unseal(V2, rows(tmp_path / "keys.db")["s1"][0]) == k1

    # v1 can now be retired: v2 alone opens everything, and v1 alone opens nothing.
    async with KeyStore.in_data_dir(tmp_path, ring(V2, "v2")) as ks:
        assert [await ks.decrypt_secret(k, t) for k, t in (("s1", t1), ("s2", t2), ("s3", t3))] == [
            "alpha",
            "beta",
            "gamma",
        ]
    async with KeyStore.in_data_dir(tmp_path, ring(V1, "v1")) as ks:
        with pytest.raises(DataKeyUnwrapError):
            await ks.data_key("s1")


async def test_rewrap_skips_keys_under_the_current_ref_unless_forced(store):
    await store.create_data_key("a")
    before = rows(store.path)["a"][0]
    report = await store.rewrap()
    assert dict(report.outcomes) == {"a": RewrapOutcome.SKIPPED_CURRENT_KEY_REF}
    assert report.rotated == 0
    assert rows(store.path)["a"][0] == before

    forced = await store.rewrap(force=True)
    assert dict(forced.outcomes) == {"a": RewrapOutcome.ROTATED}
    after = rows(store.path)["a"][0]
    assert after != before and unseal(V1, after) == unseal(V1, before)


async def test_rotation_accepts_bare_previous_keys_as_in_the_reference(tmp_path):
    async with KeyStore.in_data_dir(tmp_path, ring(V1, "local-master-v1")) as ks:
        token = await ks.encrypt_secret("s", "alpha")
    async with KeyStore.in_data_dir(tmp_path, ring(V2, "local-master-v2", previous=b64(V1))) as ks:
        report = await ks.rewrap(from_key_ref="local-master-v1")
        assert report.rotated == 1
        assert await ks.decrypt_secret("s", token) == "alpha"


async def test_rewrap_from_key_ref_limits_the_scope_to_that_ref(tmp_path):
    async with KeyStore.in_data_dir(tmp_path, ring(V1, "v1")) as ks:
        await ks.create_data_key("a")
    async with KeyStore.in_data_dir(tmp_path, ring(V2, "v2")) as ks:
        await ks.create_data_key("b")
    three = ring(V3, "v3", previous=f"v1={b64(V1)},v2={b64(V2)}")
    async with KeyStore.in_data_dir(tmp_path, three) as ks:
        report = await ks.rewrap(from_key_ref=" v1 ")
        assert dict(report.outcomes) == {"a": RewrapOutcome.ROTATED}
        assert await ks.refs() == {"a": "v3", "b": "v2"}

        blank = await ks.rewrap(from_key_ref="  ")  # blank means no filter
        assert dict(blank.outcomes) == {
            "a": RewrapOutcome.SKIPPED_CURRENT_KEY_REF,
            "b": RewrapOutcome.ROTATED,
        }


async def test_rewrap_of_named_keys_reports_each_requested_id(tmp_path):
    async with KeyStore.in_data_dir(tmp_path, ring(V1, "v1")) as ks:
        await ks.create_data_key("a")
        await ks.create_data_key("c")
    async with KeyStore.in_data_dir(tmp_path, ring(V2, "v2", previous=f"v1={b64(V1)}")) as ks:
        await ks.create_data_key("b")
        await ks.create_data_key("d")
        report = await ks.rewrap(["zzz", "b", "a", "d", "a"], from_key_ref="v1")
        assert dict(report.outcomes) == {
            "a": RewrapOutcome.ROTATED,
            "b": RewrapOutcome.SKIPPED_OTHER_KEY_REF,
            "d": RewrapOutcome.SKIPPED_OTHER_KEY_REF,
            "zzz": RewrapOutcome.MISSING,
        }
        assert report.missing == ["zzz"]
        assert report.scanned == 1
        assert await ks.refs() == {"a": "v2", "b": "v2", "c": "v1", "d": "v2"}

        forced = await ks.rewrap(["b"], force=True)
        assert dict(forced.outcomes) == {"b": RewrapOutcome.ROTATED}
        assert dict((await ks.rewrap([])).outcomes) == {}


async def test_rewrap_is_all_or_nothing_when_a_key_does_not_unwrap(tmp_path):
    async with KeyStore.in_data_dir(tmp_path, ring(V1, "v1")) as ks:
        await ks.create_data_key("a")
    async with KeyStore.in_data_dir(tmp_path, ring(V0, "v0")) as ks:
        await ks.create_data_key("b")
    before = rows(tmp_path / "keys.db")
    async with KeyStore.in_data_dir(tmp_path, ring(V2, "v2", previous=f"v1={b64(V1)}")) as ks:
        with pytest.raises(DataKeyUnwrapError, match="'b'"):
            await ks.rewrap()
        assert rows(tmp_path / "keys.db") == before
        await ks.create_data_key("c")  # no transaction was left open
        assert await ks.refs() == {"a": "v1", "b": "v0", "c": "v2"}
