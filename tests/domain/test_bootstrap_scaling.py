"""The bootstrap import decides in time linear in its entries (it was quadratic: every entry scanned
its whole collection, twice). Timed as a ratio, in process, with no I/O: 4x the entries must cost
well under the 16x a quadratic import would (the bound leaves room for a loaded machine)."""

from __future__ import annotations

import time
from typing import Any

from kroma.domain import records, style_guides
from kroma.domain.aggregate import ProjectState
from kroma.domain.bootstrap_commands import decide_import, snapshot_of_state
from kroma.domain.bootstrap_import import parse_import_request
from kroma.domain.errors import ValidationError
from kroma.events.envelope import Metadata

NOW = "2030-01-01T00:00:00Z"


def _state() -> ProjectState:
    return ProjectState(
        id="p1",
        slug="demo",
        name="Demo",
        description="",
        owner_username="local",
        owner_display_name="Local",
        created_at=NOW,
        updated_at=NOW,
        storage={},
    )


def _body(n: int) -> dict[str, Any]:
    return {
        "settings": {"style_guides": [{"name": f"Style {i}", "instructions": f"ink {i}"} for i in range(n)]}
    }


def _decide(state: ProjectState, n: int) -> tuple[float, int]:
    counter = iter(range(10**9))
    request = parse_import_request(_body(n))
    started = time.perf_counter()
    events, _plan = decide_import(
        state, snapshot_of_state(state, {}), request, NOW, lambda: f"id{next(counter)}", Metadata()
    )
    return time.perf_counter() - started, len(events)


def _best(n: int) -> float:
    return min(_decide(_state(), n)[0] for _ in range(3))


def test_bootstrap_import_decides_in_linear_time() -> None:
    small, large = _best(1000), _best(4000)
    assert large < 8 * small, f"1000 entries {small:.3f}s, 4000 entries {large:.3f}s"


def test_a_large_import_still_refuses_a_duplicate_name_made_by_an_update() -> None:
    """The name index the linear import keeps must see renames as the scan did: an update of an
    existing record to a name another record holds is still refused."""
    state = _state()
    state.items("style_guides").update(
        {
            "a": {"name": "Alpha", "instructions": "x", "notes": ""},
            "b": {"name": "Beta", "instructions": "y", "notes": ""},
        }
    )
    _elapsed, count = _decide(state, 2000)
    assert count == 2002  # bootstrap.imported + 2000 creates + the project bump
    index = records.name_index(style_guides.KIND, state)
    try:
        records.decide_update(style_guides.KIND, state, "a", {"name": "Beta"}, Metadata(), index)
    except ValidationError as exc:
        assert exc.message == style_guides.KIND.duplicate
    else:  # pragma: no cover - the assertion above is the test
        raise AssertionError("a rename onto an existing name was accepted")
