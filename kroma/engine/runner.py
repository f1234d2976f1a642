"""The run engine: follows the log, works requested runs, records every step as events.

- On start it resumes every unfinished run (from the read models, once they show the log's head),
  then follows the log for `run.requested` (mode `run`) and `run.cancel_requested`.
- A run's jobs run concurrently (`run_jobs_in_flight`), all candidates of a job together; provider
  calls share one limiter (`run_provider_calls`), image work runs in worker threads under another
  (`run_cpu_workers`). Names, ranks and winners depend only on the plan and the images, so they
  are what the spec's sequential order gives.
- Each step's events carry a deterministic idempotency key (`run:<id>/job:<key>/candidate:<k>/
  generated`, ...): a resumed or duplicated engine can never record a step twice, and a recorded
  generation is never paid for again. Progress lives only in the log (`kroma.engine.state`).
- The first failure or a cancel stops the run at the next step boundary: steps in flight finish
  and are recorded, no new step starts, then `run.failed` / `run.canceled` ends the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx

from kroma.domain import runs as ev
from kroma.domain.aggregate import ProjectState, project_stream
from kroma.domain.assets import AssetRecord, asset_recorded
from kroma.domain.errors import KromaError
from kroma.engine import files, passes, pricing
from kroma.engine.paths import display_path
from kroma.engine.providers.base import GenerationRequest, Provider, ProviderError
from kroma.engine.providers.select import build_provider, environment, openai_base_url, openai_key
from kroma.engine.records import candidate_record, job_record
from kroma.engine.state import CandidateState, JobState, RunState, fold_run
from kroma.engine.trigger import summary_stdout
from kroma.events.envelope import Event, Metadata, NewEvent
from kroma.events.store import AppendResult
from kroma.imaging import provenance, qa
from kroma.storage import post_run

log = logging.getLogger("kroma.engine")
FOLLOWED = (ev.RUN_REQUESTED, ev.RUN_CANCEL_REQUESTED)
PASSES = ("bg_remove", "upscale", "color")  # the fixed order (§5.2)
PASS_EVENTS = {
    "bg_remove": ev.CANDIDATE_BACKGROUND_REMOVED,
    "upscale": ev.CANDIDATE_UPSCALED,
    "color": ev.CANDIDATE_COLOR_CORRECTED,
}
PASS_KINDS = {
    "bg_remove": "candidate_background_removed",
    "upscale": "candidate_upscaled",
    "color": "candidate_color_corrected",
}


def planned_passes(planned: dict[str, Any]) -> list[str]:
    """The passes a job's planned post-process record switches on, in the fixed order."""
    return [name for name in PASSES if planned.get(name)]


class StepFailed(Exception):
    """A step failed in a way the trigger reports as a client-visible 400 (§2.4, §4.2)."""

    def __init__(self, message: str, code: str = "planning_preflight_failed", kind: str = "validation") -> None:
        super().__init__(message)
        self.message, self.code, self.kind = message, code, kind


