"""The resumable executor: runs what a plan needs and is not already in the artifact store.

Evaluation is pulled from the outputs: a shot's export (and the film's join) needs its stitch,
which needs its clips; a stage whose artifact is present and intact is not run, and nothing
upstream of it is even looked at. A crash, a kill or an edit therefore costs only the stages
whose keys it touched.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from moldbatch.errors import MoldbatchError, OutputTaken, StageFailed, display_path
from moldbatch.execute.lock import WorkdirLock
from moldbatch.execute.state import StateDB
from moldbatch.execute.store import TERMINAL, Artifact, ArtifactStore, default_workdir, resolve
from moldbatch.fsio import atomic_copy, sha256_file
from moldbatch.plan.model import Plan, Stage

log = logging.getLogger("moldbatch")


@dataclass
class StageOutcome:
    id: str
    kind: str
    status: str  # rendered | cached | failed | skipped | pending
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Summary:
    spec: str
    workdir: Path
    stages: list[StageOutcome] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    delivery_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    runtime_seconds: float = 0.0  # time spent inside the runtime (clip/upscale stages)

    @property
    def ok(self) -> bool:
        # "skipped" alone is fine: an intermediate no output needed this time
        return not self.delivery_errors and not any(
            s.status in ("failed", "pending") for s in self.stages
        )

    @property
    def failed(self) -> list[StageOutcome]:
        return [s for s in self.stages if s.status == "failed"]

    def to_json(self) -> dict:
        return {
            "spec": self.spec,
            "ok": self.ok,
            "workdir": str(self.workdir),
            "seconds": round(self.seconds, 3),
            "rendered": sum(s.status == "rendered" for s in self.stages),
            "cached": sum(s.status == "cached" for s in self.stages),
            "stages": [
                {
                    "id": s.id,
                    "kind": s.kind,
                    "status": s.status,
                    "seconds": round(s.seconds, 3),
                    **({"error": s.error} if s.error else {}),
                }
                for s in self.stages
            ],
            "outputs": self.outputs,
        }


def render_plan(
    plan: Plan,
    *,
    workdir: Path | None = None,
    keep_going: bool = False,
    device: str | None = None,
    progress: bool = True,
    runtimes: dict | None = None,
    executor: str = "local",
    ray_options: dict | None = None,
) -> Summary:
    """Render every output of a valid plan. Raises StageFailed (after recording it) when a stage
    fails and `keep_going` is off; with it, returns a Summary whose `ok` is False.

    `executor="ray"` spreads the shots over a Ray cluster's workers (see ray_executor.py);
    `ray_options` are render_plan_ray's: address, workers, retries."""
    if executor == "ray":
        from moldbatch.execute.ray_executor import render_plan_ray

        return render_plan_ray(
            plan,
            workdir=workdir,
            keep_going=keep_going,
            device=device,
            progress=progress,
            **(ray_options or {}),
        )
    if executor != "local":
        raise ValueError(f"unknown executor {executor!r}: local or ray")
    workdir = (workdir or default_workdir(plan.path)).resolve()
    try:
        lock = WorkdirLock(workdir).__enter__()
    except OSError as e:
        raise MoldbatchError(
            f"cannot use the work folder {display_path(workdir)}: {e.strerror or e}; "
            "pass --workdir with a folder you can write"
        ) from None
    try:
        return Executor(plan, workdir, keep_going, device, progress, runtimes).run()
    finally:
        lock.__exit__(None, None, None)


