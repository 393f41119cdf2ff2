"""The command line: parse, call one function of operations.py, print, exit. Nothing else here.

Exit codes (errors.py: each MoldbatchError carries its own, mapped once, in `main`):
  0  done
  1  the spec is invalid (or a shot cannot be exported, or its output belongs to another spec)
  2  usage: an unknown option, model, extra or executor; an unreadable `diff` side
  3  a stage failed, the work folder is locked, model files are missing, a download failed
  4  the render is over its --max-gpu-minutes budget
  130  interrupted (Ctrl-C); run the same command again to resume
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from moldbatch import __version__, operations
from moldbatch.errors import MoldbatchError, SpecInvalid, display_path


def _workdir_option(what: str):
    return click.option(
        "--workdir",
        type=click.Path(file_okay=False, path_type=Path),
        help=f"Work folder {what} (default: .moldbatch/ beside the spec).",
    )


def _models_dir_option(help: str):
    return click.option(
        "--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=help
    )


_out_option = click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where shot files go (default: renders/ beside the spec).",
)


def _print_diagnostics(plan, stream=None) -> None:
    for d in plan.diagnostics:
        click.echo(str(d), file=stream or sys.stderr)


def _valid(plan, stream=None):
    """Print a plan's findings; an invalid one ends the command (exit 1, already said)."""
    _print_diagnostics(plan, stream)
    if not plan.valid:
        raise _said(SpecInvalid(plan.errors))
    return plan


def _said(e: MoldbatchError) -> MoldbatchError:
    e.said = True  # its lines are printed already: `main` only sets the exit code
    return e


class _Commands(click.Group):
    """The one place an error becomes an exit code: each MoldbatchError carries its own."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MoldbatchError as e:
            if not getattr(e, "said", False):
                click.echo(f"moldbatch: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:  # click would print "Aborted!" and exit 1
            click.echo("moldbatch: interrupted; run the same command again to resume", err=True)
            sys.exit(130)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moldbatch")
def cli() -> None:
    """Render films with LTX-2 / LTX-2.3 from declarative spec files (YAML or TOML)."""


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
def validate(files: tuple[str, ...], strict: bool) -> None:
    """Check spec files against the models' rules; print every error as file:line:col."""
    plans = [operations.load_plan(f, strict=strict) for f in files]
    for p in plans:
        _print_diagnostics(p, sys.stdout)
    if not all(p.valid for p in plans):
        raise _said(SpecInvalid([d for p in plans for d in p.errors]))


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
@click.option(
    "--stages/--no-stages",
    default=None,
    help="List every stage (default: when they fit one table; a long film is summarised).",
)
def plan(
    file: str,
    as_json: bool,
    strict: bool,
    workdir: Path | None,
    out: Path | None,
    html_path: Path | None,
    stages: bool | None,
) -> None:
    """Dry run: show the shots, clips and stages, which are cached, and what they cost."""
    p = operations.load_plan(file, strict=strict, out=out, workdir=workdir)
    view = operations.dry_run(p, workdir) if p.valid else None
    if as_json:
        click.echo(json.dumps(view.to_json() if view else p.to_json(), indent=2))
    else:
        _print_diagnostics(p)
        if view is not None:
            from moldbatch.views import print_plan

            print_plan(p, view.cached, view.cost, stages)
    if view is None:
        raise _said(SpecInvalid(p.errors))
    if html_path is not None:
        from moldbatch.review.storyboard import write_storyboard

        write_storyboard(p, html_path, view.cached)
        click.echo(f"wrote {display_path(html_path)}", err=True)


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
@_models_dir_option(
    "Read real models' files from this folder (as written by `moldbatch pull "
    "--models-dir`) before the Hugging Face cache (default: $MOLDBATCH_MODELS)."
)
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="torch.compile the transformer once per process (pays off on long films on a GPU; "
    "each new clip shape compiles again).",
)
@click.option(
    "--memory",
    type=click.Choice(["auto", "resident", "sequential", "streamed"]),
    default=None,
    help="Where the models live on the GPU: resident (all at once, fastest), sequential (the "
    "text encoder, then the transformer), streamed (blocks offloaded to host memory); auto "
    "(default, or $MOLDBATCH_MEMORY) takes the fastest that fits the GPU's free memory.",
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
    compile_: bool,
    memory: str | None,
) -> None:
    """Render a film: every stage not already cached, then the shot files and the film."""
    p = operations.load_plan(file, out=out, workdir=workdir)
    _print_diagnostics(p)
    if not p.valid and as_json:
        click.echo(json.dumps(p.to_json(), indent=2))
    try:
        summary = operations.render(
            p,
            workdir=workdir,
            out=out,
            keep_going=keep_going,
            device=device,
            progress=not as_json,
            executor=executor,
            ray_options={"address": address, "workers": workers, "retries": retries}
            if executor == "ray"
            else None,
            max_gpu_minutes=max_gpu_minutes,
            models_dir=models_dir,
            compile=compile_,
            memory=memory,
        )
    except SpecInvalid as e:
        raise _said(e) from None
    except operations.ModelFilesMissing as e:
        if as_json:
            click.echo(json.dumps({"ok": False, "error": str(e)}, indent=2))
        raise
    except MoldbatchError as e:
        summary = getattr(e, "summary", None)
        if as_json and summary is not None:  # what was done and kept, even on failure
            click.echo(json.dumps(summary.to_json(), indent=2))
        raise
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=2))
    sys.exit(0 if summary.ok else 3)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@_workdir_option("of the render")
@click.option("--json", "as_json", is_flag=True)
def status(file: str, workdir: Path | None, as_json: bool) -> None:
    """Show the progress of the last render of a spec."""
    p = _valid(operations.load_plan(file))
    doc = operations.status(p, workdir)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        from moldbatch.views import print_status

        print_status(doc)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_workdir_option("to clean")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
def gc(files: tuple[str, ...], workdir: Path | None, dry_run: bool) -> None:
    """Remove artifacts that no stage of the given specs needs."""
    plans = [operations.load_plan(f) for f in files]
    for p in plans:
        _print_diagnostics(p)
    removed, freed, others = operations.gc(plans, workdir, dry_run=dry_run)
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

    text = operations.export_mold(_valid(operations.load_plan(file)), shot_id, output)
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
    from moldbatch.review.diff import diff_refs, format_markdown, format_text

    d = diff_refs(old, new)
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
@_models_dir_option(
    "Write plain copies under DIR/<org>/<name>/ instead of the Hugging Face cache "
    "(default: $MOLDBATCH_MODELS when set)."
)
@click.option(
    "--dry-run", is_flag=True, help="List the files and which are present; fetch nothing."
)
def pull(model: str, extras: tuple[str, ...], models_dir: Path | None, dry_run: bool) -> None:
    """Download a model's files (resumable), so that `render` can run offline."""
    _, chosen = operations.pull_choices(model, extras)
    if dry_run:
        for state, role, label in operations.pull_listing(model, chosen, models_dir):
            click.echo(f"{state:8}  {role:14}  {label}")
        return
    from moldbatch.weights.pull import pull as do_pull

    do_pull(model, chosen, models_dir, say=lambda line: click.echo(line, err=True))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json: bool) -> None:
    """List the models with their caps and features."""
    from moldbatch.views import print_models

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
    except BrokenPipeError:  # `moldbatch plan … | head`
        sys.exit(0)
    sys.exit(rv if isinstance(rv, int) else 0)