def candidate_seed(run_id: str, job_key: str, index: int) -> int:
    """A stable per-candidate seed: the same run, job and index always get the same one."""
    digest = hashlib.sha256(f"{run_id}/{job_key}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


class RunContext:
    """One run being worked: its folded state, provider, and the stop flag of step boundaries."""

    def __init__(self, state: RunState, project: ProjectState, provider: Provider) -> None:
        self.state = state
        self.project = project
        self.provider = provider
        self.project_root = Path(state.requested["project_root"])
        self.guard = qa.guard_settings(state.requested["output_guard"])  # with any extra checks
        self.stop = False
        self.error: BaseException | None = None
        self.last_event_id = state.requested_event_id
        self._passes: tuple[passes.PassEnv, passes.AdapterConfig] | None = None
        self._http: httpx.AsyncClient | None = None

    async def pass_env(self, engine: RunEngine) -> tuple[passes.PassEnv, passes.AdapterConfig]:
        """The post-process adapters' environment, built on the first pass a run needs."""
        if self._passes is None:
            env = await anyio.to_thread.run_sync(environment, engine.app_root, dict(os.environ))
            self._http = httpx.AsyncClient()
            self._passes = (
                passes.PassEnv(
                    app_root=engine.app_root,
                    env=env,
                    cpu=engine.cpu,
                    http=self._http,
                    openai_key=await openai_key(self.project, engine.services.vault, env),
                    openai_base_url=openai_base_url(self.project, env),
                    command_timeout=None,  # PassEnv reads KROMA_COMMAND_TIMEOUT_SECONDS (default 300)
                ),
                passes.adapter_config(self.state.requested.get("postprocess_config") or {}),
            )
        return self._passes

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.stop = True


class RunEngine:
    def __init__(self, services: Any) -> None:
        self.services = services
        self.store = services.store
        self.clock = services.clock
        settings = services.settings
        self.app_root: Path = settings.app_root
        self.provider_calls = anyio.CapacityLimiter(max(1, settings.run_provider_calls))
        self.cpu = anyio.CapacityLimiter(max(1, settings.run_cpu_workers or os.cpu_count() or 1))
        self.jobs_in_flight = max(1, settings.run_jobs_in_flight)
        # Runs worked at once: a later run waits (still `queued`) for a slot, so a burst of
        # triggers never holds every run's providers, files and tasks in memory at once.
        self.runs_in_flight = anyio.CapacityLimiter(max(1, settings.run_runs_in_flight))
        self.prices = pricing.load_prices(self.app_root)
        self._active: dict[str, RunContext | None] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._main(), name="kroma-run-engine")

    async def close(self) -> None:
        """Stop working; unfinished runs resume on the next start from their last recorded step."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _main(self) -> None:
        head = await self.store.head()
        await self.services.settle(head)
        unfinished = await self.services.reader.all(
            "SELECT id FROM runs WHERE run_mode = 'run' AND status IN ('queued', 'running', 'canceling')"
            " ORDER BY position",
            (),
        )
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for row in unfinished:
                self._launch(row["id"])
            for run_id in await post_run.due(self.services):  # a post-run S3 sync cut short by a stop
                self._launch(run_id)
            await self._follow(head)

    async def _follow(self, position: int) -> None:
        while True:
            head = await self.store.head()
            events = await self.store.read_all(position, 500, types=FOLLOWED)
            for event in events:
                self._on_event(event)
            if len(events) == 500:
                position = events[-1].position
                continue
            position = max(head, events[-1].position if events else head)
            await self.store.wait_for_append(position, 1.0)

    def _on_event(self, event: Event) -> None:
        run_id = event.data.get("run_id")
        if not isinstance(run_id, str):
            return
        if event.type == ev.RUN_REQUESTED and event.data.get("mode") == "run":
            self._launch(run_id)
        elif event.type == ev.RUN_CANCEL_REQUESTED:
            context = self._active.get(run_id)
            if context is not None:
                context.stop = True
            elif run_id not in self._active:
                self._launch(run_id)  # a run this engine is not working: end it as canceled

    def _launch(self, run_id: str) -> None:
        if run_id in self._active or self._tg is None:
            return
        self._active[run_id] = None
        self._tg.start_soon(self._guarded, run_id, name=f"run {run_id}")

    async def _guarded(self, run_id: str) -> None:
        try:
            async with self.runs_in_flight:
                await self._work(run_id)
            await post_run.sync_after_run(self.services, run_id)  # §4.9: never changes the run's outcome
        except Exception:
            log.exception("run %s: the engine failed", run_id)
            await self._end_after_crash(run_id)
        finally:
            self._active.pop(run_id, None)
            self._ended.setdefault(run_id, asyncio.Event()).set()

    async def wait_for_end(self, run_id: str, timeout: float | None = None) -> Event | None:
        """The run's final event, once it is in the log (None when the timeout ends first)."""
        with anyio.move_on_after(timeout):
            while True:
                events = await self.store.read_stream(ev.run_stream(run_id))
                for event in reversed(events):
                    if event.type in ev.RUN_ENDS:
                        return event
                flag = self._ended.setdefault(run_id, asyncio.Event())
                with anyio.move_on_after(1.0):
                    await flag.wait()
                if flag.is_set():
                    self._ended.pop(run_id, None)
        return None

    # -- one run -----------------------------------------------------------------------------

    async def _load(self, run_id: str) -> RunState | None:
        return fold_run(await self.store.read_stream(ev.run_stream(run_id)))

    def _meta(self, state: RunState, causation_id: str | None) -> Metadata:
        return Metadata(correlation_id=state.run_id, causation_id=causation_id)

    async def _append(self, events: Sequence[NewEvent], key: str) -> AppendResult:
        return await self.store.append(events, idempotency_key=key)

    async def _work(self, run_id: str) -> None:
        state = await self._load(run_id)
        if state is None or state.ended is not None or state.requested["mode"] != "run":
            return
        project, _version = await self.services.commands.load_project(state.project_id)
        if state.cancel_requested is not None:
            await self._end(state, ev.RUN_CANCELED, {"status": "canceled"}, state.cancel_event_id)
            return
        try:
            provider = await build_provider(
                state.requested["provider"], project, self.services.vault, self.app_root, os.environ, self.cpu
            )
        except ProviderError as exc:
            await self._end(state, ev.RUN_FAILED, _failure(StepFailed(exc.message)), state.requested_event_id)
            return
        context = RunContext(state, project, provider)
        self._active[run_id] = context
        try:
            await self._execute(context)
        finally:
            await provider.aclose()
            await context.aclose()

    async def _execute(self, context: RunContext) -> None:
        state = context.state
        if state.started is None:
            started = {
                "run_id": state.run_id,
                "project_id": state.project_id,
                "status": "running",
                "provider": context.provider.code,
            }
            result = await self._append(
                [NewEvent(ev.run_stream(state.run_id), ev.RUN_STARTED, started, self._meta(state, state.requested_event_id))],
                f"run:{state.run_id}/started",
            )
            state.started = started
            state.started_event_id = context.last_event_id = result.event_ids[0]
        jobs = anyio.Semaphore(self.jobs_in_flight)
        async with anyio.create_task_group() as tg:
            for job in state.ordered_jobs():
                tg.start_soon(self._job, context, job, jobs)
        latest = await self._load(state.run_id)  # a cancel may have landed meanwhile
        if context.error is not None:
            await self._end(state, ev.RUN_FAILED, _failure(context.error), context.last_event_id)
        elif latest is not None and latest.cancel_requested is not None and not _all_decided(latest):
            await self._end(state, ev.RUN_CANCELED, {"status": "canceled"}, latest.cancel_event_id)
        else:
            await self._complete(latest or state, context.last_event_id)

    async def _job(self, context: RunContext, job: JobState, jobs: anyio.Semaphore) -> None:
        async with jobs:
            if context.stop or job.outcome is not None:
                return
            total = context.state.requested["candidates"]
            async with anyio.create_task_group() as tg:
                for index in range(1, total + 1):
                    tg.start_soon(self._candidate, context, job, index)
            if context.stop:
                return
            try:
                await self._decide_job(context, job)
            except Exception as exc:  # a step failure stops the run at the next boundary
                _note_failure(context, exc)

    async def _candidate(self, context: RunContext, job: JobState, index: int) -> None:
        candidate = job.candidate(index)
        try:
            if candidate.generated is None and not context.stop:
                await self._generate(context, job, candidate)
            done = {step["pass"] for step in candidate.passes}
            for name in planned_passes(job.planned["planned_postprocess"]):
                if name in done or candidate.generated is None or candidate.checked is not None or context.stop:
                    continue
                await self._pass(context, job, candidate, name)
            if candidate.generated is not None and candidate.checked is None and not context.stop:
                await self._check(context, job, candidate)
            if candidate.rejected is not None:
                await anyio.to_thread.run_sync(_finish_archive, candidate.rejected)
        except Exception as exc:
            _note_failure(context, exc)

    # -- steps -------------------------------------------------------------------------------

    async def _pass(self, context: RunContext, job: JobState, candidate: CandidateState, name: str) -> None:
        """One post-process pass on the candidate's current file (§5): its output, asset, and a
        `derived_from` link to the file before."""
        state = context.state
        outputs = state.requested.get("postprocess_outputs") or {}
        plan = job.planned["planned_postprocess"]
        current = Path(candidate.current_path or "")
        root = context.project_root
        shown = display_path(current, self.app_root)
        data = await anyio.Path(current).read_bytes()
        env, cfg = await context.pass_env(self)
        try:
            if name == "bg_remove":
                fmt = outputs.get("bg_remove_format") or "png"
                out = files.derived_path(root / "background_removed", current, "nobg", f".{fmt}")
                image, details = await passes.background_remove(
                    env, cfg, data, input_name=current.name, input_display=shown,
                    output_display=display_path(out, self.app_root), backends=plan["bg_remove_backends"],
                    fmt=fmt, refine=bool(plan["bg_refine_openai"]), refine_required=bool(plan["bg_refine_openai_required"]),
                )
            elif name == "upscale":
                scale, fmt = int(outputs.get("upscale_scale") or 2), outputs.get("upscale_format") or "png"
                out = files.derived_path(root / "upscaled", current, f"x{scale}", f".{fmt}")
                image, details = await passes.upscale(
                    env, cfg, data, input_display=shown, output_display=display_path(out, self.app_root),
                    backend=plan["upscale_backend"], scale=scale, fmt=fmt,
                )
            else:
                profile = outputs.get("color_profile") or plan.get("color_profile") or "neutral"
                out = files.derived_path(root / "color_corrected", current, profile, ".png")
                image, details = await passes.color(
                    env, cfg, data, input_display=shown, output_display=display_path(out, self.app_root), profile=profile
                )
        except passes.PassError as exc:
            raise StepFailed(exc.message) from None
        fields = {"run_id": state.run_id, "job_id": job.job_id, "candidate_id": candidate.candidate_id or "",
                  "pass": name, "derived_from": shown}

        def write() -> tuple[dict[str, Any], Path | None]:
            stored = provenance.with_provenance(image, fields) if out.suffix.lower() == ".png" else image
            moved = files.write_new(out, stored, root)
            return provenance.describe(stored), moved

        described, replaced = await anyio.to_thread.run_sync(write, limiter=self.cpu)
        asset_id = self.clock.new_id()
        parent = candidate.current_asset_id
        step = {
            "run_id": state.run_id,
            "project_id": state.project_id,
            "job_id": job.job_id,
            "candidate_id": candidate.candidate_id,
            "candidate_index": candidate.index,
            "pass": name,
            "input": shown,
            "output": display_path(out, self.app_root),
            "output_abs": str(out),
            "asset_id": asset_id,
            "details": details,
            **described,
        }
        candidate.passes.append(step)
        step["record"] = candidate_record(candidate)
        meta = self._meta(state, candidate.last_event_id)
        kind = PASS_KINDS[name]
        events = [
            NewEvent(ev.run_stream(state.run_id), PASS_EVENTS[name], step, meta),
            asset_recorded(_asset(asset_id, state, job, candidate.candidate_id, kind, step["output"], described), meta),
        ]
        if parent:
            link = {
                "project_id": state.project_id,
                "link_id": self.clock.new_id(),
                "parent_asset_id": parent,
                "child_asset_id": asset_id,
                "link_type": "derived_from",
            }
            events.append(NewEvent(project_stream(state.project_id), "asset_link.created", link, meta))
        events += await self._relocated(state, out, replaced, meta)
        key = f"run:{state.run_id}/job:{job.planned['job_key']}/candidate:{candidate.index}/{name}"
        appended = await self._append(events, key)
        candidate.last_event_id = appended.event_ids[0]
        if appended.replayed:
            await self._adopt(context, job, candidate)

    async def _generate(self, context: RunContext, job: JobState, candidate: CandidateState) -> None:
        state, planned = context.state, job.planned
        total = state.requested["candidates"]
        seed = candidate_seed(state.run_id, planned["job_key"], candidate.index)
        request = GenerationRequest(prompt=planned["prompt"], input_images=tuple(planned["input_paths"]), seed=seed)
        async with self.provider_calls:
            if context.stop:  # a cancel or failure landed while this call waited for its turn
                return
            try:
                result = await context.provider.generate(request)
            except ProviderError as exc:
                raise StepFailed(exc.message) from None
        candidate_id = self.clock.new_id()
        asset_id = self.clock.new_id()
        output = context.project_root / files.OUTPUTS / files.candidate_file_name(planned["job_key"], candidate.index, total)
        fields = {
            "run_id": state.run_id,
            "job_id": job.job_id,
            "job_key": planned["job_key"],
            "candidate_id": candidate_id,
            "candidate_index": str(candidate.index),
            "prompt": planned["prompt"],
            "provider": result.provider,
            "model": result.model,
            "size": result.size,
            "quality": result.quality,
            "seed": str(seed),
            "parameters": _json(result.parameters),
        }

        def write() -> tuple[dict[str, Any], Path | None]:
            png = provenance.with_provenance(result.image, fields)
            moved = files.write_new(output, png, context.project_root)
            return provenance.describe(png), moved

        described, replaced = await anyio.to_thread.run_sync(write, limiter=self.cpu)
        shown = display_path(output, self.app_root)
        cost = pricing.price(self.prices, result.provider, result.model, result.size, result.quality)
        data = {
            "run_id": state.run_id,
            "project_id": state.project_id,
            "job_id": job.job_id,
            "job_key": planned["job_key"],
            "candidate_id": candidate_id,
            "candidate_index": candidate.index,
            "output": shown,
            "output_abs": str(output),
            "output_asset_id": asset_id,
            "provider": result.provider,
            "model": result.model,
            "size": result.size,
            "quality": result.quality,
            "seed": seed,
            "request_id": result.request_id,
            "attempts": result.attempts,
            "parameters": result.parameters,
            "cost_usd": cost,
            **described,
        }
        candidate.candidate_id = candidate_id
        candidate.generated = data
        meta = self._meta(state, state.started_event_id)  # caused by run.started
        data["record"] = candidate_record(candidate)
        events = [
            NewEvent(ev.run_stream(state.run_id), ev.CANDIDATE_GENERATED, data, meta),
            asset_recorded(_asset(asset_id, state, job, candidate_id, "candidate_output", shown, described), meta),
            ev.cost_event(
                ev.CostRecord(
                    id=self.clock.new_id(),
                    project_id=state.project_id,
                    run_id=state.run_id,
                    job_id=job.job_id,
                    provider_code=result.provider,
                    model_name=result.model,
                    event_type="image_generation",
                    units=1.0,
                    unit_cost_usd=cost,
                    total_cost_usd=cost,
                    currency="USD",
                    meta_json={
                        "candidate_id": candidate_id,
                        "candidate_index": candidate.index,
                        "size": result.size,
                        "quality": result.quality,
                        "request_id": result.request_id,
                        "attempts": result.attempts,
                    },
                ),
                meta,
            ),
        ]
        events += await self._relocated(state, output, replaced, meta)
        key = f"run:{state.run_id}/job:{planned['job_key']}/candidate:{candidate.index}/generated"
        appended = await self._append(events, key)
        candidate.last_event_id = appended.event_ids[0]
        if appended.replayed:  # another engine recorded this step first: take its record
            await self._adopt(context, job, candidate)

    async def _check(self, context: RunContext, job: JobState, candidate: CandidateState) -> None:
        state = context.state
        path = Path(candidate.current_path or "")
        shown = display_path(path, self.app_root)

        scene_path = Path(job.planned["input_paths"][0])
        drift = context.guard.max_geometry_drift is not None

        def examine() -> dict[str, Any]:
            data = path.read_bytes() if path.is_file() else None
            scene = scene_path.read_bytes() if drift and scene_path.is_file() else None
            entry = qa.check_file(data, shown, context.guard, scene=scene)
            return qa.report([entry], shown, context.guard)

        report = await anyio.to_thread.run_sync(examine, limiter=self.cpu)
        rank = qa.rank(report, context.guard.max_chroma_delta)
        failed = report["summary"]["hard_failures"] > 0
        asset_id = candidate.current_asset_id
        output_guard = {
            "checked_input": shown,
            "summary": report["summary"],
            "files": [{"file": f["file"], "chroma_delta": f["chroma_delta"]} for f in report["files"]],
            "bad_archive": None,
        }
        meta = self._meta(state, candidate.last_event_id)
        data: dict[str, Any] = {
            "run_id": state.run_id,
            "project_id": state.project_id,
            "job_id": job.job_id,
            "candidate_id": candidate.candidate_id,
            "candidate_index": candidate.index,
            "status": "failed_output_guard" if failed else "done",
            "report": report,
            "rank": rank,
            "output_guard": output_guard,
            "final_output": None if failed else shown,
            "final_asset_id": None if failed else asset_id,
            "asset_id": asset_id,
            "quality_report_id": self.clock.new_id(),
        }
        candidate.checked = data
        events = [NewEvent(ev.run_stream(state.run_id), ev.CANDIDATE_CHECKED, data, meta)]
        if failed:
            target = _bad_target(path, context.project_root)
            bad_archive = display_path(target, self.app_root)
            rejected: dict[str, Any] = {
                "run_id": state.run_id,
                "project_id": state.project_id,
                "job_id": job.job_id,
                "candidate_id": candidate.candidate_id,
                "candidate_index": candidate.index,
                "from": shown,
                "from_abs": str(path),
                "bad_archive": bad_archive,
                "bad_archive_abs": str(target),
            }
            candidate.rejected = rejected
            rejected["record"] = candidate_record(candidate)
            events.append(NewEvent(ev.run_stream(state.run_id), ev.CANDIDATE_REJECTED, rejected, meta))
            if asset_id and candidate.generated is not None:  # the asset row follows its file
                moved = _asset(asset_id, state, job, candidate.candidate_id, "candidate_output", bad_archive,
                               _described(candidate.generated))
                events.append(asset_recorded(moved, meta))
        data["record"] = candidate_record(candidate)
        key = f"run:{state.run_id}/job:{job.planned['job_key']}/candidate:{candidate.index}/checked"
        appended = await self._append(events, key)
        candidate.last_event_id = appended.event_ids[0]
        if appended.replayed:
            await self._adopt(context, job, candidate)
            return
        if candidate.rejected is not None:
            await anyio.to_thread.run_sync(_finish_archive, candidate.rejected)

    async def _decide_job(self, context: RunContext, job: JobState) -> None:
        state = context.state
        if job.outcome is not None:
            return
        ranked = [
            {"candidate_index": c.index, "status": c.checked["status"], "rank": c.checked["rank"]}
            for c in job.candidates.values()
            if c.checked is not None
        ]
        if len(ranked) < state.requested["candidates"]:
            return  # a candidate is unfinished (stopped run): decided on resume
        winner = qa.pick_winner(ranked)
        last = max((c for c in job.candidates.values()), key=lambda c: c.index).last_event_id
        meta = self._meta(state, last)
        planned_object = ev.planned_job_record(job.planned)
        base = {"run_id": state.run_id, "project_id": state.project_id, "job_id": job.job_id, "job_key": job.planned["job_key"]}
        events: list[NewEvent] = []
        if winner is None:
            job.outcome, job.outcome_type = {**base, "failure_reason": "all_candidates_failed_output_guard"}, ev.JOB_FAILED
            job.outcome["record"] = job_record(job, planned_object)
            events.append(NewEvent(ev.run_stream(state.run_id), ev.JOB_FAILED, job.outcome, meta))
        else:
            chosen = job.candidates[winner["candidate_index"]]
            assert chosen.checked is not None and chosen.generated is not None
            final_asset_id = self.clock.new_id()
            job.outcome = {
                **base,
                "selected_candidate": chosen.index,
                "candidate_id": chosen.candidate_id,
                "final_output": chosen.checked["final_output"],
                "final_asset_id": final_asset_id,
                "source_asset_id": chosen.current_asset_id,
            }
            job.outcome_type = ev.JOB_WINNER_SELECTED
            job.outcome["record"] = job_record(job, planned_object)
            events.append(NewEvent(ev.run_stream(state.run_id), ev.JOB_WINNER_SELECTED, job.outcome, meta))
            final = _asset(final_asset_id, state, job, None, "job_final_output", chosen.checked["final_output"],
                           _described(chosen.passes[-1] if chosen.passes else chosen.generated),
                           {"selected_candidate": chosen.index})
            events.append(asset_recorded(final, meta))
            for c in sorted(job.candidates.values(), key=lambda c: c.index):
                if c.current_asset_id:  # every candidate links to the job's final output
                    link = {
                        "project_id": state.project_id,
                        "link_id": self.clock.new_id(),
                        "parent_asset_id": c.current_asset_id,
                        "child_asset_id": final_asset_id,
                        "link_type": "derived_from",
                    }
                    events.append(NewEvent(project_stream(state.project_id), "asset_link.created", link, meta))
        appended = await self._append(events, f"run:{state.run_id}/job:{job.planned['job_key']}/outcome")
        context.last_event_id = appended.event_ids[0]

    async def _relocated(self, state: RunState, old: Path, moved: Path | None, meta: Metadata) -> list[NewEvent]:
        """The asset rows of a file that `write_new` moved to `archive/replaced/`, re-recorded at
        their file's new path (so an asset never names bytes it did not record)."""
        if moved is None:
            return []
        await self.services.settle(await self.store.head())
        shown = display_path(old, self.app_root)
        rows = await self.services.reader.all(
            "SELECT * FROM assets WHERE project_id = ? AND (rel_path = ? OR storage_uri = ?)",
            (state.project_id, shown, shown),
        )
        new = display_path(moved, self.app_root)
        return [asset_recorded(_moved_asset(row, new), meta) for row in rows]

    async def _adopt(self, context: RunContext, job: JobState, candidate: CandidateState) -> None:
        latest = await self._load(context.state.run_id)
        if latest is not None and job.job_id in latest.jobs:
            job.candidates[candidate.index] = latest.jobs[job.job_id].candidate(candidate.index)

    # -- the end -------------------------------------------------------------------------------

    async def _complete(self, state: RunState, causation_id: str | None) -> None:
        jobs = state.ordered_jobs()
        failed = [j for j in jobs if j.outcome_type == ev.JOB_FAILED]
        if any(j.outcome is None for j in jobs):  # stopped before every job was decided
            await self._end(state, ev.RUN_FAILED, _failure(StepFailed("Run stopped before every job was decided")), causation_id)
            return
        requested = state.requested
        root = Path(requested["project_root"])
        stdout = summary_stdout(
            run_log_path=requested["run_log_path"],
            slug=requested["project_slug"],
            project_root=display_path(root, self.app_root),
            jobs=len(jobs),
            mode="run",
        )
        stderr = ""
        if failed:
            bad = display_path(root / files.ARCHIVE_BAD, self.app_root)
            stderr = f"Output guard failed for {len(failed)} job(s). Bad outputs moved to {bad}"
        await self._end(
            state,
            ev.RUN_COMPLETED,
            {
                "status": "failed" if failed else "ok",
                "failed_jobs": len(failed),
                "jobs": len(jobs),
                "stdout": stdout,
                "stderr": stderr,
                "quality_report_id": self.clock.new_id(),
                "output_guard": requested["output_guard"],
            },
            causation_id,
        )

    async def _end(self, state: RunState, kind: str, data: dict[str, Any], causation_id: str | None) -> None:
        payload = {"run_id": state.run_id, "project_id": state.project_id, **data}
        event = NewEvent(ev.run_stream(state.run_id), kind, payload, self._meta(state, causation_id))
        await self._append([event], f"run:{state.run_id}/end")

    async def _end_after_crash(self, run_id: str) -> None:
        try:
            state = await self._load(run_id)
            if state is not None and state.ended is None:
                await self._end(state, ev.RUN_FAILED, _failure(RuntimeError("engine failure")), None)
        except Exception:
            log.exception("run %s: could not record the failure", run_id)


