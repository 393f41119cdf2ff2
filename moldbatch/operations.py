"""What moldbatch does, as plain functions: the CLI (cli.py) parses arguments, calls one of
these, prints what it returns and maps the exception it raises to an exit code. Tests call
them directly. Every failure is a MoldbatchError (errors.py) carrying its exit code."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from moldbatch.errors import MoldbatchError, OverBudget, SpecInvalid, UsageError, display_path
from moldbatch.plan.types import Plan


class ModelFilesMissing(MoldbatchError):
    """A real model's files are not on this machine (exit 3: pull them, then render)."""

    exit_code = 3


class GcNeedsValidSpecs(MoldbatchError):
    pass


def load_plan(
    file: str | Path,
    *,
    strict: bool = False,
    out: Path | None = None,
    workdir: Path | None = None,
) -> Plan:
    """Read, validate and plan a spec (or a mold script); never raises for a bad spec: the
    plan's diagnostics say what is wrong. Writes nothing."""
    from moldbatch.plan.planner import plan_file

    path = Path(file)
    return plan_file(path, display=display_path(path), strict=strict, out_dir=out, workdir=workdir)


def cache_status(plan: Plan, workdir: Path | None) -> dict[str, bool]:
    """Which stages already have a complete artifact (size-checked; render verifies sums)."""
    from moldbatch.execute.store import ArtifactStore, default_workdir

    store = ArtifactStore(workdir or default_workdir(plan.path))
    if not store.root.is_dir():
        return {s.id: False for s in plan.stages}
    return {s.id: store.get(s.key, verify=False) is not None for s in plan.stages}


@dataclass
class PlanView:
    """A valid plan with what a dry run shows: which stages are cached, and the cost."""

    plan: Plan
    cached: dict[str, bool]
    cost: object  # review.cost.PlanCost

    def to_json(self) -> dict:
        doc = self.plan.to_json()
        for stage in doc["stages"]:
            stage["cached"] = self.cached.get(stage["id"], False)
            stage["cost"] = self.cost.stages[stage["id"]].to_json()
        doc["cost"] = {k: v for k, v in self.cost.to_json().items() if k != "stages"}
        return doc


def dry_run(plan: Plan, workdir: Path | None = None) -> PlanView:
    """What `moldbatch plan` shows of a valid plan."""
    from moldbatch.review.cost import estimate

    return PlanView(plan, cache_status(plan, workdir), estimate(plan))


def missing_model_files(
    plan: Plan, workdir: Path | None, models_dir: Path | None = None
) -> str | None:
    """The one line naming what the stages a render would run need and this machine lacks
    (with the `moldbatch pull` command), or None."""
    from moldbatch.execute.store import stages_to_run
    from moldbatch.weights.files import missing_message, plan_needs

    return missing_message(plan_needs(stages_to_run(plan, workdir)), models_dir)


def render(
    plan: Plan,
    *,
    workdir: Path | None = None,
    out: Path | None = None,
    keep_going: bool = False,
    device: str | None = None,
    progress: bool = True,
    executor: str = "local",
    ray_options: dict | None = None,
    max_gpu_minutes: float | None = None,
    models_dir: Path | None = None,
    report: bool = True,
    runtimes: dict | None = None,
    compile: bool = False,
    memory: str | None = None,
):
    """Render a planned film: refuse before starting when it is invalid (SpecInvalid), over the
    GPU budget (OverBudget) or missing model files (ModelFilesMissing); render what is not
    cached; write the render report beside the shots. Returns the Summary; a failed stage
    raises StageFailed (with the summary) unless `keep_going`."""
    if not plan.valid:
        raise SpecInvalid(plan.errors)
    if max_gpu_minutes is not None:
        from moldbatch.review.cost import over_budget

        refusal = over_budget(plan, workdir, max_gpu_minutes)
        if refusal:
            raise OverBudget(refusal)
    if models_dir is not None:
        # the loader reads it here, in this process and in the Ray workers it starts
        from moldbatch.weights.files import MODELS_ENV

        os.environ[MODELS_ENV] = str(models_dir)
    missing = missing_model_files(plan, workdir, models_dir)
    if missing:  # real models render from local files only: check first
        raise ModelFilesMissing(missing)
    from moldbatch.execute.executor import render_plan

    summary = render_plan(
        plan,
        workdir=workdir,
        keep_going=keep_going,
        device=device,
        progress=progress,
        runtimes=runtimes,
        executor=executor,
        ray_options=ray_options,
        compile=compile,
        memory=memory,
    )
    if report:
        from moldbatch.review.report import report_after_render

        report_after_render(plan, summary, out, workdir, quiet=not progress)
    return summary


def status(plan: Plan, workdir: Path | None = None) -> dict:
    """The progress of the last render of a valid plan (read only)."""
    from moldbatch.execute.lock import render_running
    from moldbatch.execute.state import StateDB
    from moldbatch.execute.store import default_workdir

    workdir = workdir or default_workdir(plan.path)
    cached = cache_status(plan, workdir)
    last = None
    if (workdir / "state.sqlite").exists():
        db = StateDB(workdir, readonly=True)
        try:
            last = db.last_run(str(plan.path.resolve()))
        finally:
            db.close()
        if last and last["status"] == "running" and not render_running(workdir):
            # the process that ran it is gone (killed): say so rather than "running" forever
            last["status"] = "interrupted"
            for stage in last["stages"]:
                if stage["status"] == "running":
                    stage["status"] = "interrupted"
    return {
        "spec": plan.file,
        "workdir": str(workdir),
        "cached": sum(cached.values()),
        "stages": len(plan.stages),
        "last_run": last,
        "plan": [{"id": s.id, "cached": cached[s.id]} for s in plan.stages],
    }


def gc(plans: list[Plan], workdir: Path | None = None, dry_run: bool = False):
    """Remove the artifacts no stage of these (valid) specs needs, nor of any other spec that
    rendered into the same work folder. Returns (count, bytes, other specs kept for)."""
    if not all(p.valid for p in plans):
        raise GcNeedsValidSpecs("gc needs valid specs to know what to keep")
    from moldbatch.execute.store import collect_garbage

    return collect_garbage(plans, workdir, dry_run=dry_run)


def export_mold(plan: Plan, shot_id: str | None, output: Path | None = None) -> str:
    """A shot of a valid plan as a mold.chain.v1 script (TOML text)."""
    from moldbatch.spec.mold import mold_script

    if not plan.valid:
        raise SpecInvalid(plan.errors)
    if shot_id is None:
        if len(plan.shots) != 1:
            ids = ", ".join(s.id for s in plan.shots)
            raise UsageError(
                f"{plan.file} has {len(plan.shots)} shots; pick one with --shot ({ids})"
            )
        shot_id = plan.shots[0].id
    return mold_script(plan, shot_id, output)


def pull_choices(model: str, extras: tuple[str, ...]):
    """The model's registry entry and the extras asked for (UsageError for unknown names)."""
    from moldbatch.models import MODELS
    from moldbatch.weights.files import parse_extras

    if model not in MODELS:
        raise UsageError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    return MODELS[model], parse_extras(MODELS[model], extras)


def pull_listing(model: str, chosen, models_dir: Path | None) -> list[tuple[str, str, str]]:
    """(state, role, label) of every file `pull` would fetch: present, missing or optional."""
    from moldbatch.weights.files import missing_files, model_files

    files = model_files(model, chosen)
    missing = set(missing_files(files, models_dir))
    return [
        (
            "optional" if f.kind == "optional" else "missing" if f in missing else "present",
            f.role,
            f.label,
        )
        for f in files
    ]