class Executor:
    def __init__(
        self,
        plan: Plan,
        workdir: Path,
        keep_going: bool,
        device: str | None,
        progress: bool,
        runtimes: dict | None,
    ):
        self.plan, self.workdir, self.keep_going = plan, workdir, keep_going
        self.store = ArtifactStore(workdir)
        self.by_id = {s.id: s for s in plan.stages}
        self.console = Console(stderr=True, highlight=False)
        self.show = progress
        from moldbatch.execute.stages import StageContext

        self.ctx = StageContext(device=device, inputs={}, runtimes=runtimes or {})

    # --- what to run ------------------------------------------------------------------
    # --- the run ----------------------------------------------------------------------
    def run(self) -> Summary:
        t0 = time.perf_counter()
        self.store.clean_tmp()
        db = StateDB(self.workdir)
        spec = str(self.plan.path.resolve())
        try:
            self._check_outputs_are_ours(db, spec)
        except OutputTaken:
            db.close()
            raise
        run_id = db.start_run(spec, self.plan.stages)
        todo, found = resolve(self.plan, self.store)
        todo_ids = {s.id for s in todo}
        outcomes = {s.id: StageOutcome(s.id, s.kind, "pending") for s in self.plan.stages}
        for sid in found:
            outcomes[sid].status = "cached"
            db.set_stage(run_id, sid, "cached", seconds=0.0)
        for s in self.plan.stages:  # upstream of a cached output: not needed this time
            if outcomes[s.id].status == "pending" and s.id not in todo_ids:
                outcomes[s.id].status = (
                    "cached" if self.store.get(s.key, verify=False) else "skipped"
                )
                db.set_stage(run_id, s.id, outcomes[s.id].status, seconds=0.0)
        summary = Summary(self.plan.file, self.workdir)
        try:
            with self._progress(todo) as bar:
                status = self._run_todo(todo, found, outcomes, db, run_id, bar, summary)
        except KeyboardInterrupt:
            db.interrupt_run(run_id)
            db.close()
            raise
        summary.outputs = self._deliver(found, db, summary, spec)
        summary.stages = [outcomes[s.id] for s in self.plan.stages]
        summary.seconds = time.perf_counter() - t0
        if summary.delivery_errors:
            status = "failed"
        if self.show:
            self._report(summary)
        db.finish_run(run_id, status)
        db.close()
        if summary.delivery_errors and not summary.failed:
            raise StageFailed(summary.delivery_errors[0], summary)
        if status == "failed" and not self.keep_going:
            bad = summary.failed[0]
            raise StageFailed(
                f"stage {bad.id} failed: {bad.error}\n"
                f"  {sum(o.status in ('rendered', 'cached') for o in summary.stages)} stages "
                f"are done and kept; fix the cause and run `moldbatch render {self.plan.file}` "
                f"again to resume (details in {self.workdir / 'logs'})",
                summary,
            )
        return summary

    def _run_todo(self, todo: list[Stage], found, outcomes, db, run_id, bar, summary) -> str:
        """Run the stages in plan order, one at a time; "done" or "failed". (The Ray executor
        overrides this to spread shots over workers.)"""
        blocked: set[str] = set()
        status = "done"
        for stage in todo:
            if any(n in blocked for n in stage.needs):
                blocked.add(stage.id)
                outcomes[stage.id].status = "skipped"
                db.set_stage(run_id, stage.id, "skipped")
                continue
            ok = self._run_stage(stage, found, outcomes[stage.id], db, run_id, bar)
            if stage.kind in ("clip", "upscale"):
                summary.runtime_seconds += outcomes[stage.id].seconds
            if not ok:
                blocked.add(stage.id)
                status = "failed"
                if not self.keep_going:
                    break
        return status

    def _run_stage(self, stage: Stage, found, outcome: StageOutcome, db, run_id, bar) -> bool:
        from moldbatch.execute.stages import HANDLERS

        self._begin_stage(stage, db, run_id, bar)
        self.ctx.inputs = {n: found[n] for n in stage.needs}
        out = self.store.writer(stage.key, stage.id)
        t = time.perf_counter()
        try:
            HANDLERS[stage.kind](stage, self.ctx, out)
            found[stage.id] = out.commit()
        except (Exception, MoldbatchError) as e:  # noqa: BLE001 - every failure is recorded
            out.discard()
            return self._end_stage(stage, outcome, db, run_id, bar, time.perf_counter() - t, e)
        return self._end_stage(stage, outcome, db, run_id, bar, time.perf_counter() - t)

    def _begin_stage(self, stage: Stage, db, run_id, bar) -> None:
        db.set_stage(run_id, stage.id, "running")
        bar.start(stage)

    def _end_stage(
        self, stage: Stage, outcome: StageOutcome, db, run_id, bar, seconds: float, error=None
    ) -> bool:
        """Record how a stage ended (in the outcome, the state database, the failure log and
        the bars); True when it rendered."""
        outcome.seconds = seconds
        if error is not None:
            outcome.status, outcome.error = "failed", _one_line(error)
            self._log_failure(stage, error)
            db.set_stage(run_id, stage.id, "failed", seconds=seconds, error=outcome.error)
            self.console.print(f"[red]✗[/] {stage.id}: {outcome.error}")
            bar.done(stage)
            return False
        outcome.status = "rendered"
        db.set_stage(run_id, stage.id, "rendered", seconds=seconds)
        bar.done(stage)
        return True

    def _check_outputs_are_ours(self, db: StateDB, spec: str) -> None:
        """Refuse, before rendering anything, to write over a file that another spec's render
        wrote: two specs in one folder with a shot id (or film output) in common."""
        for stage in self.plan.stages:
            if stage.kind not in TERMINAL:
                continue
            dst = Path(stage.outputs["path"]).resolve()
            owner = db.delivered_for(dst)
            # a spec that no longer exists (renamed, deleted) has given its outputs up
            if owner and owner != spec and dst.is_file() and Path(owner).is_file():
                if stage.shot:
                    fix = "give this shot another id"
                    what = f"shot '{stage.shot}'"
                else:
                    fix = "give this film another `output`"
                    what = "the film"
                raise OutputTaken(
                    f"{display_path(dst)} ({what}) was rendered by {display_path(Path(owner))}, "
                    f"which writes into the same folder; {fix} or render with --out DIR; "
                    "nothing was rendered"
                )

    def _deliver(
        self, found: dict[str, Artifact], db: StateDB, summary: Summary, spec: str
    ) -> list[str]:
        """Copy each finished shot and the film to its output path (only complete ones).

        A file already there that moldbatch did not write is kept, renamed aside: nothing a
        user made is lost."""
        paths = []
        for stage in self.plan.stages:
            art = found.get(stage.id)
            if stage.kind not in TERMINAL or art is None:
                continue
            src = art.file(art.meta["file"])
            want = art.manifest["files"][art.meta["file"]]["sha256"]
            dst = Path(stage.outputs["path"]).resolve()
            try:
                self._deliver_one(src, dst, want, db, spec)
            except OSError as e:
                summary.delivery_errors.append(
                    f"cannot write {display_path(dst)}: {e.strerror or e}; the render is kept "
                    "in the work folder: fix the path and run the same command again"
                )
                continue
            paths.append(str(dst))
        return paths

    def _deliver_one(self, src: Path, dst: Path, want: str, db: StateDB, spec: str) -> None:
        if dst.exists() and not dst.is_file():
            raise IsADirectoryError(21, "a folder is in the way")
        if dst.is_file():
            st, ours = dst.stat(), db.delivered(dst)
            if ours and (ours[1], ours[2]) == (st.st_size, st.st_mtime_ns):
                have = ours[0]  # untouched since we wrote it: no need to read it again
            else:
                have = sha256_file(dst)
            if have == want:
                db.record_delivery(dst, want, spec)
                return
            if not ours or ours[0] != have:
                aside = _free_name(dst)
                os.replace(dst, aside)
                self.console.print(
                    f"[yellow]![/] {display_path(dst)} was not written by moldbatch; "
                    f"kept as {display_path(aside)}"
                )
        atomic_copy(src, dst)
        db.record_delivery(dst, want, spec)

    def _report(self, summary: Summary) -> None:
        shots = {s.id: s for s in self.plan.shots}
        for stage in self.plan.stages:
            if stage.kind not in TERMINAL or stage.id not in {
                o.id for o in summary.stages if o.status in ("rendered", "cached")
            }:
                continue
            path = stage.outputs["path"]
            if stage.kind == "export":
                s = shots[stage.shot]
                what = f"{s.frames} frames, {s.width}x{s.height}, {s.fps:g} fps"
            else:
                what = f"{sum(s.frames for s in self.plan.shots)} frames, film"
            self.console.print(f"[green]✓[/] Saved: {display_path(Path(path))} ({what})")
        rendered = sum(o.status == "rendered" for o in summary.stages)
        cached = sum(o.status == "cached" for o in summary.stages)
        if not summary.ok:
            failed = len(summary.failed) + len(summary.delivery_errors)
            self.console.print(
                f"[red]✗[/] Failed after {summary.seconds:.1f}s: {failed} "
                f"failed, {rendered} stages rendered, {cached} cached"
            )
            return
        self.console.print(
            f"[green]✓[/] Done in {summary.seconds:.1f}s: {rendered} stages "
            f"rendered, {cached} cached"
        )

    def _log_failure(self, stage: Stage, e: BaseException) -> None:
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        with (logs / "failures.log").open("a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {stage.id} ({stage.key})\n")
            f.write("".join(traceback.format_exception(e)))

    def _progress(self, todo: list[Stage]):
        return _Bars(self.console, todo, self.ctx, enabled=self.show)


