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
- Several engines (`kroma serve`'s, `kroma worker`s) may follow one log: each claims a job before
  working it (`kroma.engine.claims`: an append with the job stream's expected version, with a
  lease it renews while working), so every job is done by exactly one engine and a job whose
  engine died is taken over after its lease, from its last recorded step. The run's own events
  (`run.started`, its end) carry idempotency keys, so they are appended once whoever gets there
  first; the end waits until no other engine still holds a claim on an undecided job.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx

from kroma.clock import iso_micro
from kroma.domain import runs as ev
from kroma.domain.aggregate import ProjectState, project_stream
from kroma.domain.assets import AssetRecord, asset_recorded
from kroma.domain.errors import KromaError
from kroma.engine import claims as cl
from kroma.engine import files, passes, pricing
from kroma.engine.claims import HeldClaim, JobClaims, JobLost
from kroma.engine.paths import display_path
from kroma.engine.providers.base import GenerationRequest, Provider, ProviderError
from kroma.engine.providers.select import build_provider, environment, openai_base_url, openai_key
from kroma.engine.records import candidate_record, job_record
from kroma.engine.state import CandidateState, JobState, RunState, fold_run
from kroma.engine.trigger import summary_stdout
from kroma.events.envelope import Event, Metadata, NewEvent
from kroma.events.store import AppendResult, ConcurrencyConflict
from kroma.imaging import provenance, qa
from kroma.processes import this_host
from kroma.storage import post_run

log = logging.getLogger("kroma.engine")
FOLLOWED = (ev.RUN_REQUESTED, ev.RUN_CANCEL_REQUESTED, cl.JOB_RELEASED, *ev.RUN_ENDS)
FENCE_ATTEMPTS = 8  # a fenced append refused only because our own renewal moved the stream
WATCH_SECONDS = 2.0  # the longest wait between looks at a run other engines are working
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
        self._task: asyncio.Task[None] | None = None
        # Who takes this engine's claims. Two engines must not share a worker id only by being
        # named alike: claims are told apart by their claim id, the name is for people.
        lease = max(0.5, float(settings.run_lease_seconds))
        name = settings.run_worker_id.strip() or f"{socket.gethostname()}:{os.getpid()}"
        self.holder = cl.Holder(name, this_host(), os.getpid(), lease)
        self.lease_margin = lease / 4  # a step starts only with this much of the lease left
        self._tg: anyio.abc.TaskGroup | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def worker_id(self) -> str:
        return self.holder.worker_id

    def start(self) -> None:
        log.info("run engine %s started (lease %gs)", self.worker_id, self.holder.lease_seconds)
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
        elif event.type in ev.RUN_ENDS or event.data.get("failure"):
            # another engine ended the run, or failed a job of it: stop at the next boundary
            context = self._active.get(run_id)
            if context is not None:
                context.stop = True

    def _launch(self, run_id: str) -> None:
        if run_id in self._active or self._tg is None:
            return
        self._active[run_id] = None
        self._tg.start_soon(self._guarded, run_id, name=f"run {run_id}")

    async def _guarded(self, run_id: str) -> None:
        try:
            if await self._work(run_id):  # only the engine that ended the run syncs it
                await post_run.sync_after_run(self.services, run_id)  # §4.9: never changes the outcome
        except Exception:
            log.exception("run %s: the engine failed", run_id)
            await self._end_after_crash(run_id)
        finally:
            self._active.pop(run_id, None)

    async def wait_for_end(self, run_id: str, timeout: float | None = None) -> Event | None:
        """The run's final event, once it is in the log (None when the timeout ends first),
        whichever engine appends it."""
        with anyio.move_on_after(timeout):
            while True:
                head = await self.store.head()
                events = await self.store.read_stream(ev.run_stream(run_id))
                for event in reversed(events):
                    if event.type in ev.RUN_ENDS:
                        return event
                await self.store.wait_for_append(head, 1.0)
        return None

    # -- one run -----------------------------------------------------------------------------

    async def _load(self, run_id: str) -> RunState | None:
        return fold_run(await self.store.read_stream(ev.run_stream(run_id)))

    async def _claims(self, state: RunState) -> dict[str, JobClaims]:
        """The claim streams of the run's undecided jobs, folded."""
        found: dict[str, JobClaims] = {}
        for job in state.ordered_jobs():
            if job.outcome is None:
                events = await self.store.read_stream(cl.job_stream(job.job_id))
                found[job.job_id] = cl.fold_claims(job.job_id, events)
        return found

    def _meta(self, state: RunState, causation_id: str | None) -> Metadata:
        return Metadata(correlation_id=state.run_id, causation_id=causation_id)

    async def _append(
        self, events: Sequence[NewEvent], key: str | None, held: HeldClaim | None = None
    ) -> AppendResult:
        """Append a step once (its idempotency key); with `held`, only while this engine holds the
        job: the claim stream's version is the fence, so a step of a job taken over is refused."""
        if held is None:
            return await self.store.append(events, idempotency_key=key)
        for _attempt in range(FENCE_ATTEMPTS):
            try:
                return await self.store.append(events, {held.stream: held.version}, idempotency_key=key)
            except ConcurrencyConflict as exc:
                if exc.stream_id != held.stream:
                    raise
                await self._recheck(held)  # our own renewal moved the stream, or JobLost
        raise JobLost(held.base["job_id"])

    async def _recheck(self, held: HeldClaim) -> None:
        held.adopt(cl.fold_claims(held.base["job_id"], await self.store.read_stream(held.stream)))

    async def _work(self, run_id: str) -> bool:
        """Work the run until it ends. True when this engine recorded the end (or found the run
        ended already: a post-run sync cut short by a stop may be due)."""
        state = await self._load(run_id)
        if state is None or state.requested["mode"] != "run":
            return False
        if state.ended is not None:
            return True
        project, _version = await self.services.commands.load_project(state.project_id)
        try:
            provider = await build_provider(
                state.requested["provider"], project, self.services.vault, self.app_root, os.environ, self.cpu
            )
        except ProviderError as exc:
            now = self.clock.now()
            if any(self._holding(c, now) for c in (await self._claims(state)).values()):
                # another engine works the run: one that cannot build its provider here stays out
                log.warning("run %s: provider unavailable to engine %s (%s)", run_id, self.worker_id, exc.message)
                return False
            if state.cancel_requested is not None and state.started is None:
                return await self._end(state, ev.RUN_CANCELED, {"status": "canceled"}, state.cancel_event_id)
            return await self._end(state, ev.RUN_FAILED, _failure(StepFailed(exc.message)), state.requested_event_id)
        context = RunContext(state, project, provider)
        self._active[run_id] = context
        try:
            return await self._execute(context)
        finally:
            await provider.aclose()
            await context.aclose()

    async def _execute(self, context: RunContext) -> bool:
        """Rounds of claiming and working the jobs no other engine holds, until the run can end:
        every job decided, or a failure or cancel with no other engine still holding a job."""
        run_id = context.state.run_id
        while True:
            state = context.state
            if state.ended is not None:
                return False
            claims = await self._claims(state)
            now = self.clock.now()
            undecided = [j for j in state.ordered_jobs() if j.outcome is None]
            held = [c for c in (self._holding(claims[j.job_id], now) for j in undecided) if c is not None]
            failure = self._run_failure(context, claims)
            if failure is not None or (state.cancel_requested is not None and undecided):
                context.stop = True
            if context.stop or len(held) == len(undecided):
                if held:  # others finish (and record) their steps in flight first, or their lease ends
                    await self._watch(held)
                elif failure is not None:
                    return await self._end(state, ev.RUN_FAILED, failure[0], failure[1])
                elif state.cancel_requested is not None and undecided:
                    return await self._end(state, ev.RUN_CANCELED, {"status": "canceled"}, state.cancel_event_id)
                elif not undecided:
                    return await self._complete(state, state.last_outcome_event_id)
                else:
                    await anyio.sleep(0.1)  # stopped by an end another engine is appending
            else:
                async with self.runs_in_flight:
                    if state.started is None:
                        await self._start(context)
                    else:
                        await self._round(context)
            context.state = await self._load(run_id) or state

    def _holding(self, claims: JobClaims, now: Any) -> cl.Claim | None:
        """The claim of another engine (or of an earlier round of this one) that holds the job."""
        holding, _why = cl.open_claim(claims, now, self.holder.host, self.holder.pid)
        return holding

    def _run_failure(
        self, context: RunContext, claims: dict[str, JobClaims]
    ) -> tuple[dict[str, Any], str | None] | None:
        """(the run's failure record, its cause): this engine's first failure, else the first one
        another engine recorded when it released a job."""
        if context.error is not None:
            return _failure(context.error), context.last_event_id
        recorded = [c for c in claims.values() if c.failure is not None]
        if not recorded:
            return None
        first = min(recorded, key=lambda c: c.failure_position)
        assert first.failure is not None
        return first.failure, first.failure_event_id

    async def _watch(self, held: list[cl.Claim]) -> None:
        """Wait until the log moves or the first of these leases ends (at most WATCH_SECONDS)."""
        now = iso_micro(self.clock.now())
        soonest = min(_seconds_between(now, c.expires_at) for c in held)
        head = await self.store.head()
        await self.store.wait_for_append(head, min(max(soonest, 0.05), WATCH_SECONDS))
        await anyio.sleep(0.25)  # a busy run is looked at a few times a second, not after every step

    async def _start(self, context: RunContext) -> None:
        """`run.started`, appended once and only on the stream its decision saw (a cancel that came
        first ends the run as canceled instead)."""
        state = context.state
        if state.cancel_requested is not None:
            return
        started = {
            "run_id": state.run_id,
            "project_id": state.project_id,
            "status": "running",
            "provider": context.provider.code,
        }
        event = NewEvent(ev.run_stream(state.run_id), ev.RUN_STARTED, started, self._meta(state, state.requested_event_id))
        with contextlib.suppress(ConcurrencyConflict):  # the stream moved: decided again next round
            await self.store.append(
                [event], {ev.run_stream(state.run_id): state.version}, idempotency_key=f"run:{state.run_id}/started"
            )

    async def _round(self, context: RunContext) -> None:
        jobs = anyio.Semaphore(self.jobs_in_flight)
        async with anyio.create_task_group() as tg:
            for job in context.state.ordered_jobs():
                if job.outcome is None:
                    tg.start_soon(self._job, context, job, jobs)

    async def _job(self, context: RunContext, job: JobState, jobs: anyio.Semaphore) -> None:
        async with jobs:
            if context.stop or job.outcome is not None:
                return
            taken = await self._claim(context, job)
            if taken is None:
                return  # another engine holds it
            held, job = taken
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._keep_lease, context, held)
                    try:
                        await self._work_job(context, job, held)
                    finally:
                        tg.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    await self._release(context, held)

    async def _work_job(self, context: RunContext, job: JobState, held: HeldClaim) -> None:
        if job.outcome is not None:
            return
        total = context.state.requested["candidates"]
        async with anyio.create_task_group() as tg:
            for index in range(1, total + 1):
                tg.start_soon(self._candidate, context, job, index, held)
        if context.stop or held.lost:
            return
        try:
            await self._decide_job(context, job, held)
        except JobLost:
            held.lost = True
        except Exception as exc:  # a step failure stops the run at the next boundary
            _note_failure(context, exc)

    async def _candidate(self, context: RunContext, job: JobState, index: int, held: HeldClaim) -> None:
        candidate = job.candidate(index)

        def stopped() -> bool:
            return context.stop or held.lost

        try:
            if candidate.generated is None and not stopped():
                await self._generate(context, job, candidate, held)
            done = {step["pass"] for step in candidate.passes}
            for name in planned_passes(job.planned["planned_postprocess"]):
                if name in done or candidate.generated is None or candidate.checked is not None or stopped():
                    continue
                await self._pass(context, job, candidate, name, held)
            if candidate.generated is not None and candidate.checked is None and not stopped():
                await self._check(context, job, candidate, held)
            if candidate.rejected is not None and not held.lost:
                await anyio.to_thread.run_sync(_finish_archive, candidate.rejected)
        except JobLost:
            held.lost = True
        except Exception as exc:
            _note_failure(context, exc)

    # -- claims --------------------------------------------------------------------------------

    async def _claim(self, context: RunContext, job: JobState) -> tuple[HeldClaim, JobState] | None:
        """Claim the job (None when another engine holds it or wins the race), and its latest
        state: a previous holder's steps are all in the log once its claim is replaced."""
        state = context.state
        stream = cl.job_stream(job.job_id)
        claims = cl.fold_claims(job.job_id, await self.store.read_stream(stream))
        base = {"run_id": state.run_id, "project_id": state.project_id, "job_id": job.job_id}
        claim_id = self.clock.new_id()
        meta = self._meta(state, state.started_event_id)
        event = cl.decide_claim(
            claims, {**base, "job_key": job.planned["job_key"]}, self.holder, claim_id, self.clock.now(), meta
        )
        if event is None:
            return None
        try:
            appended = await self.store.append([event], {stream: claims.version})
        except ConcurrencyConflict:
            return None
        taken = event.data["taken_over"]
        if taken is not None:
            log.info(
                "run %s: job %s taken over from %s (%s)",
                state.run_id, job.planned["job_key"], taken["worker_id"], taken["reason"],
            )
        held = HeldClaim(
            base,
            claim_id,
            self.holder.worker_id,
            appended.stream_versions[stream],
            event.data["lease_expires_at"],
            appended.event_ids[0],
        )
        if claims.current is None:
            return held, job  # the first claim: no engine has recorded a step of the job yet
        latest = await self._load(state.run_id)
        if latest is not None and job.job_id in latest.jobs:
            job = latest.jobs[job.job_id]
            context.state.jobs[job.job_id] = job
        return held, job

    async def _keep_lease(self, context: RunContext, held: HeldClaim) -> None:
        """Renew the lease every third of it while the job is worked."""
        while not held.lost:
            await anyio.sleep(self.holder.lease_seconds / 3)
            try:
                await self._renew(context, held)
            except JobLost:
                if not held.released:  # not our own outcome's release, which ends the claim
                    log.warning("run %s: job %s was taken over by another engine", context.state.run_id, held.base["job_id"])
                return
            except Exception:
                log.exception("run %s: renewing the claim on job %s failed", context.state.run_id, held.base["job_id"])

    async def _renew(self, context: RunContext, held: HeldClaim) -> None:
        expires = cl.lease_end(self.clock.now(), self.holder.lease_seconds)
        meta = self._meta(context.state, held.event_id)
        event = held.event(cl.JOB_LEASE_RENEWED, {"lease_expires_at": expires}, meta)
        appended = await self._append([event], None, held)
        held.version, held.expires_at = appended.stream_versions[held.stream], expires

    async def _ensure_held(self, context: RunContext, held: HeldClaim) -> None:
        """Before a paid call or a file write: the claim is ours with time left on its lease
        (renewed here if the renewals fell behind); JobLost otherwise."""
        if held.usable(self.clock.now(), self.lease_margin):
            return
        await self._renew(context, held)
        if not held.usable(self.clock.now(), self.lease_margin):
            raise JobLost(held.base["job_id"])

    async def _release(self, context: RunContext, held: HeldClaim) -> None:
        """Let the job go (not decided: stopped, or failed with the run's failure for the others)."""
        if held.lost or held.released:
            return
        failure = _failure(context.error) if context.error is not None else None
        data = {"reason": "failed" if failure else "stopped", "failure": failure}
        try:
            await self._append([held.event(cl.JOB_RELEASED, data, self._meta(context.state, held.event_id))], None, held)
            held.released = True
        except JobLost:
            pass
        except Exception:
            log.exception("run %s: releasing job %s failed (its lease will end)", context.state.run_id, held.base["job_id"])

    # -- steps -------------------------------------------------------------------------------

    async def _pass(
        self, context: RunContext, job: JobState, candidate: CandidateState, name: str, held: HeldClaim
    ) -> None:
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
        await self._ensure_held(context, held)
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

        await self._ensure_held(context, held)  # the pass may have been long: still ours to write?
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
        appended = await self._append(events, key, held)
        candidate.last_event_id = appended.event_ids[0]
        if appended.replayed:
            await self._adopt(context, job, candidate)

    async def _generate(self, context: RunContext, job: JobState, candidate: CandidateState, held: HeldClaim) -> None:
        state, planned = context.state, job.planned
        total = state.requested["candidates"]
        seed = candidate_seed(state.run_id, planned["job_key"], candidate.index)
        request = GenerationRequest(prompt=planned["prompt"], input_images=tuple(planned["input_paths"]), seed=seed)
        async with self.provider_calls:
            if context.stop or held.lost:  # a cancel or failure landed while this call waited for its turn
                return
            await self._ensure_held(context, held)  # never pay for a job another engine took over
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

        await self._ensure_held(context, held)
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
        appended = await self._append(events, key, held)
        candidate.last_event_id = appended.event_ids[0]
        if appended.replayed:  # another engine recorded this step first: take its record
            await self._adopt(context, job, candidate)

    async def _check(self, context: RunContext, job: JobState, candidate: CandidateState, held: HeldClaim) -> None:
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
        appended = await self._append(events, key, held)
        candidate.last_event_id = appended.event_ids[0]
        if appended.replayed:
            await self._adopt(context, job, candidate)
            return
        if candidate.rejected is not None:
            await anyio.to_thread.run_sync(_finish_archive, candidate.rejected)

    async def _decide_job(self, context: RunContext, job: JobState, held: HeldClaim) -> None:
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
        # the claim ends with the outcome, in its batch
        events.append(held.event(cl.JOB_RELEASED, {"reason": "decided", "failure": None}, meta))
        appended = await self._append(events, f"run:{state.run_id}/job:{job.planned['job_key']}/outcome", held)
        held.released = True
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

    async def _complete(self, state: RunState, causation_id: str | None) -> bool:
        jobs = state.ordered_jobs()
        failed = [j for j in jobs if j.outcome_type == ev.JOB_FAILED]
        if any(j.outcome is None for j in jobs):  # stopped before every job was decided
            return await self._end(
                state, ev.RUN_FAILED, _failure(StepFailed("Run stopped before every job was decided")), causation_id
            )
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
        return await self._end(
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

    async def _end(self, state: RunState, kind: str, data: dict[str, Any], causation_id: str | None) -> bool:
        """Append the run's end once, whichever engine gets there first; True when this one did."""
        payload = {"run_id": state.run_id, "project_id": state.project_id, **data}
        event = NewEvent(ev.run_stream(state.run_id), kind, payload, self._meta(state, causation_id))
        return not (await self._append([event], f"run:{state.run_id}/end")).replayed

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


def _seconds_between(earlier: str, later: str) -> float:
    """Seconds from one envelope timestamp to another (negative when `later` is earlier)."""
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    return (datetime.strptime(later, fmt) - datetime.strptime(earlier, fmt)).total_seconds()


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
