"""What the CLI prints in a terminal: the plan tables, the run status and the model list."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table

from moldbatch.models import MODELS


def _out() -> Console:
    return Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 160)


def print_plan(plan, cached: dict[str, bool], cost=None) -> None:
    """The plan tables; with `cost` (moldbatch.review.cost.PlanCost), frames, latent tokens
    and estimated GPU time per stage and in total."""
    con = _out()
    shots = Table(title=f"{plan.name}: {len(plan.shots)} shots", title_justify="left")
    for col in ("shot", "model", "pipeline", "frames", "size", "fps", "format", "clips"):
        shots.add_column(col)
    for s in plan.shots:
        clips = _clips_cell(s)
        shots.add_row(
            s.id,
            s.model,
            s.pipeline,
            str(s.frames),
            f"{s.width}x{s.height}",
            f"{s.fps:g}",
            s.format + ("" if s.audio else " (silent)"),
            clips,
        )
    con.print(shots)
    stages = Table(title="stages", title_justify="left")
    for col in ("stage", "kind", "needs", "key", "state"):
        stages.add_column(col)
    if cost is not None:
        from moldbatch.review.cost import format_seconds

        for col in ("frames", "tokens", "est. GPU"):
            stages.add_column(col, justify="right")
    todo = 0
    for st in plan.stages:
        hit = cached.get(st.id, False)
        todo += not hit
        stages.add_row(
            st.id,
            st.kind,
            ", ".join(st.needs) or "-",
            st.key[:12],
            "[green]cached[/]" if hit else "[yellow]will render[/]",
            *(
                ()
                if cost is None
                else (
                    str(cost.stages[st.id].frames),
                    str(cost.stages[st.id].tokens or "-"),
                    format_seconds(cost.stages[st.id].gpu_seconds),
                )
            ),
        )
    con.print(stages)
    con.print(
        f"{todo} of {len(plan.stages)} stages will render"
        + (f"; film -> {plan.output}" if plan.output else "")
    )
    if cost is not None:
        todo_s = cost.seconds_for(st.id for st in plan.stages if not cached.get(st.id))
        con.print(
            f"estimated GPU time: {format_seconds(todo_s)} to render, "
            f"{format_seconds(cost.gpu_seconds)} for the whole film (an estimate: see "
            "moldbatch/review/cost.py)"
        )


def _clips_cell(shot) -> str:
    """`97 + 97 + 33 (smooth, overlap 4)`, or each seam named when they differ."""
    frames = [str(c.frames) for c in shot.clips]
    kinds = {tuple(seam) for seam in shot.seams}
    if len(kinds) <= 1:
        text = " + ".join(frames)
        if kinds:
            kind, n = kinds.pop()
            text += f" ({kind}, overlap {n})" if kind != "cut" else " (cut)"
        return text
    parts = [frames[0]]
    for (kind, n), f in zip(shot.seams, frames[1:], strict=True):
        parts.append(f"{'cut' if kind == 'cut' else f'{kind} {n}'}→ {f}")
    return " ".join(parts)


def print_status(doc: dict) -> None:
    con = _out()
    con.print(
        f"{doc['spec']}: {doc['counts']['cached']} of {len(doc['stages'])} stages cached "
        f"(work folder {doc['workdir']})"
    )
    last = doc["last_run"]
    if last is None:
        con.print("no render yet")
        return
    counts: dict[str, int] = {}
    for s in last["stages"]:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    con.print(
        f"last run #{last['run']}: {last['status']} — "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    )
    for s in last["stages"]:
        if s["status"] in ("failed", "interrupted", "running"):
            error = f": {s['error']}" if s["error"] else ""
            con.print(f"  {s['id']}: {s['status']}{error}", soft_wrap=True)


def print_models(as_json: bool) -> None:
    if as_json:
        doc = [
            {
                "name": m.name,
                "family": m.family,
                "description": m.description,
                "base_pipeline": m.base_pipeline,
                "clip_cap": m.clip_cap,
                "default_steps": m.default_steps,
                "pipelines": list(m.pipelines),
                "spatial_upscales": list(m.spatial_upscales),
                "temporal_upscales": list(m.temporal_upscales),
                "camera_control": m.camera_control,
            }
            for m in MODELS.values()
        ]
        print(json.dumps(doc, indent=2))
        return
    table = Table(title="models")
    for col in (
        "model",
        "pipeline",
        "clip cap",
        "steps",
        "spatial",
        "temporal",
        "camera",
        "pipelines",
    ):
        table.add_column(col)
    for m in MODELS.values():
        table.add_row(
            m.name,
            m.base_pipeline,
            str(m.clip_cap),
            str(m.default_steps),
            ", ".join(m.spatial_upscales) or "-",
            ", ".join(m.temporal_upscales) or "-",
            "presets" if m.camera_control else "-",
            ", ".join(m.pipelines),
        )
    _out().print(table)
