"""Delivery: finished shot files and the film copied (atomically) from the store to their
output paths. A file already there that moldbatch did not write is kept, renamed aside, and a
file another spec's render wrote is never written over: nothing a user made is lost. Nothing
is written through a symlink: a link at an output path is renamed aside like a file (its
target untouched), and an output folder that became a link since the plan is refused."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from moldbatch.errors import OutputTaken, display_path
from moldbatch.execute.state import StateDB
from moldbatch.execute.store import Artifact
from moldbatch.fsio import atomic_copy, remove_stale_temporaries, sha256_file
from moldbatch.plan.types import TERMINAL_KINDS, Plan, Stage

# what a render writes beside the shots (review/report.py): their temporaries are ours too
PAGES = (".contact.png", ".report.html")


def taken_outputs(plan: Plan, db: StateDB, spec: str) -> list[tuple[Stage, Path, str]]:
    """(stage, its output, the other spec) for each output file that another spec's render
    wrote and would be written over: two specs in one folder with a shot id (or film output)
    in common."""
    taken = []
    for stage in plan.stages:
        if stage.kind not in TERMINAL_KINDS:
            continue
        dst = Path(stage.output)  # its folder resolved by the planner; the name is not followed
        owner = db.delivered_for(dst)
        # a spec that no longer exists (renamed, deleted) has given its outputs up
        if owner and owner != spec and dst.is_file() and Path(owner).is_file():
            taken.append((stage, dst, owner))
    return taken


def collision_fix(stage: Stage) -> str:
    """What to do about an output another spec writes (`--out` moves shots and the film)."""
    what = "give this shot another id" if stage.shot else "give this film another `output`"
    return f"{what} or render with --out DIR"


def check_outputs_are_ours(plan: Plan, db: StateDB, spec: str) -> None:
    """Refuse, before rendering anything, to write over a file that another spec's render
    wrote (OutputTaken, exit 5)."""
    for stage, dst, owner in taken_outputs(plan, db, spec)[:1]:
        what = f"shot '{stage.shot}'" if stage.shot else "the film"
        raise OutputTaken(
            f"{display_path(dst)} ({what}) was rendered by {display_path(Path(owner))}, "
            f"which writes into the same folder; {collision_fix(stage)}; nothing was rendered"
        )


def deliver(
    plan: Plan,
    found: dict[str, Artifact],
    db: StateDB,
    spec: str,
    console: Console,
    errors: list[str],
) -> list[str]:
    """Copy each finished shot and the film to its output path (only complete ones); the
    paths written. A path that cannot be written adds a line to `errors`."""
    paths = []
    outputs = [Path(st.output) for st in plan.stages if st.kind in TERMINAL_KINDS]
    for folder in {p.parent for p in outputs}:
        names = {p.name for p in outputs if p.parent == folder}
        remove_stale_temporaries(folder, lambda n, names=names: n in names or n.endswith(PAGES))
    for stage in plan.stages:
        art = found.get(stage.id)
        if stage.kind not in TERMINAL_KINDS or art is None:
            continue
        src = art.file(art.meta["file"])
        want = art.manifest["files"][art.meta["file"]]["sha256"]
        dst = Path(stage.output)
        try:
            _deliver_one(src, dst, want, db, spec, console)
        except OSError as e:
            errors.append(
                f"cannot write {display_path(dst)}: {e.strerror or e}; the render is kept "
                "in the work folder: fix the path and run the same command again"
            )
            continue
        paths.append(str(dst))
    return paths


def _deliver_one(src: Path, dst: Path, want: str, db: StateDB, spec: str, console: Console) -> None:
    if os.path.realpath(dst.parent) != str(dst.parent):
        raise OSError(errno.ELOOP, "its folder is a symlink: moldbatch never writes through one")
    if dst.is_symlink():
        aside = free_name(dst)
        os.replace(dst, aside)  # the link itself moves; what it points to is not touched
        console.print(
            f"[yellow]![/] {escape(display_path(dst))} was a symlink; kept as "
            f"{escape(display_path(aside))}, and the shot written in its place",
            soft_wrap=True,
        )
    if dst.exists() and not dst.is_file():
        raise IsADirectoryError(21, "a folder is in the way")
    if dst.is_file():
        st, ours = dst.stat(), db.delivered(dst)
        if ours and (ours[1], ours[2]) == (st.st_size, st.st_mtime_ns):
            have = ours[0]  # untouched since we wrote it: no need to read it again
        else:
            have = sha256_file(dst)
        if have == want:
            db.record_delivery(dst, want, spec)
            return
        if not ours or ours[0] != have:
            aside = free_name(dst)
            os.replace(dst, aside)
            console.print(
                f"[yellow]![/] {escape(display_path(dst))} was not written by moldbatch; "
                f"kept as {escape(display_path(aside))}",
                soft_wrap=True,
            )
    atomic_copy(src, dst)
    db.record_delivery(dst, want, spec)


def free_name(path: Path) -> Path:
    """`name.orig.mp4`, or `name.orig-2.mp4`, … : the first that does not exist."""
    n = 1
    while True:
        tag = "orig" if n == 1 else f"orig-{n}"
        candidate = path.with_name(f"{path.stem}.{tag}{path.suffix}")
        if not candidate.exists() and not candidate.is_symlink():
            return candidate
        n += 1
