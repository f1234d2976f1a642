"""Master-key sources, the key file's creation and mode, refs and previous keys."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from kroma.crypto import master_key as mk
from kroma.crypto.master_key import (
    DEFAULT_KEY_REF,
    MasterKey,
    MasterKeyError,
    MasterKeyNotFoundError,
    decode_key,
    encode_key,
    load_master_keys,
)

ZERO_KEY_TEXT = "A" * 43 + "="  # the reference tests' all-zero key
ONES_KEY_TEXT = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="  # 32 x 0x01
KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))


def b64(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


# -- sources ---------------------------------------------------------------------------------


def test_env_key_is_loaded(tmp_path):
    ring = load_master_keys(tmp_path / "master.key", environ={"KROMA_MASTER_KEY": ONES_KEY_TEXT})
    assert ring.current.key == b"\x01" * 32
    assert ring.current_ref == DEFAULT_KEY_REF == "local-master"
    assert ring.source == "env:KROMA_MASTER_KEY"
    assert ring.previous == ()


def test_reference_env_name_iat_master_key_is_accepted(tmp_path):
    ring = load_master_keys(tmp_path / "master.key", environ={"IAT_MASTER_KEY": ZERO_KEY_TEXT})
    assert ring.current.key == bytes(32)
    assert ring.source == "env:IAT_MASTER_KEY"


def test_kroma_env_name_wins_over_iat_name(tmp_path):
    env = {"KROMA_MASTER_KEY": b64(KEY_A), "IAT_MASTER_KEY": b64(KEY_B)}
    assert load_master_keys(tmp_path / "master.key", environ=env).current.key == KEY_A


def test_blank_env_key_counts_as_unset(tmp_path):
    env = {"KROMA_MASTER_KEY": "  ", "IAT_MASTER_KEY": f" {b64(KEY_B)}\n"}
    assert load_master_keys(tmp_path / "master.key", environ=env).current.key == KEY_B


def test_env_key_wins_over_key_file_and_no_file_is_created(tmp_path):
    path = tmp_path / "master.key"
    ring = load_master_keys(path, create_if_missing=True, environ={"KROMA_MASTER_KEY": b64(KEY_A)})
    assert ring.current.key == KEY_A
    assert not ring.created
    assert not path.exists()

    path.write_text(b64(KEY_B) + "\n")
    assert load_master_keys(path, environ={"KROMA_MASTER_KEY": b64(KEY_A)}).current.key == KEY_A


def test_key_file_is_read_with_surrounding_whitespace_ignored(tmp_path):
    path = tmp_path / "master.key"
    path.write_text(f"\n  {b64(KEY_A)}  \n\n")
    ring = load_master_keys(path, environ={})
    assert ring.current.key == KEY_A
    assert ring.source == f"file:{path}"
    assert not ring.created


@pytest.mark.parametrize("name", ["KROMA_MASTER_KEY_FILE", "IAT_MASTER_KEY_FILE"])
def test_key_file_env_var_overrides_the_callers_path(tmp_path, name):
    elsewhere = tmp_path / "elsewhere.key"
    elsewhere.write_text(b64(KEY_B) + "\n")
    default = tmp_path / "master.key"
    default.write_text(b64(KEY_A) + "\n")
    assert load_master_keys(default, environ={name: str(elsewhere)}).current.key == KEY_B


def test_missing_key_without_create_raises_not_found_and_creates_nothing(tmp_path):
    path = tmp_path / "data" / "master.key"
    with pytest.raises(MasterKeyNotFoundError):
        load_master_keys(path, environ={})
    with pytest.raises(MasterKeyNotFoundError):
        load_master_keys(None, environ={})
    assert not (tmp_path / "data").exists()


def test_not_found_is_a_master_key_error():
    assert issubclass(MasterKeyNotFoundError, MasterKeyError)


# -- key file creation -----------------------------------------------------------------------


def test_create_if_missing_writes_base64url_key_and_newline_with_mode_0600(tmp_path):
    path = tmp_path / "data" / "master.key"
    ring = load_master_keys(path, create_if_missing=True, environ={})
    assert ring.created
    content = path.read_bytes()
    assert content.endswith(b"\n")
    assert content.count(b"\n") == 1
    assert content.strip() == b64(ring.current.key).encode()
    assert len(ring.current.key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["master.key"]  # no temp file left behind


def test_second_load_reuses_the_created_key(tmp_path):
    path = tmp_path / "master.key"
    first = load_master_keys(path, create_if_missing=True, environ={})
    second = load_master_keys(path, create_if_missing=True, environ={})
    third = load_master_keys(path, environ={})
    assert first.created and not second.created and not third.created
    assert first.current.key == second.current.key == third.current.key


def test_created_keys_are_random(tmp_path):
    a = load_master_keys(tmp_path / "a.key", create_if_missing=True, environ={})
    b = load_master_keys(tmp_path / "b.key", create_if_missing=True, environ={})
    assert a.current.key != b.current.key


def test_key_file_is_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        load_master_keys(tmp_path / "master.key", create_if_missing=True, environ={})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "master.key").stat().st_mode) == 0o600


def test_key_file_is_created_through_os_open_with_mode_0600_and_o_excl(tmp_path, monkeypatch):
    calls = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *args, **kwargs):
        calls.append((str(path), flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(mk.os, "open", spy)
    load_master_keys(tmp_path / "master.key", create_if_missing=True, environ={})
    monkeypatch.undo()

    creating = [c for c in calls if c[1] & os.O_CREAT]
    assert creating, "the key file must be created with os.open"
    for _path, flags, mode in creating:
        assert mode == 0o600
        assert flags & os.O_EXCL


def test_creation_never_clobbers_a_key_written_concurrently(tmp_path, monkeypatch):
    path = tmp_path / "master.key"
    real_link = os.link

    def racing_link(src, dst, *args, **kwargs):
        # Another process wins the race between our existence check and our link.
        with open(dst, "w") as f:
            f.write(b64(KEY_B) + "\n")
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(mk.os, "link", racing_link)
    ring = load_master_keys(path, create_if_missing=True, environ={})
    monkeypatch.undo()
    assert ring.current.key == KEY_B
    assert not ring.created
    assert path.read_text().strip() == b64(KEY_B)
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]


def test_blank_key_file_is_an_error_and_is_not_overwritten(tmp_path):
    path = tmp_path / "master.key"
    path.write_text("  \n")
    with pytest.raises(MasterKeyError, match="empty"):
        load_master_keys(path, create_if_missing=True, environ={})
    assert path.read_text() == "  \n"


# -- malformed keys --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("not base64 at all!", id="not-base64"),
        pytest.param(b64(bytes(16)), id="16-bytes"),
        pytest.param(b64(bytes(33)), id="33-bytes"),
        pytest.param(base64.b64encode(b"\xfb\xff" * 16).decode(), id="standard-alphabet"),
        pytest.param(b64(KEY_A)[:-2] + "9=", id="non-canonical-trailing-bits"),
        pytest.param(b64(KEY_A) + "==", id="excess-padding"),
        pytest.param("é" * 43 + "=", id="non-ascii"),
    ],
)
def test_malformed_keys_raise_master_key_error(tmp_path, text):
    with pytest.raises(MasterKeyError):
        decode_key(text)
    with pytest.raises(MasterKeyError):
        load_master_keys(tmp_path / "master.key", environ={"KROMA_MASTER_KEY": text})
    path = tmp_path / "master.key"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(MasterKeyError):
        load_master_keys(path, create_if_missing=True, environ={})


def test_malformed_key_error_does_not_echo_the_key_text(tmp_path):
    almost = b64(bytes(range(31)))
    with pytest.raises(MasterKeyError) as info:
        load_master_keys(None, environ={"KROMA_MASTER_KEY": almost})
    assert almost not in str(info.value)
    assert almost.rstrip("=") not in str(info.value)


def test_unpadded_base64url_key_is_accepted():
    assert decode_key(b64(KEY_A).rstrip("=")) == KEY_A
    assert decode_key(b64(KEY_A)) == KEY_A


def test_encode_key_is_padded_base64url():
    assert encode_key(bytes(32)) == ZERO_KEY_TEXT
    with pytest.raises(MasterKeyError):
        encode_key(bytes(16))


# -- refs and previous keys ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "local-master"),
        ({"KROMA_MASTER_KEY_REF": "kroma-v2"}, "kroma-v2"),
        ({"IAT_MASTER_KEY_REF": "iat-v2"}, "iat-v2"),
        ({"KROMA_MASTER_KEY_REF": "kroma-v2", "IAT_MASTER_KEY_REF": "iat-v2"}, "kroma-v2"),
        ({"KROMA_MASTER_KEY_REF": "   "}, "local-master"),
        ({"KROMA_MASTER_KEY_REF": " v3 "}, "v3"),
    ],
)
def test_key_ref_comes_from_env_with_local_master_default(env, expected):
    ring = load_master_keys(None, environ={"KROMA_MASTER_KEY": ZERO_KEY_TEXT, **env})
    assert ring.current_ref == expected
    assert ring.current.ref == expected


def test_previous_keys_are_comma_separated_bare_base64url_keys():
    env = {
        "KROMA_MASTER_KEY": b64(KEY_A),
        "KROMA_MASTER_KEY_PREVIOUS": f" {ZERO_KEY_TEXT} ,, {ONES_KEY_TEXT},",
    }
    ring = load_master_keys(None, environ=env)
    assert ring.previous == (MasterKey(None, bytes(32)), MasterKey(None, b"\x01" * 32))


def test_previous_keys_accept_ref_equals_key_pairs_mixed_with_bare_keys():
    env = {
        "IAT_MASTER_KEY": b64(KEY_A),
        "IAT_MASTER_KEY_PREVIOUS": f"local-master-v1={ZERO_KEY_TEXT},{ONES_KEY_TEXT},v0={b64(KEY_B).rstrip('=')}",
    }
    ring = load_master_keys(None, environ=env)
    assert ring.previous == (
        MasterKey("local-master-v1", bytes(32)),
        MasterKey(None, b"\x01" * 32),
        MasterKey("v0", KEY_B),
    )


def test_malformed_previous_key_raises_master_key_error():
    with pytest.raises(MasterKeyError, match="entry 2"):
        load_master_keys(
            None,
            environ={"KROMA_MASTER_KEY": b64(KEY_A), "KROMA_MASTER_KEY_PREVIOUS": f"{ZERO_KEY_TEXT},oops"},
        )
    with pytest.raises(MasterKeyError):
        load_master_keys(
            None, environ={"KROMA_MASTER_KEY": b64(KEY_A), "KROMA_MASTER_KEY_PREVIOUS": f"={ZERO_KEY_TEXT}x"}
        )


def test_candidates_try_the_matching_ref_first_then_current_then_previous():
    env = {
        "KROMA_MASTER_KEY": b64(KEY_A),
        "KROMA_MASTER_KEY_REF": "v3",
        "KROMA_MASTER_KEY_PREVIOUS": f"{ZERO_KEY_TEXT},v2={b64(KEY_B)},{b64(KEY_A)}",
    }
    ring = load_master_keys(None, environ=env)
    assert ring.candidates("v2") == [KEY_B, KEY_A, bytes(32)]
    assert ring.candidates("v3") == [KEY_A, bytes(32), KEY_B]
    assert ring.candidates("unknown") == [KEY_A, bytes(32), KEY_B]
    assert ring.candidates(None) == [KEY_A, bytes(32), KEY_B]


def test_reprs_never_show_key_material(tmp_path):
    env = {"KROMA_MASTER_KEY": b64(KEY_A), "KROMA_MASTER_KEY_PREVIOUS": f"v1={b64(KEY_B)}"}
    text = repr(load_master_keys(None, environ=env))
    for key in (KEY_A, KEY_B):
        assert repr(key) not in text
        assert b64(key) not in text


def test_default_environ_is_the_process_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KROMA_MASTER_KEY", b64(KEY_B))
    assert load_master_keys(tmp_path / "master.key").current.key == KEY_B
