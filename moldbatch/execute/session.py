"""One render's bookkeeping, shared by every way of running its stages (lanes.py in this
process, ray_driver.py on a Ray cluster): what is cached, each stage's outcome in the state
database and the failure log, the progress bars, the artifact store's writes, and the delivery
at the end.

A way of running stages is a function `(session, todo) -> "done" | "failed"` that calls
`begin` / `end` around each stage it runs elsewhere, or `run_here` for one it runs in this
process. Evaluation is pulled from the outputs: a stage whose artifact is present and intact is
not run, and nothing upstream of it is looked at. Every method may be called from any thread:
the session serialises its books under one lock.
"""

from __future__ import annotations

import errno
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from moldbatch.errors import (
    Interrupted,
    MoldbatchError,
    OutputTaken,
    StageFailed,
    display_path,
    one_line,
    printable,
)
from moldbatch.execute.context import StageContext
from moldbatch.execute.deliver import check_outputs_are_ours, deliver
from moldbatch.execute.progress import StageBars, StageLines, plain_log_wanted
from moldbatch.execute.state import StateDB
from moldbatch.execute.store import Artifact, ArtifactStore, ArtifactWriter, resolve
from moldbatch.fsio import atomic_write
from moldbatch.plan.types import RUNTIME_KINDS, TERMINAL_KINDS, Plan, Stage


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
    runtime_seconds: float = 0.0  # time spent inside the runtime (clip/refine/upscale stages)
    cpu_seconds: float = 0.0  # time spent in the other stages (stitch, export, join)
    report: Path | None = None  # <spec>.report.html, once written

    @property
    def ok(self) -> bool:
        # "skipped" alone is fine: an intermediate no output needed this time
        return not self.delivery_errors and not any(
            s.status in ("failed", "pending") for s in self.stages
        )

    @property
    def failed(self) -> list[StageOutcome]:
        return [s for s in self.stages if s.status == "failed"]


class WorkdirGone(FileNotFoundError):
    """The work folder was deleted during the render (it may have been made again since)."""


