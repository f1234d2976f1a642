"""Provider accounts (contract §3.8): keyed by the normalised provider code, no id.

POST is a full-overwrite upsert: omitted fields go back to their defaults (display_name to the
code, enabled to true, config_json to {}), only created_at survives. It records
`provider_account.created` or `provider_account.replaced` (every field). PUT merges and DELETE
removes, with the generic `records.decide_update` / `records.decide_delete`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from kroma.domain import records
from kroma.domain.aggregate import ProjectState
from kroma.domain.errors import required
from kroma.domain.records import RecordKind, register
from kroma.domain.slugs import normalize_slug
from kroma.events.envelope import Metadata, NewEvent

KIND = register(
    RecordKind(
        entity="provider_account",
        collection="provider_accounts",
        title="Provider account",
        fields=("display_name", "account_ref", "base_url", "enabled", "config_json"),
        required=frozenset({"display_name"}),  # on PUT; POST defaults it to the code
        defaults={"enabled": True, "config_json": {}},
        key="provider_code",
    )
)


class UpsertProviderAccount(msgspec.Struct, omit_defaults=True):
    provider_code: str | None = None
    display_name: str | None = None
    account_ref: str | None = None
    base_url: str | None = None
    enabled: bool | None = None
    config_json: Any = None


class UpdateProviderAccount(msgspec.Struct, omit_defaults=True):
    display_name: str | None = None
    account_ref: str | None = None
    base_url: str | None = None
    enabled: bool | None = None
    config_json: Any = None


def provider_code(raw: str | None) -> str:
    """The normalised code of a body or path value; nothing usable is a 400."""
    code = normalize_slug(raw)
    if code is None:
        raise required("provider_code")
    return code


def upsert_values(cmd: UpsertProviderAccount) -> tuple[str, dict[str, Any]]:
    """(code, every field) of an upsert; checked before the project lookup."""
    records.check_decodable(KIND, cmd)  # what the reference's decoder refuses comes first
    code = provider_code(cmd.provider_code)
    values = records.create_values(
        KIND, msgspec.structs.replace(cmd, display_name=(cmd.display_name or "").strip() or code)
    )
    return code, values


def decide_upsert(state: ProjectState, code: str, values: dict[str, Any], meta: Metadata) -> NewEvent:
    verb = "replaced" if code in state.items(KIND.collection) else "created"
    return records.event(KIND, verb, state, code, values, meta)
