"""The command line: parse, call one function of operations.py, print, exit. Nothing else here.

Exit codes (errors.py: each MoldbatchError carries its own, mapped once, in `_Commands.invoke`):
  0  done (`diff`: nothing re-renders)
  1  the spec is invalid, or a shot cannot be exported (`diff`: something re-renders)
  2  usage: an unknown option, model, extra or executor; an unreadable or invalid `diff` side
  3  a stage failed, the work folder is locked, full or unwritable, model files or the GPU
     runtime are missing,
     a download failed
  4  the render is over its --max-gpu-minutes budget
  5  an output collision: another spec (of the same folder) writes one of the output files
  6  a file is missing: the spec file, or an image, video, audio or LoRA file it names
  130  interrupted (Ctrl-C, or SIGTERM from a cancelled job); run the same command again
"""

from __future__ import annotations

import inspect
import json
import signal
import sys
from pathlib import Path

import click

from moldbatch import __version__, operations
from moldbatch.errors import Interrupted, MoldbatchError, SpecInvalid, display_path, printable

# the lines each command's --help ends with: `moldbatch X --help` says what X exits with
EXITS = {
    "validate": "0 valid; 1 invalid; 5 an output another spec of the folder writes; 6 a file "
    "is missing",
    "plan": "0 valid; 1 invalid; 5 an output collision; 6 a file is missing",
    "render": "0 done; 1 invalid; 3 a stage failed (the others are kept), the work folder is "
    "locked, model files or the GPU runtime are missing; 4 over --max-gpu-minutes; 5 an output "
    "collision; 6 a file is missing; 130 interrupted (run it again to resume)",
    "status": "0; 1 invalid; 6 a file is missing",
    "gc": "0; 1 invalid; 3 the work folder is in use; 6 a file is missing",
    "export": "0; 1 invalid, or the shot cannot be written as a mold script; 2 no --shot",
    "diff": "0 nothing re-renders; 1 something does; 2 a side cannot be read or is invalid",
    "pull": "0; 1 an invalid --for spec; 2 an unknown model or extra, or neither MODEL nor "
    "--for; 3 a download failed; 6 a --for spec is missing",
    "schema": "0",
    "models": "0",
}


def _help(name: str, *examples: str):
    """Ends a command's --help with examples and its exit codes (put it under the options)."""

    def add(f):
        lines = "\n".join(f"  {e}" for e in examples)
        f.__doc__ = (
            f"{inspect.cleandoc(f.__doc__)}\n\n\b\nExamples:\n{lines}\n\nExit codes: {EXITS[name]}."
        )
        return f

    return add


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