# -- helpers -------------------------------------------------------------------------------------


def _json(value: Any) -> str:
    import msgspec

    return msgspec.json.encode(value, order="sorted").decode()


def _note_failure(context: RunContext, exc: BaseException) -> None:
    if not isinstance(exc, StepFailed | KromaError):
        log.error("run %s: step failed: %r", context.state.run_id, exc)
    context.fail(exc)


def _failure(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, StepFailed):
        return {"status": "failed", "error": exc.message, "error_code": exc.code, "error_kind": exc.kind}
    if isinstance(exc, KromaError) and exc.status < 500:
        return {"status": "failed", "error": exc.message, "error_code": exc.code, "error_kind": exc.kind}
    return {"status": "failed", "error": "Internal server error", "error_code": "internal_error", "error_kind": "infra"}


def _all_decided(state: RunState) -> bool:
    return all(j.outcome is not None for j in state.jobs.values())


def _described(data: dict[str, Any]) -> dict[str, Any]:
    return {k: data[k] for k in ("mime_type", "width", "height", "sha256") if k in data}


def _asset(
    asset_id: str,
    state: RunState,
    job: JobState,
    candidate_id: str | None,
    kind: str,
    shown: str,
    described: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> AssetRecord:
    return AssetRecord(
        id=asset_id,
        project_id=state.project_id,
        kind=kind,
        asset_kind=kind,
        rel_path=shown,
        storage_uri=shown,
        storage_backend="local",
        mime_type=described.get("mime_type"),
        width=described.get("width"),
        height=described.get("height"),
        sha256=described.get("sha256"),
        run_id=state.run_id,
        job_id=job.job_id,
        candidate_id=candidate_id,
        metadata_json={"path_exists": True, **(extra or {})},
    )


def _moved_asset(row: dict[str, Any], shown: str) -> AssetRecord:
    """An asset row (read model) as a record at a new path, everything else kept."""
    import msgspec

    values = {name: row.get(name) for name in AssetRecord.__struct_fields__ if name in row}
    for name in ("metadata_json", "meta_json"):
        text = values.get(name)
        if isinstance(text, str):
            values[name] = msgspec.json.decode(text)
    values.update(rel_path=shown, storage_uri=shown)
    return msgspec.convert({k: v for k, v in values.items() if v is not None}, AssetRecord)


def _bad_target(path: Path, project_root: Path) -> Path:
    folder = project_root / files.ARCHIVE_BAD
    name = f"{files.sanitize_name(path.stem) or 'image'}_bad_{files.stamp()}{path.suffix}"
    return folder / name


def _finish_archive(rejected: dict[str, Any]) -> None:
    """Move a rejected candidate's file to its recorded archive path (idempotent: on resume the
    move may already be done)."""
    source, target = Path(rejected["from_abs"]), Path(rejected["bad_archive_abs"])
    if source.exists() and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