def _free_name(path: Path) -> Path:
    """`name.orig.mp4`, or `name.orig-2.mp4`, … : the first that does not exist."""
    n = 1
    while True:
        tag = "orig" if n == 1 else f"orig-{n}"
        candidate = path.with_name(f"{path.stem}.{tag}{path.suffix}")
        if not candidate.exists():
            return candidate
        n += 1


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else ""
    return f"{type(e).__name__}: {msg}" if not isinstance(e, MoldbatchError) else msg


class _Bars:
    """Rich progress like mold's: the film's stages, each chained shot's clips, and the
    current clip's denoising steps."""

    def __init__(self, console: Console, todo: list[Stage], ctx, enabled: bool):
        self.enabled = enabled and bool(todo)
        self.ctx = ctx
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=not self.enabled,
        )
        self.film = self.progress.add_task("Film", total=len(todo))
        self.clips_todo: dict[str, int] = {}
        for stage in todo:
            if stage.kind == "clip":
                self.clips_todo[stage.shot] = self.clips_todo.get(stage.shot, 0) + 1
        self.chains: dict[str, object] = {}
        self.steps = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def start(self, stage: Stage) -> None:
        self.ctx.on_step = None
        if stage.kind != "clip":
            return
        if self.clips_todo.get(stage.shot, 0) > 1 and stage.shot not in self.chains:
            self.chains[stage.shot] = self.progress.add_task(
                f" Chain {stage.shot}", total=self.clips_todo[stage.shot]
            )
        self.steps = self.progress.add_task(f"   {stage.id}", total=stage.params["steps"])
        self.ctx.on_step = lambda i, n: self.progress.update(self.steps, completed=i, total=n)

    def done(self, stage: Stage) -> None:
        if self.steps is not None:
            self.progress.update(self.steps, completed=stage.params.get("steps", 0))
            self.steps = None
        if stage.shot in self.chains and stage.kind == "clip":
            self.progress.advance(self.chains[stage.shot])
        self.progress.advance(self.film)
