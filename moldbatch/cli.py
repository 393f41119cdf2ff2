"""The command line: parse, call one function, print, set the exit code. Nothing else here.

Exit codes: 0 done, 1 spec invalid, 2 usage error, 3 a stage failed (or the work folder is
locked by another render), 4 a render over its --max-gpu-minutes budget.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from moldbatch import __version__
from moldbatch.errors import MoldbatchError, display_path


def _plan(file: str, strict: bool = False, out: Path | None = None, workdir: Path | None = None):
    from moldbatch.plan.planner import plan_file

    return plan_file(
        Path(file), display=display_path(Path(file)), strict=strict, out_dir=out, workdir=workdir
    )


def _workdir_option(what: str):
    return click.option(
        "--workdir",
        type=click.Path(file_okay=False, path_type=Path),
        help=f"Work folder {what} (default: .moldbatch/ beside the spec).",
    )


_out_option = click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where shot files go (default: renders/ beside the spec).",
)


def _print_diagnostics(plan, stream=None) -> None:
    for d in plan.diagnostics:
        click.echo(str(d), file=stream or sys.stderr)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moldbatch")
def cli() -> None:
    """Render films with LTX-2 / LTX-2.3 from declarative spec files (YAML or TOML)."""


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
def validate(files: tuple[str, ...], strict: bool) -> None:
    """Check spec files against the models' rules; print every error as file:line:col."""
    ok = True
    for file in files:
        plan = _plan(file, strict)
        _print_diagnostics(plan, sys.stdout)
        ok &= plan.valid
    sys.exit(0 if ok else 1)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@_workdir_option("whose cache to compare against")
@_out_option
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the storyboard: one self-contained HTML page of the film's timeline.",
)
def plan(
    file: str,
    as_json: bool,
    strict: bool,
    workdir: Path | None,
    out: Path | None,
    html_path: Path | None,
) -> None:
    """Dry run: show the shots, clips and stages, which are cached, and what they cost."""
    from moldbatch.report import cache_status, print_plan
    from moldbatch.review.cost import estimate

    p = _plan(file, strict, out, workdir)
    cached = cache_status(p, workdir) if p.valid else {}
    cost = estimate(p) if p.valid else None
    if as_json:
        doc = p.to_json()
        for stage in doc["stages"]:
            stage["cached"] = cached.get(stage["id"], False)
            stage["cost"] = cost.stages[stage["id"]].to_json()
        if cost is not None:
            doc["cost"] = {k: v for k, v in cost.to_json().items() if k != "stages"}
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_diagnostics(p)
        if p.valid:
            print_plan(p, cached, cost)
    if html_path is not None and p.valid:
        from moldbatch.review.storyboard import write_storyboard

        write_storyboard(p, html_path, cached)
        click.echo(f"wrote {display_path(html_path)}", err=True)
    sys.exit(0 if p.valid else 1)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@_workdir_option("for artifacts and state")
