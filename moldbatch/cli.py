"""The command line: parse, call one function, print, set the exit code. Nothing else here.

Exit codes: 0 done, 1 spec invalid, 2 usage error, 3 a stage failed (or the work folder is
locked by another render).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from moldbatch import __version__
from moldbatch.errors import MoldbatchError, display_path


def _plan(file: str, strict: bool = False, out: Path | None = None):
    from moldbatch.plan.planner import plan_file

    return plan_file(Path(file), display=display_path(Path(file)), strict=strict, out_dir=out)


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
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Work folder whose cache to compare against (default: .moldbatch/ beside the spec).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where shot files go (default: renders/ beside the spec).",
)
def plan(file: str, as_json: bool, strict: bool, workdir: Path | None, out: Path | None) -> None:
    """Dry run: show the shots, clips and stages, and which stages are cached."""
    from moldbatch.report import cache_status, print_plan

    p = _plan(file, strict, out)
    cached = cache_status(p, workdir) if p.valid else {}
    if as_json:
        doc = p.to_json()
        for stage in doc["stages"]:
            stage["cached"] = cached.get(stage["id"], False)
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_diagnostics(p)
        if p.valid:
            print_plan(p, cached)
    sys.exit(0 if p.valid else 1)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Work folder for artifacts and state (default: .moldbatch/ beside the spec).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where shot files go (default: renders/ beside the spec).",
)
@click.option(
    "--keep-going", "-k", is_flag=True, help="After a failed stage, render the other shots."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("--device", default=None, help="Torch device (default: cuda if present, else cpu).")
def render(
    file: str,
    workdir: Path | None,
    out: Path | None,
    keep_going: bool,
    as_json: bool,
    device: str | None,
) -> None:
    """Render a film: every stage not already cached, then the shot files and the film."""
    p = _plan(file, False, out)
    _print_diagnostics(p)
    if not p.valid:
        if as_json:
            click.echo(json.dumps(p.to_json(), indent=2))
        sys.exit(1)
    from moldbatch.execute.executor import render_plan

    try:
        summary = render_plan(
            p, workdir=workdir, keep_going=keep_going, device=device, progress=not as_json
        )
    except MoldbatchError as e:
        click.echo(f"moldbatch: {e}", err=True)
        sys.exit(e.exit_code)
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=2))
    sys.exit(0 if summary.ok else 3)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path))
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
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path))
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
    removed, freed = collect_garbage(plans, workdir, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {removed} artifacts ({freed / 1e6:.1f} MB)")


@cli.command()
def schema() -> None:
    """Print the JSON Schema of the spec language."""
    from moldbatch.spec.schema import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json: bool) -> None:
    """List the models with their caps and features."""
    from moldbatch.report import print_models

    print_models(as_json)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("moldbatch: interrupted; run the same command again to resume", err=True)
        sys.exit(130)
