"""Pure crypto building blocks for secrets: AEAD sealing, master keys, and the data-key store.

Secret values are sealed with a per-secret data key (`KeyStore.encrypt_secret`) and the sealed
token goes into events; data keys are sealed with the master key and live in `keys.db`, outside the
event log, so destroying one (`KeyStore.destroy`) crypto-shreds every event that holds its secret.
"""

from kroma.crypto.aead import (
    PREFIX,
    CryptoError,
    DecryptError,
    InvalidKeyError,
    TokenFormatError,
    is_sealed,
    seal,
    unseal,
    unseal_any,
)
from kroma.crypto.keystore import (
    KEYS_DB_NAME,
    DataKeyExistsError,
    DataKeyNotFoundError,
    DataKeyUnwrapError,
    KeyStore,
    KeyStoreError,
    RewrapOutcome,
    RewrapReport,
)
from kroma.crypto.master_key import (
    DEFAULT_KEY_REF,
    MASTER_KEY_FILE_NAME,
    MasterKey,
    MasterKeyError,
    MasterKeyNotFoundError,
    MasterKeyring,
    decode_key,
    encode_key,
    load_master_keys,
)

__all__ = [
    "DEFAULT_KEY_REF",
    "KEYS_DB_NAME",
    "MASTER_KEY_FILE_NAME",
    "PREFIX",
    "CryptoError",
    "DataKeyExistsError",
    "DataKeyNotFoundError",
    "DataKeyUnwrapError",
    "DecryptError",
    "InvalidKeyError",
    "KeyStore",
    "KeyStoreError",
    "MasterKey",
    "MasterKeyError",
    "MasterKeyNotFoundError",
    "MasterKeyring",
    "RewrapOutcome",
    "RewrapReport",
    "TokenFormatError",
    "decode_key",
    "encode_key",
    "is_sealed",
    "load_master_keys",
    "seal",
    "unseal",
    "unseal_any",
]
