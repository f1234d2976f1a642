"""The run log document (pipeline spec §4.7, §4.8), folded from one run's stream.

Tools that read the reference's run-log files get the same document from
`GET .../runs/{runId}/log`; it is computed from the events each time (a run's stream is short), so
it can never disagree with the log.
"""

from __future__ import annotations

from typing import Any

from kroma.domain import runs as ev
from kroma.events.envelope import Event


def document(events: list[Event]) -> dict[str, Any]:
    """The run log of the run whose stream is `events` (KeyError when it has no `run.requested`)."""
    requested = next(e.data for e in events if e.type == ev.RUN_REQUESTED)
    started = next((e.data for e in events if e.type == ev.RUN_STARTED), {})
    jobs: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.type == ev.JOB_PLANNED:
            jobs[event.data["job_id"]] = ev.planned_job_record(event.data)
    return {
        "timestamp": requested["timestamp"],
        "project": requested["project_slug"],
        "mode": requested["mode"],
        "stage": requested["stage"],
        "time": requested["time"],
        "weather": requested["weather"],
        "model": started.get("model", ""),
        "size": started.get("size", ""),
        "quality": started.get("quality", ""),
        "generation": requested["generation"],
        "postprocess": requested["postprocess"],
        "output_guard": requested["output_guard"],
        "storage": requested["storage"],
        "jobs": list(jobs.values()),
    }
