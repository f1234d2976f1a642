"""Prompt templates (contract §2 rows 29-33, §3.12)."""

from __future__ import annotations

from kroma.domain.prompt_templates import PromptTemplateFields
from kroma.http.routes.records import named_router
from kroma.projections.records import PROMPT_TEMPLATES

router = named_router(
    "/api/projects/{slug:str}/prompt-templates", PROMPT_TEMPLATES, PromptTemplateFields, "prompt templates"
)
