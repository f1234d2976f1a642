"""The enc:v1 token format (contract §3.13) and its strict decoding."""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kroma.crypto.aead import (
    PREFIX,
    DecryptError,
    InvalidKeyError,
    TokenFormatError,
    is_sealed,
    seal,
    unseal,
    unseal_any,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(32)


def _payload(token: str) -> bytes:
    return base64.urlsafe_b64decode(token.removeprefix(PREFIX))


def test_seal_output_is_enc_v1_prefix_plus_padded_base64url():
    token = seal(KEY, b"sk-test-16-bytes")  # 12 + 16 + 16 = 44 bytes -> 60 chars, one "="
    assert token.startswith("enc:v1:")
    text = token[len("enc:v1:") :]
    assert len(text) % 4 == 0
    assert text.endswith("=")
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")


def test_sealed_payload_is_12_byte_nonce_then_ciphertext_then_16_byte_tag():
    plaintext = b"sk-test-plaintext"
    payload = _payload(seal(KEY, plaintext))
    assert len(payload) == 12 + len(plaintext) + 16
    nonce, ciphertext_and_tag = payload[:12], payload[12:]
    assert AESGCM(KEY).decrypt(nonce, ciphertext_and_tag, None) == plaintext
    assert plaintext not in payload


def test_value_sealed_by_hand_written_aesgcm_call_opens():
    nonce = os.urandom(12)
    body = AESGCM(KEY).encrypt(nonce, b"from the reference", None)
    token = "enc:v1:" + base64.urlsafe_b64encode(nonce + body).decode()
    assert unseal(KEY, token) == b"from the reference"


def test_reference_test_key_vector_round_trips():
    # The reference's tests use the all-zero key spelled "AAAA...A=" (43 A's and one '=').
    key = base64.urlsafe_b64decode("A" * 43 + "=")
    nonce = bytes.fromhex("000102030405060708090a0b")
    token = "enc:v1:" + base64.urlsafe_b64encode(nonce + AESGCM(key).encrypt(nonce, b"x", None)).decode()
    assert unseal(key, token) == b"x"


def test_each_seal_uses_a_fresh_nonce():
    tokens = {seal(KEY, b"same") for _ in range(50)}
    assert len(tokens) == 50
    assert len({_payload(t)[:12] for t in tokens}) == 50


def test_empty_plaintext_round_trips():
    token = seal(KEY, b"")
    assert len(_payload(token)) == 28
    assert unseal(KEY, token) == b""


def test_wrong_key_raises_decrypt_error():
    with pytest.raises(DecryptError):
        unseal(OTHER_KEY, seal(KEY, b"secret"))


def test_tampered_ciphertext_raises_decrypt_error():
    payload = bytearray(_payload(seal(KEY, b"secret")))
    payload[14] ^= 0x01
    token = PREFIX + base64.urlsafe_b64encode(bytes(payload)).decode()
    with pytest.raises(DecryptError) as info:
        unseal(KEY, token)
    assert not isinstance(info.value, TokenFormatError)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("plain legacy value", id="no-prefix"),
        pytest.param("enc:v2:" + "A" * 40, id="other-version"),
        pytest.param(PREFIX + "!!!!" * 10, id="not-base64"),
        pytest.param(PREFIX + base64.urlsafe_b64encode(bytes(27)).decode(), id="shorter-than-nonce-plus-tag"),
    ],
)
def test_malformed_token_raises_token_format_error(token):
    with pytest.raises(TokenFormatError):
        unseal(KEY, token)


def test_token_without_padding_is_rejected():
    token = seal(KEY, b"sk-test-16-bytes")
    assert token.endswith("=")
    with pytest.raises(TokenFormatError):
        unseal(KEY, token.rstrip("="))


def test_token_in_standard_base64_alphabet_is_rejected():
    nonce = b"\xfb" * 12  # encodes to '+' / '/' in the standard alphabet
    payload = nonce + AESGCM(KEY).encrypt(nonce, b"\xff\xfe" * 8, None)
    standard = base64.b64encode(payload).decode()
    assert "+" in standard or "/" in standard
    with pytest.raises(TokenFormatError):
        unseal(KEY, PREFIX + standard)
    assert unseal(KEY, PREFIX + base64.urlsafe_b64encode(payload).decode()) == b"\xff\xfe" * 8


def test_token_with_non_ascii_or_embedded_junk_is_rejected():
    token = seal(KEY, b"secret")
    with pytest.raises(TokenFormatError):
        unseal(KEY, token[:20] + "é" + token[20:])
    with pytest.raises(TokenFormatError):
        unseal(KEY, token[:20] + "\n" + token[20:])


def test_is_sealed_checks_the_prefix_only():
    assert is_sealed(seal(KEY, b"x"))
    assert is_sealed("enc:v1:")
    assert not is_sealed("sk-plaintext")
    assert not is_sealed("")
    assert not is_sealed(None)
    assert not is_sealed(b"enc:v1:AAAA")


@pytest.mark.parametrize("bad", [b"", bytes(16), bytes(31), bytes(33)])
def test_keys_that_are_not_32_bytes_are_rejected(bad):
    with pytest.raises(InvalidKeyError):
        seal(bad, b"x")
    with pytest.raises(InvalidKeyError):
        unseal(bad, seal(KEY, b"x"))


def test_unseal_any_opens_with_the_first_key_that_authenticates():
    token = seal(KEY, b"rotated")
    assert unseal_any([OTHER_KEY, KEY], token) == b"rotated"
    with pytest.raises(DecryptError):
        unseal_any([OTHER_KEY], token)
    with pytest.raises(DecryptError):
        unseal_any([], token)


def test_error_messages_do_not_contain_key_material():
    token = seal(KEY, b"secret")
    with pytest.raises(DecryptError) as info:
        unseal(OTHER_KEY, token)
    message = str(info.value)
    assert base64.urlsafe_b64encode(KEY).decode() not in message
    assert "secret" not in message
