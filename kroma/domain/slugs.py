"""Slug normalisation shared by project slugs, provider codes, usernames and path segments."""

from __future__ import annotations

from functools import lru_cache


def normalize_slug(value: str | None) -> str | None:
    """The contract's slug rule, or None when nothing usable is left.

    Lower-case; keep ASCII a-z, 0-9, '-' and '_'; collapse every run of other characters into one
    '_' (a literal '_' resets the run, so "a _b" -> "a__b"); strip '_' (not '-') at both ends.
    """
    if value is None:
        return None
    return _normalized(value)


@lru_cache(maxsize=4096)  # every request normalises its path's slug, often more than once
def _normalized(value: str) -> str | None:
    out: list[str] = []
    in_run = False
    for ch in value.strip().lower():
        if ("a" <= ch <= "z") or ("0" <= ch <= "9") or ch in "-_":
            out.append(ch)
            in_run = False
        elif not in_run:
            out.append("_")
            in_run = True
    slug = "".join(out).strip("_")
    return slug or None


def slugify(value: str | None) -> str:
    """normalize_slug, but an empty result becomes "project"."""
    return normalize_slug(value) or "project"