@_out_option
@click.option(
    "--keep-going", "-k", is_flag=True, help="After a failed stage, render the other shots."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("--device", default=None, help="Torch device (default: cuda if present, else cpu).")
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where stages run: this process, or the workers of a Ray cluster (moldbatch[ray]).",
)
@click.option(
    "--address",
    default=None,
    help="Ray cluster: auto, HOST:6379 or ray://HOST:10001 (default: a local Ray instance).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Ray workers (default: one per GPU of the cluster; one per CPU for the tiny model).",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Ray: times a stage is sent again after its worker died.",
)
@click.option(
    "--max-gpu-minutes",
    type=click.FloatRange(min=0),
    default=None,
    help="Refuse (exit 4) before starting when the estimated GPU time of what is not cached "
    "is above this.",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Read real models' files from this folder (as written by `moldbatch pull "
    "--models-dir`) before the Hugging Face cache (default: $MOLDBATCH_MODELS).",
)
def render(
    file: str,
    workdir: Path | None,
    out: Path | None,
    keep_going: bool,
    as_json: bool,
    device: str | None,
    executor: str,
    address: str | None,
    workers: int | None,
    retries: int,
    max_gpu_minutes: float | None,
    models_dir: Path | None,
) -> None:
    """Render a film: every stage not already cached, then the shot files and the film."""
    p = _plan(file, False, out, workdir)
    _print_diagnostics(p)
    if not p.valid:
        if as_json:
            click.echo(json.dumps(p.to_json(), indent=2))
        sys.exit(1)
    if max_gpu_minutes is not None:
        from moldbatch.review.cost import over_budget

        refusal = over_budget(p, workdir, max_gpu_minutes)
        if refusal:
            click.echo(f"moldbatch: {refusal}", err=True)
            sys.exit(4)
    if models_dir is not None:  # the loader (this process and its children) reads it from here
        os.environ["MOLDBATCH_MODELS"] = str(models_dir)
    from moldbatch.runtime.files import check_plan

    missing = check_plan(p, workdir)  # real models render from local files only: check first
    if missing:
        if as_json:
            click.echo(json.dumps({"ok": False, "error": missing}, indent=2))
        click.echo(f"moldbatch: {missing}", err=True)
        sys.exit(3)
    from moldbatch.execute.executor import render_plan

    try:
        summary = render_plan(
            p,
            workdir=workdir,
            keep_going=keep_going,
            device=device,
            progress=not as_json,
            executor=executor,
            ray_options={"address": address, "workers": workers, "retries": retries}
            if executor == "ray"
            else None,
        )
    except MoldbatchError as e:
        summary = getattr(e, "summary", None)
        if as_json and summary is not None:  # what was done and kept, even on failure
            click.echo(json.dumps(summary.to_json(), indent=2))
        click.echo(f"moldbatch: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # click would print "Aborted!" and exit 1
        click.echo("moldbatch: interrupted; run the same command again to resume", err=True)
        sys.exit(130)
    from moldbatch.review.report import report_after_render

    report_after_render(p, summary, out, workdir, quiet=as_json)
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=2))
    sys.exit(0 if summary.ok else 3)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@_workdir_option("of the render")
@click.option("--json", "as_json", is_flag=True)
def status(file: str, workdir: Path | None, as_json: bool) -> None:
    """Show the progress of the last render of a spec."""
    from moldbatch.report import print_status, status_doc

    p = _plan(file)
    _print_diagnostics(p)
    if not p.valid:
        sys.exit(1)
    doc = status_doc(p, workdir)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        print_status(doc)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_workdir_option("to clean")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
def gc(files: tuple[str, ...], workdir: Path | None, dry_run: bool) -> None:
    """Remove artifacts that no stage of the given specs needs."""
    from moldbatch.execute.store import collect_garbage

    plans = [_plan(f) for f in files]
    for p in plans:
        _print_diagnostics(p)
    if not all(p.valid for p in plans):
        click.echo("moldbatch: gc needs valid specs to know what to keep", err=True)
        sys.exit(1)
    try:
        removed, freed, others = collect_garbage(plans, workdir, dry_run=dry_run)
    except MoldbatchError as e:
        click.echo(f"moldbatch: {e}", err=True)
        sys.exit(e.exit_code)
    verb = "would remove" if dry_run else "removed"
    kept = f"; kept what {len(others)} other spec(s) rendered here need" if others else ""
    click.echo(f"{verb} {removed} artifacts ({freed / 1e6:.1f} MB){kept}")


@cli.group()
def export() -> None:
    """Write a shot in another tool's format."""


