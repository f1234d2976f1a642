"""The audit fold copes with any nesting depth in event data."""

from __future__ import annotations

from kroma.projections.audit import _counts_only


def test_counts_only_walks_deep_structures_without_recursion() -> None:
    deep: object = 1
    for _ in range(5000):
        deep = {"n": [deep]}
    assert _counts_only(deep) is True
    assert _counts_only({"a": {"b": [1, 2, {"c": "text"}]}}) is False
    assert _counts_only({"created": 1, "nested": {"deleted": 0, "ok": True}}) is True
