"""What moldbatch does, as plain functions: the CLI (cli.py) parses arguments, calls one of
these, prints what it returns and maps the exception it raises to an exit code. Tests call
them directly. Every failure is a MoldbatchError (errors.py) carrying its exit code."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from moldbatch.errors import (
    MoldbatchError,
    OverBudget,
    RuntimeMissing,
    SpecInvalid,
    UsageError,
    display_path,
)
from moldbatch.plan.types import Plan


class ModelFilesMissing(MoldbatchError):
    """A real model's files are not on this machine (exit 3: pull them, then render)."""

    exit_code = 3
    reason = "model-files-missing"


class GcNeedsValidSpecs(MoldbatchError):
    """gc of a spec with errors: it cannot know what to keep (exit 1; 6 when only files are
    missing, as for every command)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def load_plan(
    file: str | Path,
    *,
    strict: bool = False,
    out: Path | None = None,
    workdir: Path | None = None,
    allow=(),
) -> Plan:
    """Read, validate and plan a spec (or a mold script); never raises for a bad spec: the
    plan's diagnostics say what is wrong. Writes nothing. The spec's paths stay inside its
    project; `allow` (and $MOLDBATCH_ALLOW_PATHS) names folders they may reach besides."""
    from moldbatch.plan.planner import plan_file

    path = Path(file)
    return plan_file(
        path,
        display=display_path(path),
        strict=strict,
        out_dir=out,
        workdir=workdir,
        allow=allow,
    )


def load_plans(
    files,
    *,
    strict: bool = False,
    out: Path | None = None,
    workdir: Path | None = None,
    allow=(),
) -> list[Plan]:
    """`load_plan` of each file, then what `render` would refuse later as errors (exit 5):
    an output file two of these specs write, or one that another spec's render wrote into
    the same work folder."""
    plans = [load_plan(f, strict=strict, out=out, workdir=workdir, allow=allow) for f in files]
    writers: dict[Path, Plan] = {}
    for plan in plans:
        if not plan.valid:
            continue
        found = []
        for stage in plan.stages:
            if stage.output is None:
                continue
            dst = Path(stage.output).resolve()
            other = writers.setdefault(dst, plan)
            if other is not plan and other.path.resolve() != plan.path.resolve():
                found.append((stage, f"{other.file} writes it too"))
        found += _rendered_by_others(plan, workdir)
        plan.diagnostics += [_collision(plan, stage, why) for stage, why in found]
    return plans


def _rendered_by_others(plan: Plan, workdir: Path | None) -> list:
    from moldbatch.execute.deliver import taken_outputs
    from moldbatch.execute.state import StateDB
    from moldbatch.execute.store import default_workdir

    folder = workdir or default_workdir(plan.path)
    if not (folder / "state.sqlite").is_file():
        return []
    import sqlite3

    try:
        db = StateDB(folder, readonly=True)
        try:
            taken = taken_outputs(plan, db, str(plan.path.resolve()))
        finally:
            db.close()
    except sqlite3.Error:  # a damaged history: the render moves it aside and says so
        return []
    return [(stage, f"{display_path(Path(owner))} rendered it") for stage, _, owner in taken]


def _collision(plan: Plan, stage, why: str):
    """The error at the shot's `id` (or the film's `output`) for an output another spec
    writes."""
    import dataclasses

    from moldbatch.execute.deliver import collision_fix
    from moldbatch.spec.source import read_source

    where = ("output",)
    if stage.shot:
        where = ("shots", next(i for i, s in enumerate(plan.shots) if s.id == stage.shot), "id")
    try:
        d = read_source(plan.path, plan.file).diag(
            where, f"{display_path(Path(stage.output))}: {why}; {collision_fix(stage)}"
        )
    except MoldbatchError:  # a mold script: its positions are not the film's
        from moldbatch.errors import Diagnostic

        d = Diagnostic(plan.file, 1, 1, "", f"{display_path(Path(stage.output))}: {why}")
    return dataclasses.replace(d, code="output-taken")


def refuse_invalid(plan: Plan) -> Plan:
    """The plan, when valid; else the error for its findings (exit 1, 5 or 6)."""
    if not plan.valid:
        raise SpecInvalid.of(plan.errors)
    return plan


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
            stage["status"] = "cached" if self.cached.get(stage["id"]) else "pending"
            stage["cost"] = self.cost.stages[stage["id"]].to_json()
        doc["counts"] = _counts(doc["stages"], ("cached", "pending"))
        doc["cost"] = {k: v for k, v in self.cost.to_json().items() if k != "stages"}
        return doc


def _counts(stages: list[dict], statuses) -> dict[str, int]:
    """Stages by status: the `counts` every JSON document of moldbatch has."""
    return {k: sum(s["status"] == k for s in stages) for k in statuses}


# --- `render --json`: one document for every way a render ends ------------------------------
RENDER_STATUSES = ("rendered", "cached", "failed", "skipped", "pending")


def render_result(
    plan: Plan,
    *,
    summary=None,
    error: BaseException | None = None,
    workdir: Path | None = None,
) -> dict:
    """The one JSON document `render --json` prints, however the render ended: done, a stage
    failed, the spec is invalid, over budget, an output collision, missing files, interrupted.

    `ok` and `exit_code` with the `reason` ("done" or the error's); `stages`: each stage's
    status (rendered | cached | failed | skipped | pending; a refused render's stages are
    cached or pending); `outputs`: shot id -> the file delivered ("film" holds the joined
    film); `report`: <spec>.report.html's path or null. Its schema: tests/unit/test_render_json.py."""
    if summary is None and error is not None:
        summary = getattr(error, "summary", None)
    if summary is not None:
        stages = [
            {
                "id": o.id,
                "kind": o.kind,
                "shot": _shot_of(plan, o.id),
                "status": o.status,
                "seconds": round(o.seconds, 3),
                "error": o.error,
            }
            for o in summary.stages
        ]
        delivered = {str(Path(p)) for p in summary.outputs}
        outputs = _output_map(plan, delivered)
        seconds, report = round(summary.seconds, 3), summary.report
        workdir = summary.workdir
    else:
        cached = cache_status(plan, workdir) if plan.valid else {}
        stages = [
            {
                "id": s.id,
                "kind": s.kind,
                "shot": s.shot,
                "status": "cached" if cached.get(s.id) else "pending",
                "seconds": 0.0,
                "error": None,
            }
            for s in plan.stages
        ]
        outputs, seconds, report = {}, 0.0, None
    if workdir is None and plan.path is not None:
        from moldbatch.execute.store import default_workdir

        workdir = default_workdir(plan.path)
    ok = error is None and (summary is None or summary.ok)
    if error is not None:
        code = getattr(error, "exit_code", 1)
        reason = getattr(error, "reason", None) or _REASONS.get(code, "error")
        if isinstance(error, KeyboardInterrupt):
            code, reason = 130, "interrupted"
    else:
        code, reason = (0, "done") if ok else (3, "stage-failed")
    return {
        "schema": "moldbatch.render/1",
        "ok": ok,
        "exit_code": code,
        "reason": reason,
        "message": None if error is None else (str(error) or type(error).__name__),
        "spec": plan.file,
        "workdir": str(workdir) if workdir is not None else None,
        "seconds": seconds,
        "counts": _counts(stages, RENDER_STATUSES),
        "stages": stages,
        "outputs": outputs,
        "report": str(report) if report else None,
        "errors": [d.to_json() for d in plan.errors],
        "warnings": [d.to_json() for d in plan.warnings],
    }


_REASONS = {1: "error", 2: "usage", 3: "stage-failed", 4: "over-budget", 5: "output-collision"}


def _shot_of(plan: Plan, stage_id: str) -> str | None:
    try:
        return plan.stage(stage_id).shot
    except KeyError:
        return None


def _output_map(plan: Plan, delivered: set[str]) -> dict[str, str]:
    out = {}
    for stage in plan.stages:
        if stage.output and str(Path(stage.output).resolve()) in delivered:
            out[stage.shot or "film"] = str(Path(stage.output).resolve())
    return out


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
    log_lines: bool = False,
    memory: str | None = None,
):
    """Render a planned film: refuse before starting when it is invalid (SpecInvalid), over the
    GPU budget (OverBudget) or missing model files (ModelFilesMissing); render what is not
    cached; write the render report beside the shots. Returns the Summary; a failed stage
    raises StageFailed (with the summary) unless `keep_going`."""
    refuse_invalid(plan)
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
    if runtimes is None:
        need_runtime(plan, workdir)
    from moldbatch.errors import StageFailed
    from moldbatch.execute.executor import render_plan
    from moldbatch.review.cost import estimate
    from moldbatch.review.report import report_after_render

    cost = estimate(plan)  # for the time left the progress shows

    try:
        summary = render_plan(
            plan,
            workdir=workdir,
            keep_going=keep_going,
            device=device,
            progress=progress,
            runtimes=runtimes,
            executor=executor,
            ray_options=ray_options,
            log_lines=log_lines,
            compile=compile,
            memory=memory,
            estimates={s.id: cost.seconds_for([s.id]) for s in plan.stages},
        )
    except StageFailed as e:  # the report shows what failed, and what is done
        if report and e.summary is not None:
            e.summary.report = report_after_render(plan, e.summary, out, workdir, quiet=True)
        raise
    if report:
        summary.report = report_after_render(plan, summary, out, workdir, quiet=not progress)
    return summary