_allow_option = click.option(
    "--allow-path",
    "allow",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Let the spec name files in DIR besides its project (the git work tree holding it, "
    "else its folder); repeatable; also $MOLDBATCH_ALLOW_PATHS.",
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
        raise _said(SpecInvalid.of(plan.errors))
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
                lines = str(e).splitlines() or [""]
                click.echo(
                    "\n".join(printable(line) for line in [f"moldbatch: {lines[0]}", *lines[1:]]),
                    err=True,
                )
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
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Check the specs as `render --out DIR` renders them: their outputs go to DIR.",
)
@_help(
    "validate",
    "moldbatch validate films/*.yaml",
    "moldbatch validate --strict --out renders/opening films/opening.yaml",
)
@_allow_option
def validate(
    files: tuple[str, ...], strict: bool, out: Path | None, allow: tuple[Path, ...]
) -> None:
    """Check spec files against the models' rules; print every error as file:line:col.

    Also checks what `render` would refuse later: every file a spec names is there and
    decodes, no two of the specs write the same output file, and none writes over what
    another spec rendered into the same work folder."""
    plans = operations.load_plans(files, strict=strict, out=out, allow=allow)
    for p in plans:
        _print_diagnostics(p, sys.stdout)
    if not all(p.valid for p in plans):
        raise _said(SpecInvalid.of([d for p in plans for d in p.errors]))


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
@_allow_option
@_help(
    "plan",
    "moldbatch plan film.yaml",
    "moldbatch plan film.yaml --json | jq '.counts'",
    "moldbatch plan film.yaml --html storyboard.html",
)
def plan(
    file: str,
    as_json: bool,
    strict: bool,
    workdir: Path | None,
    out: Path | None,
    html_path: Path | None,
    stages: bool | None,
    allow: tuple[Path, ...],
) -> None:
    """Dry run: show the shots, clips and stages, which are cached, and what they cost."""
    (p,) = operations.load_plans([file], strict=strict, out=out, workdir=workdir, allow=allow)
    view = operations.dry_run(p, workdir) if p.valid else None
    if as_json:
        click.echo(json.dumps(view.to_json() if view else p.to_json(), indent=2))
    else:
        _print_diagnostics(p)
        if view is not None:
            from moldbatch.views import print_plan

            print_plan(p, view.cached, view.cost, stages)
    if view is None:
        raise _said(SpecInvalid.of(p.errors))
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
@_allow_option
@_help(
    "render",
    "moldbatch render film.yaml",
    "moldbatch render film.yaml --out renders/film --max-gpu-minutes 60 --json > result.json",
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
    allow: tuple[Path, ...],
    memory: str | None,
) -> None:
    """Render a film: every stage not already cached, then the shot files and the film.

    In a terminal it shows progress bars; elsewhere (a CI log, a pipe) one line per stage on
    stderr as it happens. With --json, stdout holds one JSON document however the render
    ends (its `ok`, `exit_code` and `reason`, each stage's status, the shot files and the
    report), and the per-stage lines still go to stderr."""
    p = operations.load_plan(file, out=out, workdir=workdir, allow=allow)
    _print_diagnostics(p)
    try:
        summary = operations.render(
            p,
            workdir=workdir,
            out=out,
            keep_going=keep_going,
            device=device,
            progress=not as_json,
            log_lines=as_json,
            executor=executor,
            ray_options={"address": address, "workers": workers, "retries": retries}
            if executor == "ray"
            else None,
            max_gpu_minutes=max_gpu_minutes,
            models_dir=models_dir,
            compile=compile_,
            memory=memory,
        )
    except (MoldbatchError, KeyboardInterrupt) as e:
        if isinstance(e, KeyboardInterrupt):
            e = Interrupted("interrupted; run the same command again to resume")
        if as_json:  # the same document as a success: what was done and kept, and why not
            doc = operations.render_result(p, error=e, workdir=workdir)
            click.echo(json.dumps(doc, indent=2))
        raise _said(e) if isinstance(e, SpecInvalid) else e from None
    doc = operations.render_result(p, summary=summary)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    sys.exit(doc["exit_code"])


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@_workdir_option("of the render")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@_allow_option
@_help("status", "moldbatch status film.yaml", "moldbatch status film.yaml --json")
def status(file: str, workdir: Path | None, as_json: bool, allow: tuple[Path, ...]) -> None:
    """Show the progress of the last render of a spec."""
    p = _valid(operations.load_plan(file, workdir=workdir, allow=allow))
    doc = operations.status(p, workdir)
    if doc.get("warning"):
        click.echo(f"moldbatch: warning: {printable(doc['warning'])}", err=True)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        from moldbatch.views import print_status

        print_status(doc)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_workdir_option("to clean")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option(
    "--lean",
    is_flag=True,
    help="Keep only the finished shot and film files of these specs, not their raw frames "
    "and latents: the same specs still render nothing; a changed shot renders all its "
    "stages again (for a CI cache).",
)
@_allow_option
@_help(
    "gc",
    "moldbatch gc films/*.yaml --dry-run",
    "moldbatch gc films/opening.yaml --workdir .moldbatch-work/opening --lean",
)
def gc(
    files: tuple[str, ...],
    workdir: Path | None,
    dry_run: bool,
    lean: bool,
    allow: tuple[Path, ...],
) -> None:
    """Remove artifacts that no stage of the given specs needs."""
    plans = [operations.load_plan(f, workdir=workdir, allow=allow) for f in files]
    for p in plans:
        _print_diagnostics(p)
    removed, freed, others = operations.gc(plans, workdir, dry_run=dry_run, lean=lean, allow=allow)
    verb = "would remove" if dry_run else "removed"
    kept = (
        f"; kept what {len(others)} other spec(s) sharing this work folder need" if others else ""
    )
    click.echo(f"{verb} {removed} artifacts ({freed / 1e6:.1f} MB){kept}")


@cli.group()
@_help("export", "moldbatch export mold film.yaml --shot opening -o opening.toml")
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
@_allow_option
@_help("export", "moldbatch export mold film.yaml --shot opening -o opening.toml")
def export_mold(
    file: str, shot_id: str | None, output: Path | None, allow: tuple[Path, ...]
) -> None:
    """Write a shot as a mold.chain.v1 script, or say which field mold cannot express."""
    from moldbatch.fsio import atomic_write

    plan = _valid(operations.load_plan(file, allow=allow))
    text = operations.export_mold(plan, shot_id, output)
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
@_allow_option
@_help(
    "diff",
    "moldbatch diff HEAD~1:film.yaml film.yaml",
    'moldbatch diff --markdown "origin/main:films/opening.yaml" films/opening.yaml',
)
def diff(old: str, new: str, as_json: bool, markdown: bool, allow: tuple[Path, ...]) -> None:
    """What a spec change adds, removes and re-renders, per shot, and why.

    OLD and NEW are spec files or git revisions such as HEAD~1:film.yaml; a revision's side
    is planned with the files (images, audio, ...) of that revision. A side missing from its
    revision (a spec new in a pull request) has no stages: all are added."""
    from moldbatch.review.diff import diff_refs, format_markdown, format_text

    d = diff_refs(old, new, allow=allow)
    if as_json:
        click.echo(json.dumps(d.to_json(), indent=2))
    elif markdown:
        click.echo(format_markdown(d), nl=False)
    else:
        click.echo(format_text(d))
    sys.exit(1 if d.changed else 0)


@cli.command()
@_help("schema", "moldbatch schema > moldbatch.schema.json")
def schema() -> None:
    """Print the JSON Schema of the spec language."""
    from moldbatch.spec.schema import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@cli.command()
@click.argument("model", required=False)
@click.option(
    "--with",
    "extras",
    multiple=True,
    metavar="LIST",
    help="Extras, comma-separated: spatial-x2, spatial-x1.5, temporal-x2, distilled-lora, "
    "camera:<preset>, camera:all, or all.",
)
@click.option(
    "--for",
    "specs",
    multiple=True,
    type=click.Path(dir_okay=False),
    metavar="SPEC",
    help="Instead of MODEL: every model and extra these specs' stages need (repeatable).",
)
@_models_dir_option(
    "Write plain copies under DIR/<org>/<name>/ instead of the Hugging Face cache "
    "(default: $MOLDBATCH_MODELS when set)."
)
@click.option(
    "--dry-run", is_flag=True, help="List the files and which are present; fetch nothing."
)
@_help(
    "pull",
    "moldbatch pull ltx-2-19b-distilled:fp8 --with spatial-x2",
    "moldbatch pull --for films/opening.yaml --for films/finale.yaml",
    "moldbatch pull ltx-2-19b-distilled:fp8 --models-dir /models --dry-run",
)
def pull(
    model: str | None,
    extras: tuple[str, ...],
    specs: tuple[str, ...],
    models_dir: Path | None,
    dry_run: bool,
) -> None:
    """Download a model's files (resumable), so that `render` can run offline. Gated
    repositories read the token of `huggingface-cli login`, or $HF_TOKEN."""
    targets = operations.pull_targets(model, extras, specs)
    if not targets:
        click.echo("nothing to pull: the specs use built-in models only", err=True)
    for name, chosen in targets:
        if dry_run:
            for state, role, label in operations.pull_listing(name, chosen, models_dir):
                click.echo(f"{state:8}  {role:14}  {label}")
            continue
        from moldbatch.weights.pull import pull as do_pull

        do_pull(name, chosen, models_dir, say=lambda line: click.echo(line, err=True))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON array on stdout.")
@_help("models", "moldbatch models", "moldbatch models --json")
def models(as_json: bool) -> None:
    """List the models with their caps and features."""
    from moldbatch.views import print_models

    print_models(as_json)


def _terminated(signum, frame):
    """SIGTERM (a cancelled or timed-out CI job) stops as Ctrl-C does: the stages done stay
    cached and logged, exit 130."""
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminated)
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
