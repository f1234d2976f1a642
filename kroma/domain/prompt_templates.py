"""Prompt templates (contract §3.12): name and template text, both required; unique per project."""

from __future__ import annotations

import msgspec

from kroma.domain.records import RecordKind, register

KIND = register(
    RecordKind(
        entity="prompt_template",
        collection="prompt_templates",
        title="Prompt template",
        fields=("name", "template_text"),
        required=frozenset({"name", "template_text"}),
    )
)


class PromptTemplateFields(msgspec.Struct, omit_defaults=True):
    """The create body (required fields checked by `create_values`) and the PUT body (≥1 of)."""

    name: str | None = None
    template_text: str | None = None
