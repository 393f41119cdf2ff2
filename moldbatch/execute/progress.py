"""Progress bars like mold's: the film's stages, each chained shot's clips, and the denoising
steps of each clip that is running (one at a time locally, several on a Ray cluster)."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from moldbatch.plan.types import Stage


class StageBars:
    def __init__(self, console: Console, todo: list[Stage], enabled: bool):
        self.enabled = enabled and bool(todo)
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
        self.running: dict[str, object] = {}  # stage id -> its steps bar

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def start(self, stage: Stage) -> Callable[[int, int], None] | None:
        """A stage begins; returns the callback its denoising steps report to, if it has any."""
        if stage.kind != "clip":
            return None
        if self.clips_todo.get(stage.shot, 0) > 1 and stage.shot not in self.chains:
            self.chains[stage.shot] = self.progress.add_task(
                f" Chain {stage.shot}", total=self.clips_todo[stage.shot]
            )
        self.running[stage.id] = self.progress.add_task(f"   {stage.id}", total=stage.steps)
        return lambda i, n: self.step(stage.id, i, n)

    def step(self, stage_id: str, i: int, n: int) -> None:
        task = self.running.get(stage_id)
        if task is not None:
            self.progress.update(task, completed=i, total=n)

    def done(self, stage: Stage) -> None:
        task = self.running.pop(stage.id, None)
        if task is not None:
            self.progress.update(task, completed=stage.steps)
        if stage.shot in self.chains and stage.kind == "clip":
            self.progress.advance(self.chains[stage.shot])
        self.progress.advance(self.film)
