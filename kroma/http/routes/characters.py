"""Characters (contract §2 rows 44-48, §3.10)."""

from __future__ import annotations

from kroma.domain.characters import CharacterFields
from kroma.http.routes.records import named_router
from kroma.projections.records import CHARACTERS

router = named_router("/api/projects/{slug:str}/characters", CHARACTERS, CharacterFields, "characters")