RunStages = Callable[["RenderSession", list[Stage]], str]
# a disk that is full, over quota or read-only fails every stage alike: end the render
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class RenderSession:
    def __init__(
        self,
        plan: Plan,
        workdir: Path,
        keep_going: bool = False,
        device: str | None = None,
        progress: bool = True,
        runtimes: dict | None = None,
        compile: bool = False,
        log_lines: bool = False,
        estimates: dict[str, float] | None = None,
        memory: str = "resident",
    ):
        """`progress`: bars in a terminal, else one plain line per stage (a CI log);
        `log_lines` (`--json`): the plain lines on stderr, bars or not; `estimates`: seconds
        per stage id, for the time left."""
        self.estimates = estimates
        self.plan, self.workdir, self.keep_going = plan, workdir, keep_going
        self.store = ArtifactStore(workdir)
        self.console = Console(stderr=True, highlight=False)
        self.show = progress
        self.lines = log_lines or (progress and plain_log_wanted(self.console))
        self.ctx = StageContext(
            device=device,
            inputs={},
            runtimes=runtimes if runtimes is not None else {},
            compile=compile,
            memory=memory,
        )
        self.found: dict[str, Artifact] = {}
        self.outcomes: dict[str, StageOutcome] = {}
        self.summary = Summary(plan.file, workdir)
        self.bars: StageBars | StageLines | None = None
        self._db: StateDB | None = None
        self._run_id: int | None = None
        self._books = threading.RLock()  # the state database, outcomes, bars, `found`

    # --- what a way of running stages calls -------------------------------------------
    def begin(self, stage: Stage) -> Callable[[int, int], None] | None:
        """A stage starts; returns the callback for its denoising steps, if it has any."""
        with self._books:
            self._db.set_stage(self._run_id, stage.id, "running")
            return self.bars.start(stage)

    def end(self, stage: Stage, seconds: float, error: BaseException | None = None) -> bool:
        """Record how a stage ended (outcome, state database, failure log, bars); True when it
        rendered."""
        with self._books:
            return self._end(stage, seconds, error)

    def _end(self, stage: Stage, seconds: float, error: BaseException | None) -> bool:
        outcome = self.outcomes[stage.id]
        outcome.seconds = seconds
        if stage.kind in RUNTIME_KINDS:
            self.summary.runtime_seconds += seconds
        else:
            self.summary.cpu_seconds += seconds
        if error is not None:
            outcome.status, outcome.error = "failed", one_line(error)
            self._log_failure(stage, error)
            self._db.set_stage(
                self._run_id, stage.id, "failed", seconds=seconds, error=outcome.error
            )
            if not self.lines:  # a plain line says it already; whole: never wrapped in a path
                self.console.print(
                    f"[red]✗[/] {stage.id}: {escape(printable(outcome.error))}", soft_wrap=True
                )
            self.bars.failed(stage, seconds, outcome.error)
            return False
        outcome.status = "rendered"
        self._db.set_stage(self._run_id, stage.id, "rendered", seconds=seconds)
        self.bars.done(stage, seconds)
        return True

    def skip(self, stage: Stage) -> None:
        """A stage that cannot run: something it needs failed."""
        with self._books:
            self.outcomes[stage.id].status = "skipped"
            self._db.set_stage(self._run_id, stage.id, "skipped")
            self.bars.skipped(stage)

    def pending(self, stage: Stage) -> None:
        """A stage that was stopped before it ended: neither done nor failed."""
        with self._books:
            self.outcomes[stage.id].status = "pending"
            self._db.set_stage(self._run_id, stage.id, "pending")

    def ready(self, stage: Stage) -> bool:
        """Whether everything `stage` needs is committed."""
        with self._books:
            return all(n in self.found for n in stage.needs)

    def run_here(self, stage: Stage, behind=None) -> bool:
        """Run one stage's handler in this process, its inputs all committed, or for a model
        stage held in memory by `behind` (a lanes.WriteBehind); True when it rendered. The model's stages share the
        runtimes' context (one at a time); the others get a context of their own, so that they
        can run beside them. With `behind`, a model stage's artifact is committed there (its
        outcome is recorded when it is), and this returns as soon as the handler has."""
        from moldbatch.execute.handlers import HANDLERS  # numpy and the runtime: only to run

        model = stage.kind in RUNTIME_KINDS
        if model:
            ctx = self.ctx
        else:
            behind = None
            ctx = StageContext(
                device=self.ctx.device,
                inputs={},
                runtimes=self.ctx.runtimes,
                compile=self.ctx.compile,
            )
        ctx.on_step = self.begin(stage)
        with self._books:
            ctx.inputs = {n: (behind and behind.view(n)) or self.found[n] for n in stage.needs}
        out = self.store.writer(stage.key, stage.id, durable=stage.kind in TERMINAL_KINDS)
        t = time.perf_counter()
        try:
            HANDLERS[stage.kind](stage, ctx, out)
            art = out.commit() if behind is None else None
        except (Exception, MoldbatchError) as e:  # noqa: BLE001 - every failure is recorded
            self.raise_disk_failure(e, out)
            return self.end(stage, time.perf_counter() - t, e)
        finally:
            ctx.on_step = None
            ctx.inputs = {}  # what it read is let go
        if behind is not None:
            behind.submit(stage, out, time.perf_counter() - t)
            return True
        with self._books:
            self.found[stage.id] = art
        return self.end(stage, time.perf_counter() - t)

    def commit_behind(self, stage: Stage, out: ArtifactWriter, seconds: float) -> bool:
        """Commit a model stage's artifact that `run_here` handed to the write-behind thread
        (lanes.py), and record how the stage ended: `seconds` are the handler's; the commit's
        count as the CPU lane's. True when it rendered."""
        t = time.perf_counter()
        try:
            art = out.commit()
        except (Exception, MoldbatchError) as e:  # noqa: BLE001 - every failure is recorded
            self.raise_disk_failure(e, out)
            return self.end(stage, seconds, e)
        with self._books:
            self.found[stage.id] = art
            self.summary.cpu_seconds += time.perf_counter() - t
        return self.end(stage, seconds)

    def raise_disk_failure(self, e: BaseException, out: ArtifactWriter) -> None:
        """A stage that failed because the work folder did (full, read-only, deleted) is not
        the stage's fault: the render ends, with one line (executor.py), as an OSError. `out`,
        the stage's writer, is discarded; its temporary folder gone from under it says the
        work folder was deleted even when another thread has made it again since."""
        gone = not out.dir.is_dir() or not self.workdir.is_dir()
        out.discard()
        if gone:
            raise WorkdirGone(errno.ENOENT, "it is gone") from e
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            raise e

    def commit(self, stage: Stage, files: dict[str, bytes], meta: dict) -> None:
        """Store a stage's files rendered elsewhere, with the same writer, key and manifest as
        one rendered here."""
        out = self.store.writer(stage.key, stage.id, durable=stage.kind in TERMINAL_KINDS)
        try:
            for name, data in files.items():
                out.path(name).write_bytes(data)
            out.meta.update(meta)
            art = out.commit()
        except BaseException:
            out.discard()
            raise
        with self._books:
            self.found[stage.id] = art

    # --- the render -------------------------------------------------------------------
    def run(self, run_stages: RunStages) -> Summary:
        t0 = time.perf_counter()
        self.store.clean_tmp()
        self._write_inline()
        db = self._db = StateDB(self.workdir, warn=self._warn)
        spec = str(self.plan.path.resolve())
        try:
            check_outputs_are_ours(self.plan, db, spec)
        except OutputTaken:
            db.close()
            raise
        run_id = self._run_id = db.start_run(spec, self.plan.stages)
        todo, self.found = resolve(self.plan, self.store)
        todo_ids = {s.id for s in todo}
        self.outcomes = {s.id: StageOutcome(s.id, s.kind, "pending") for s in self.plan.stages}
        for sid in self.found:
            self.outcomes[sid].status = "cached"
            db.set_stage(run_id, sid, "cached", seconds=0.0)
        for s in self.plan.stages:  # upstream of a cached output: not needed this time
            if self.outcomes[s.id].status == "pending" and s.id not in todo_ids:
                cached = self.store.get(s.key, verify=False)
                self.outcomes[s.id].status = "cached" if cached else "skipped"
                db.set_stage(run_id, s.id, self.outcomes[s.id].status, seconds=0.0)
        summary = self.summary
        if self.lines:
            bars = StageLines(todo, self.estimates)
        else:
            bars = StageBars(self.console, todo, enabled=self.show, estimates=self.estimates)
        try:
            with bars as self.bars:
                for s in self.plan.stages:
                    if self.outcomes[s.id].status == "cached":
                        bars.cached(s)
                status = run_stages(self, todo)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (a cancelled CI job): a clean stop
            db.interrupt_run(run_id)
            db.close()
            summary.stages = [self.outcomes[s.id] for s in self.plan.stages]
            summary.seconds = time.perf_counter() - t0
            done = sum(o.status in ("rendered", "cached") for o in summary.stages)
            raise Interrupted(
                f"interrupted; run the same command again to resume ({done} of "
                f"{len(summary.stages)} stages are done and kept)",
                summary,
            ) from None
        summary.outputs = deliver(
            self.plan, self.found, db, spec, self.console, summary.delivery_errors
        )
        summary.stages = [self.outcomes[s.id] for s in self.plan.stages]
        summary.seconds = time.perf_counter() - t0
        if summary.delivery_errors:
            status = "failed"
        if self.show or self.lines:
            self._report()
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

    def _write_inline(self) -> None:
        """The files the spec carries inline (a mold script's images), written where the plan
        names them, before any stage reads them."""
        for path, data in self.plan.inline.items():
            target = Path(path)
            if target.is_symlink() or not target.is_file() or target.read_bytes() != data:
                atomic_write(target, data)

    def _report(self) -> None:
        summary = self.summary
        shots = {s.id: s for s in self.plan.shots}
        written = set(summary.outputs)  # only what delivery wrote (or found already there)
        for stage in self.plan.stages:
            if stage.kind not in TERMINAL_KINDS or stage.output not in written:
                continue
            if stage.kind == "export":
                s = shots[stage.shot]
                what = f"{s.frames} frames, {s.width}x{s.height}, {s.fps:g} fps"
            else:
                what = f"{sum(s.frames for s in self.plan.shots)} frames, film"
            shown = escape(display_path(Path(stage.output)))
            self.console.print(f"[green]✓[/] Saved: {shown} ({what})", soft_wrap=True)
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

    def _warn(self, line: str) -> None:
        self.console.print(f"[yellow]![/] warning: {escape(printable(line))}", soft_wrap=True)

    def _log_failure(self, stage: Stage, e: BaseException) -> None:  # under the lock
        logs = self.workdir / "logs"
        try:
            if logs.is_symlink():  # a link from a checkout would be written through
                logs.unlink()
            logs.mkdir(exist_ok=True)
            with (logs / "failures.log").open("a") as f:
                f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {stage.id} ({stage.key})\n")
                f.write("".join(traceback.format_exception(e)))
        except OSError:  # the log is a help, never a second failure; the stage's is recorded
            pass
