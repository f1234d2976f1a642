"""Imports every feature module whose events change the project aggregate, so their evolvers are
registered before any state is folded. Add a feature module here."""

from __future__ import annotations

from kroma.domain import (  # noqa: F401
    asset_links,
    characters,
    projects,
    prompt_templates,
    provider_accounts,
    reference_sets,
    secrets,
    style_guides,
)
