"""Imports every feature module whose events change the project aggregate, so their evolvers are
registered before any state is folded. Add a feature module here."""

from __future__ import annotations

from kroma.domain import projects  # noqa: F401