def need_runtime(plan: Plan, workdir: Path | None) -> None:
    """RuntimeMissing (one line: install moldbatch[gpu]) when a stage that would run needs
    the GPU stack and it is not installed; a film whose stages are all cached needs none."""
    import importlib.util

    from moldbatch.execute.store import stages_to_run

    if not stages_to_run(plan, workdir):
        return

    def absent(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except (ImportError, ValueError):  # blocked, or half-installed
            return True

    lacking = [m for m in ("numpy", "torch", "av") if absent(m)]
    if lacking:
        raise RuntimeMissing(
            f"rendering needs the GPU runtime ({', '.join(lacking)} not installed): "
            'pip install "moldbatch[gpu]"'
        )


def status(plan: Plan, workdir: Path | None = None) -> dict:
    """The progress of the last render of a valid plan (read only)."""
    import sqlite3

    from moldbatch.execute.lock import render_running
    from moldbatch.execute.state import StateDB, is_corrupt
    from moldbatch.execute.store import default_workdir

    workdir = workdir or default_workdir(plan.path)
    cached = cache_status(plan, workdir)
    stages = [
        {
            "id": s.id,
            "kind": s.kind,
            "shot": s.shot,
            "status": "cached" if cached[s.id] else "pending",
        }
        for s in plan.stages
    ]
    last, warning = None, None
    if (workdir / "state.sqlite").exists():
        try:
            db = StateDB(workdir, readonly=True)
            try:
                last = db.last_run(str(plan.path.resolve()))
            finally:
                db.close()
        except sqlite3.Error as e:  # the history is lost or unreadable; the store is not
            what = "damaged" if is_corrupt(e) else "unreadable"
            warning = (
                f"the state database {display_path(workdir / 'state.sqlite')} is {what} ({e}): "
                "no run history; the next render moves it aside and resumes from the artifacts"
            )
        if last and last["status"] == "running" and not render_running(workdir):
            # the process that ran it is gone (killed): say so rather than "running" forever
            last["status"] = "interrupted"
            for stage in last["stages"]:
                if stage["status"] == "running":
                    stage["status"] = "interrupted"
    return {
        "spec": plan.file,
        "workdir": str(workdir),
        "counts": _counts(stages, ("cached", "pending")),
        "stages": stages,
        "last_run": last,
        **({"warning": warning} if warning else {}),
    }


def gc(
    plans: list[Plan],
    workdir: Path | None = None,
    dry_run: bool = False,
    lean: bool = False,
    allow=(),
):
    """Remove the artifacts no stage of these (valid) specs needs, nor of any other spec that
    rendered into the same work folder (planned with the same `allow`, so that one rendered
    with --allow-path keeps its artifacts; `lean`: of these, only their finished files).
    Returns (count, bytes, other specs kept for)."""
    errors = [d for p in plans for d in p.errors]
    if errors:
        code = SpecInvalid.of(errors).exit_code
        raise GcNeedsValidSpecs("gc needs valid specs to know what to keep", code)
    from moldbatch.execute.store import collect_garbage

    return collect_garbage(plans, workdir, dry_run=dry_run, allow=allow, lean=lean)


def export_mold(plan: Plan, shot_id: str | None, output: Path | None = None) -> str:
    """A shot of a valid plan as a mold.chain.v1 script (TOML text)."""
    from moldbatch.spec.mold import mold_script

    refuse_invalid(plan)
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


def pull_targets(model: str | None, extras: tuple[str, ...], specs: tuple = ()) -> list:
    """(model, extras chosen) to pull: MODEL with --with, or what the stages of each spec of
    `specs` need (models built at run time need nothing)."""
    if model is not None and specs:
        raise UsageError("give a MODEL or --for SPEC, not both")
    if model is not None:
        return [(model, pull_choices(model, extras)[1])]
    if not specs:
        raise UsageError("name a MODEL to pull, or --for SPEC (see `moldbatch models`)")
    from moldbatch.weights.files import plan_needs

    needs: dict[str, list[str]] = {}
    for spec in specs:
        plan = refuse_invalid(load_plan(spec))
        for name, wanted in plan_needs(plan.stages).items():
            have = needs.setdefault(name, [])
            have += [w for w in wanted if w not in have]
    return [
        (name, pull_choices(name, (",".join(wanted),) if wanted else ())[1])
        for name, wanted in needs.items()
    ]


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
