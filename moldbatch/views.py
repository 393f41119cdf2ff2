"""What the CLI prints in a terminal: the plan tables, the run status and the model list."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from moldbatch.errors import printable
from moldbatch.models import GB, MEMORY_TIERS, MODELS, peak_bytes


def _user(text) -> str:
    """Text a spec (or a file) wrote, shown as text: control characters escaped, no markup."""
    return escape(printable(text))


def _out() -> Console:
    return Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 160)


# Tables past this many rows are summarised: rich lays a table out whole, which for a film of
# thousands of shots takes longer than planning it; the plain lines of `--stages` do not
TABLE_ROWS = 200


def print_plan(plan, cached: dict[str, bool], cost=None, stages: bool | None = None) -> None:
    """The plan: a table of shots and one of stages, with `cost` (review.cost.PlanCost) frames,
    latent tokens and estimated GPU time per stage and in total. A long film is summarised:
    its stages are listed when `stages` is True (as plain lines past TABLE_ROWS), and not when
    it is False; None lists them when they fit a table."""
    con = _out()
    if len(plan.shots) <= TABLE_ROWS:
        _shots_table(con, plan)
    else:
        counts: dict[tuple[str, str], int] = {}
        for s in plan.shots:
            counts[(s.model, s.pipeline)] = counts.get((s.model, s.pipeline), 0) + 1
        con.print(
            f"{_user(plan.name)}: {len(plan.shots)} shots, {sum(len(s.clips) for s in plan.shots)} clips"
        )
        for (model, pipeline), n in sorted(counts.items()):
            con.print(f"  {n} shots on {model} ({pipeline})")
    if stages is None:
        stages = len(plan.stages) <= TABLE_ROWS
    if stages and len(plan.stages) <= TABLE_ROWS:
        _stages_table(con, plan, cached, cost)
    elif stages:
        _stage_lines(plan, cached, cost)
    todo = sum(not cached.get(st.id, False) for st in plan.stages)
    more = "" if stages else " (`--stages` lists them)"
    con.print(
        f"{todo} of {len(plan.stages)} stages will render{more}"
        + (f"; film -> {_user(plan.output)}" if plan.output else "")
    )
    if cost is not None:
        from moldbatch.review.cost import format_seconds

        todo_s = cost.seconds_for(st.id for st in plan.stages if not cached.get(st.id))
        con.print(
            f"estimated GPU time: {format_seconds(todo_s)} to render, "
            f"{format_seconds(cost.gpu_seconds)} for the whole film (an estimate: see "
            "moldbatch/review/cost.py)"
        )
    if plan.shots:
        from moldbatch.models import memory_line, memory_needs

        con.print(f"GPU memory: {memory_line(memory_needs(plan.stages))}; render --memory picks")


def _shots_table(con: Console, plan) -> None:
    shots = Table(title=f"{_user(plan.name)}: {len(plan.shots)} shots", title_justify="left")
    for col in ("shot", "model", "pipeline", "frames", "size", "fps", "format", "clips"):
        shots.add_column(col)
    for s in plan.shots:
        shots.add_row(
            s.id,
            s.model,
            s.pipeline,
            str(s.frames),
            f"{s.width}x{s.height}",
            f"{s.fps:g}",
            s.format + ("" if s.audio else " (silent)"),
            _clips_cell(s),
        )
    con.print(shots)


def _stage_cells(st, cached, cost) -> list[str]:
    hit = cached.get(st.id, False)
    cells = [st.id, st.kind, ", ".join(st.needs) or "-", st.key[:12]]
    cells.append("cached" if hit else "will render")
    if cost is not None:
        from moldbatch.review.cost import format_seconds

        c = cost.stages[st.id]
        cells += [str(c.frames), str(c.tokens or "-"), format_seconds(c.gpu_seconds)]
    return cells


def _stages_table(con: Console, plan, cached, cost) -> None:
    stages = Table(title="stages", title_justify="left")
    for col in ("stage", "kind", "needs", "key", "state"):
        stages.add_column(col)
    if cost is not None:
        for col in ("frames", "tokens", "est. GPU"):
            stages.add_column(col, justify="right")
    for st in plan.stages:
        cells = _stage_cells(st, cached, cost)
        cells[4] = "[green]cached[/]" if cells[4] == "cached" else "[yellow]will render[/]"
        stages.add_row(*cells)
    con.print(stages)


def _stage_lines(plan, cached, cost) -> None:
    out = sys.stdout
    for st in plan.stages:
        out.write("  ".join(_stage_cells(st, cached, cost)) + "\n")


def _clips_cell(shot) -> str:
    """`97 + 97 + 81 (smooth, overlap 17)`, or each seam named when they differ."""
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
        f"{_user(doc['spec'])}: {doc['counts']['cached']} of {len(doc['stages'])} stages "
        f"cached (work folder {_user(doc['workdir'])})"
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
            error = f": {_user(s['error'])}" if s["error"] else ""
            con.print(f"  {_user(s['id'])}: {s['status']}{error}", soft_wrap=True)


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
                "gpu_memory_gb": _memory_gb(m),
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
        f"GB at {_SIZE}: {' / '.join(MEMORY_TIERS)}",
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
            " / ".join(f"~{gb:.0f}" for gb in _memory_gb(m).values()),
        )
    _out().print(table)
    print("GPU memory: estimates (models.peak_bytes) for one clip; README, 'Which GPU'")


_SIZE = "1216x704x97"


def _memory_gb(m) -> dict[str, float]:
    """Estimated peak GB per tier of a 97-frame 1216x704 clip (its half-size first pass and
    full-size refine on the two-stage pipelines)."""
    two = m.renders_in_two_stages(m.base_pipeline)
    passes = [(1216, 704)] + ([(608, 352)] if two else [])
    return {
        tier: round(max(peak_bytes(m, tier, w, h, 97) for w, h in passes) / GB, 1)
        for tier in MEMORY_TIERS
    }
