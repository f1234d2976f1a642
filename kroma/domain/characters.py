"""Characters (contract §3.10): only the name is required; unique per project."""

from __future__ import annotations

import msgspec

from kroma.domain.records import RecordKind, register

KIND = register(
    RecordKind(
        entity="character",
        collection="characters",
        title="Character",
        fields=("name", "description", "prompt_text"),
        required=frozenset({"name"}),
    )
)


class CharacterFields(msgspec.Struct, omit_defaults=True):
    """The create body (required fields checked by `create_values`) and the PUT body (≥1 of)."""

    name: str | None = None
    description: str | None = None
    prompt_text: str | None = None
