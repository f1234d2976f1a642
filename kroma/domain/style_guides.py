"""Style guides (contract §3.9): a named set of instructions, unique per project. Not audited by
the reference, but every change is an event like any other."""

from __future__ import annotations

import msgspec

from kroma.domain.records import RecordKind, register

KIND = register(
    RecordKind(
        entity="style_guide",
        collection="style_guides",
        title="Style guide",
        fields=("name", "instructions", "notes"),
        required=frozenset({"name", "instructions"}),
    )
)


class StyleGuideFields(msgspec.Struct, omit_defaults=True):
    """The create body (required fields checked by `create_values`) and the PUT body (≥1 of)."""

    name: str | None = None
    instructions: str | None = None
    notes: str | None = None