@export.command("mold")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--shot", "shot_id", help="The shot to write (needed when the film has several).")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the script here (default: stdout).",
)
def export_mold(file: str, shot_id: str | None, output: Path | None) -> None:
    """Write a shot as a mold.chain.v1 script, or say which field mold cannot express."""
    from moldbatch.fsio import atomic_write
    from moldbatch.spec.mold import CannotExport, mold_script

    p = _plan(file)
    _print_diagnostics(p)
    if not p.valid:
        sys.exit(1)
    if shot_id is None:
        if len(p.shots) != 1:
            ids = ", ".join(s.id for s in p.shots)
            click.echo(
                f"moldbatch: {file} has {len(p.shots)} shots; pick one with --shot ({ids})",
                err=True,
            )
            sys.exit(2)
        shot_id = p.shots[0].id
    try:
        text = mold_script(p, shot_id, output)
    except CannotExport as e:
        click.echo(f"moldbatch: {e}", err=True)
        sys.exit(1)
    if output is None:
        click.echo(text, nl=False)
    else:
        atomic_write(output, text)
        click.echo(f"wrote {display_path(output)}", err=True)


@cli.command()
@click.argument("old")
@click.argument("new")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--markdown", is_flag=True, help="A Markdown table (for a CI job summary).")
def diff(old: str, new: str, as_json: bool, markdown: bool) -> None:
    """What a spec change adds, removes and re-renders, per shot, and why.

    OLD and NEW are spec files or git revisions such as HEAD~1:film.yaml. Exit 0 when
    nothing re-renders, 1 when something does, 2 when a side cannot be read or is invalid.
    """
    from moldbatch.review.diff import DiffError, diff_refs, format_markdown, format_text

    try:
        d = diff_refs(old, new)
    except DiffError as e:
        click.echo(f"moldbatch: {e}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(d.to_json(), indent=2))
    elif markdown:
        click.echo(format_markdown(d), nl=False)
    else:
        click.echo(format_text(d))
    sys.exit(1 if d.changed else 0)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of the spec language."""
    from moldbatch.spec.schema import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@cli.command()
@click.argument("model")
@click.option(
    "--with",
    "extras",
    multiple=True,
    metavar="LIST",
    help="Extras, comma-separated: spatial-x2, spatial-x1.5, temporal-x2, distilled-lora, "
    "camera:<preset>, camera:all, or all.",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write plain copies under DIR/<org>/<name>/ instead of the Hugging Face cache "
    "(default: $MOLDBATCH_MODELS when set).",
)
@click.option(
    "--dry-run", is_flag=True, help="List the files and which are present; fetch nothing."
)
def pull(model: str, extras: tuple[str, ...], models_dir: Path | None, dry_run: bool) -> None:
    """Download a model's files (resumable), so that `render` can run offline."""
    from moldbatch.models import MODELS
    from moldbatch.runtime.files import UnknownExtra, missing_files, model_files, parse_extras

    if model not in MODELS:
        click.echo(f"moldbatch: unknown model {model!r}; known: {', '.join(MODELS)}", err=True)
        sys.exit(2)
    try:
        chosen = parse_extras(MODELS[model], extras)
    except UnknownExtra as e:
        click.echo(f"moldbatch: {e}", err=True)
        sys.exit(2)
    if dry_run:
        files = model_files(model, chosen)
        missing = set(missing_files(files, models_dir))
        for f in files:
            state = "optional" if f.kind == "optional" else "missing" if f in missing else "present"
            click.echo(f"{state:8}  {f.role:14}  {f.label}")
        sys.exit(0)
    from moldbatch.runtime.pull import pull as do_pull

    try:
        do_pull(model, chosen, models_dir, say=lambda line: click.echo(line, err=True))
    except MoldbatchError as e:
        click.echo(f"moldbatch: {e}", err=True)
        sys.exit(e.exit_code)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json: bool) -> None:
    """List the models with their caps and features."""
    from moldbatch.report import print_models

    print_models(as_json)


def main() -> None:
    # click's standalone mode turns Ctrl-C into "Aborted!" and exit 1 (our "invalid" code):
    # handle its exceptions here instead
    try:
        rv = cli(standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("moldbatch: interrupted; run the same command again to resume", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except MoldbatchError as e:
        click.echo(f"moldbatch: {e}", err=True)
        sys.exit(e.exit_code)
    except BrokenPipeError:  # `moldbatch plan … | head`
        sys.exit(0)
    sys.exit(rv if isinstance(rv, int) else 0)
