"""AES-256-GCM sealing in the reference's text format: `enc:v1:` + base64url(nonce || ciphertext || tag).

The format is the contract's (§3.13): a random 12-byte nonce, empty associated data, the 16-byte
tag appended to the ciphertext (as `AESGCM.encrypt` returns it), the whole payload base64url
encoded WITH `=` padding. Decoding is strict: anything but the canonical padded base64url text of a
payload at least nonce + tag long is a `TokenFormatError`, so a token has exactly one spelling.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "enc:v1:"
KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16


class CryptoError(Exception):
    """Base class of every error raised by `kroma.crypto`. Messages never contain key material."""


class InvalidKeyError(CryptoError, ValueError):
    """A key that is not exactly 32 bytes."""


class DecryptError(CryptoError):
    """A token that cannot be opened: wrong key, tampered data, or (subclass) a malformed token."""


class TokenFormatError(DecryptError):
    """A value that is not a well-formed `enc:v1:` token (no prefix, bad base64url, too short)."""


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_LEN:
        raise InvalidKeyError(f"AES-256-GCM key must be exactly {KEY_LEN} bytes")


def seal(key: bytes, plaintext: bytes) -> str:
    """Encrypt `plaintext` under `key` with a fresh random nonce; return the `enc:v1:` token."""
    _check_key(key)
    nonce = os.urandom(NONCE_LEN)
    payload = nonce + AESGCM(bytes(key)).encrypt(nonce, bytes(plaintext), None)
    return PREFIX + base64.urlsafe_b64encode(payload).decode("ascii")


def is_sealed(value: object) -> bool:
    """True when `value` is a string carrying the `enc:v1:` prefix (the format is not validated)."""
    return isinstance(value, str) and value.startswith(PREFIX)


def decode_token(token: str) -> tuple[bytes, bytes]:
    """Split a token into (nonce, ciphertext-with-tag) after strict format checks."""
    if not is_sealed(token):
        raise TokenFormatError("value is not an enc:v1 token")
    text = token[len(PREFIX) :]
    try:
        payload = base64.urlsafe_b64decode(text.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise TokenFormatError("enc:v1 payload is not padded base64url") from None
    # urlsafe_b64decode silently skips stray characters; the round trip rejects them, and
    # rejects missing padding, standard-alphabet `+`/`/` and non-zero trailing bits.
    if base64.urlsafe_b64encode(payload).decode("ascii") != text:
        raise TokenFormatError("enc:v1 payload is not canonical padded base64url")
    if len(payload) < NONCE_LEN + TAG_LEN:
        raise TokenFormatError("enc:v1 payload is truncated")
    return payload[:NONCE_LEN], payload[NONCE_LEN:]


def unseal(key: bytes, token: str) -> bytes:
    """Open an `enc:v1:` token with `key`. Raises `TokenFormatError` or `DecryptError`."""
    _check_key(key)
    nonce, sealed = decode_token(token)
    try:
        return AESGCM(bytes(key)).decrypt(nonce, sealed, None)
    except InvalidTag:
        raise DecryptError("enc:v1 token does not open with this key (wrong key or tampered data)") from None


def unseal_any(keys: Iterable[bytes], token: str) -> bytes:
    """Open `token` with the first of `keys` that authenticates it (GCM makes a wrong key fail)."""
    nonce, sealed = decode_token(token)
    tried = 0
    for key in keys:
        _check_key(key)
        tried += 1
        try:
            return AESGCM(bytes(key)).decrypt(nonce, sealed, None)
        except InvalidTag:
            continue
    raise DecryptError(f"enc:v1 token does not open with any of the {tried} candidate key(s)")
