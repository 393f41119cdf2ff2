"""What a render says while it runs. In a terminal: bars like mold's (the film's stages, each
chained shot's clips, and the denoising steps of each clip that is running), with units and an
estimated time left. Elsewhere (a CI log, a pipe, `--json`): one plain line per stage on
stderr, flushed as it happens, so that a job cancelled halfway still shows what was done.

Both take the same calls from the render session (session.py): `cached` for each stage found
done, `start` and `done` / `failed` around each one that runs. The time left is the cost
model's estimate of the stages still to run (review/cost.py, handed down by operations.render
as seconds per stage id), scaled by how the estimates compared with the clock for the stages
run so far."""

from __future__ import annotations

import sys
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from moldbatch.errors import format_seconds
from moldbatch.plan.types import Stage


class TimeLeft:
    """Estimated seconds left, from the cost model, corrected by the clock as stages end."""

    def __init__(self, estimates: dict[str, float] | None, todo: list[Stage]):
        self.estimates = {s.id: (estimates or {}).get(s.id, 0.0) for s in todo}
        self.left = set(self.estimates)
        self._estimated_done = 0.0
        self._took = 0.0
        self._first_done = False

    def finish(self, stage_id: str, seconds: float) -> None:
        if stage_id in self.left:
            self.left.discard(stage_id)
            if self.estimates[stage_id] <= 0:
                return
            if not self._first_done:  # it loaded the model (minutes on real weights): not a rate
                self._first_done = True
                return
            self._estimated_done += self.estimates[stage_id]
            self._took += seconds

    def seconds(self) -> float | None:
        remaining = sum(self.estimates[i] for i in self.left)
        if remaining <= 0:
            return 0.0 if not self.left else None
        if self._estimated_done > 0:
            remaining *= self._took / self._estimated_done
        return remaining

    def text(self) -> str:
        left = self.seconds()
        if left is None:
            return ""
        return f"~{format_seconds(left)} left" if left > 0 else ""


def plain_log_wanted(console: Console) -> bool:
    """Plain lines instead of bars: the stream is no terminal (a CI log, a pipe, a file), or
    one that cannot redraw a line (TERM=dumb)."""
    return not console.is_terminal or console.is_dumb_terminal


class StageLines:
    """One plain, flushed line per stage on stderr: for CI logs and `--json`."""

    def __init__(self, todo: list[Stage], estimates: dict[str, float] | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.total = len(todo)
        self.n = 0
        self.left = TimeLeft(estimates, todo)
        self._index: dict[str, int] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def _say(self, text: str) -> None:
        print(f"moldbatch: {text}", file=self.stream, flush=True)

    def _eta(self) -> str:
        t = self.left.text()
        return f"; {t}" if t else ""

    def cached(self, stage: Stage) -> None:
        self._say(f"{stage.id} cached")

    def start(self, stage: Stage) -> Callable[[int, int], None] | None:
        self.n += 1
        self._index[stage.id] = self.n
        what = stage.kind + (f", {stage.steps} steps" if stage.steps else "")
        model = getattr(stage.params, "model", None)
        if stage.kind == "clip" and model:
            what += f", {model}"
        self._say(f"[{self.n}/{self.total}] {stage.id} started ({what}){self._eta()}")
        return None

    def step(self, stage_id: str, i: int, n: int) -> None:
        return None  # a line per stage, not per step: a CI log stays readable

    def done(self, stage: Stage, seconds: float = 0.0) -> None:
        self.left.finish(stage.id, seconds)
        i = self._index.get(stage.id, self.n)
        self._say(f"[{i}/{self.total}] {stage.id} rendered in {seconds:.1f}s{self._eta()}")

    def failed(self, stage: Stage, seconds: float, error: str) -> None:
        self.left.finish(stage.id, seconds)
        i = self._index.get(stage.id, self.n)
        self._say(f"[{i}/{self.total}] {stage.id} failed after {seconds:.1f}s: {error}")

    def skipped(self, stage: Stage) -> None:
        self._say(f"{stage.id} skipped (a stage it needs failed)")


class StageBars:
    def __init__(
        self,
        console: Console,
        todo: list[Stage],
        enabled: bool,
        estimates: dict[str, float] | None = None,
    ):
        self.enabled = enabled and bool(todo)
        self.left = TimeLeft(estimates, todo)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[eta]}"),
            console=console,
            transient=False,
            disable=not self.enabled,
        )
        self.film = self.progress.add_task("Film", total=len(todo), unit="stages", eta="")
        self._update_eta()
        self.clips_todo: dict[str, int] = {}
        for stage in todo:
            if stage.kind == "clip":
                self.clips_todo[stage.shot] = self.clips_todo.get(stage.shot, 0) + 1
        self.chains: dict[str, object] = {}
        self.running: dict[str, object] = {}  # stage id -> its steps bar
        self._stepped: set[str] = set()
        self._models: set[str] = set()

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def _update_eta(self) -> None:
        self.progress.update(self.film, eta=self.left.text())

    def cached(self, stage: Stage) -> None:
        return None

    def skipped(self, stage: Stage) -> None:
        self.progress.advance(self.film)

    def start(self, stage: Stage) -> Callable[[int, int], None] | None:
        """A stage begins; returns the callback its denoising steps report to, if it has any."""
        if stage.kind != "clip":
            return None
        if self.clips_todo.get(stage.shot, 0) > 1 and stage.shot not in self.chains:
            self.chains[stage.shot] = self.progress.add_task(
                f" Chain {stage.shot}", total=self.clips_todo[stage.shot], unit="clips", eta=""
            )
        model = getattr(stage.params, "model", None) or "the model"
        # until the first step arrives the runtime is loading (minutes on real weights): say so
        # (later clips of the same model only encode their prompt and conditions)
        wait = "preparing" if model in self._models else f"loading {model}"
        self._models.add(model)
        self.running[stage.id] = self.progress.add_task(
            f"   {stage.id} [dim]({wait}…)[/]", total=stage.steps, unit="steps", eta=""
        )
        return lambda i, n: self.step(stage.id, i, n)

    def step(self, stage_id: str, i: int, n: int) -> None:
        task = self.running.get(stage_id)
        if task is not None:
            if stage_id not in self._stepped:
                self._stepped.add(stage_id)
                self.progress.update(task, description=f"   {stage_id}")
            self.progress.update(task, completed=i, total=n)

    def done(self, stage: Stage, seconds: float = 0.0) -> None:
        task = self.running.pop(stage.id, None)
        if task is not None:
            self.progress.update(task, completed=stage.steps, description=f"   {stage.id}")
        if stage.shot in self.chains and stage.kind == "clip":
            self.progress.advance(self.chains[stage.shot])
        self.left.finish(stage.id, seconds)
        self.progress.advance(self.film)
        self._update_eta()

    def failed(self, stage: Stage, seconds: float, error: str) -> None:
        """A failed stage's bar stays where it stopped, marked failed: never complete."""
        task = self.running.pop(stage.id, None)
        if task is not None:
            self.progress.update(task, description=f"   [red]✗ {stage.id} failed[/]")
        self.left.finish(stage.id, seconds)
        self.progress.advance(self.film)
        self._update_eta()
