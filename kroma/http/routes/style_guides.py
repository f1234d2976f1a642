"""Style guides (contract §2 rows 39-43, §3.9)."""

from __future__ import annotations

from kroma.domain.style_guides import StyleGuideFields
from kroma.http.routes.records import named_router
from kroma.projections.records import STYLE_GUIDES

router = named_router("/api/projects/{slug:str}/style-guides", STYLE_GUIDES, StyleGuideFields, "style guides")
