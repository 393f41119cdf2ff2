"""The render entry: one function that owns the lock on the work folder, picks the way the
stages run (in this process, or on a Ray cluster's workers) and hands it to the render session
(session.py), which keeps the books. A crash, a kill or an edit costs only the stages whose
keys it touched."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from pathlib import Path

from moldbatch.errors import UsageError, WorkdirFailed, display_path
from moldbatch.execute.lanes import run_in_lanes, run_in_order
from moldbatch.execute.lock import WorkdirLock
from moldbatch.execute.session import RenderSession, Summary, WorkdirGone
from moldbatch.execute.store import default_workdir
from moldbatch.plan.types import Plan

EXECUTORS = ("local", "ray")
# MOLDBATCH_LANES=1 runs every stage on one thread, in plan order (the same bytes, slower)
LANES_ENV = "MOLDBATCH_LANES"


def render_plan(
    plan: Plan,
    *,
    workdir: Path | None = None,
    keep_going: bool = False,
    device: str | None = None,
    progress: bool = True,
    runtimes: dict | None = None,
    executor: str = "local",
    ray_options: dict | None = None,
    compile: bool = False,
    log_lines: bool = False,
    estimates: dict[str, float] | None = None,
    memory: str | None = None,
) -> Summary:
    """Render every output of a valid plan. Raises StageFailed (after recording it) when a stage
    fails and `keep_going` is off; with it, returns a Summary whose `ok` is False.

    `executor="ray"` spreads the shots over a Ray cluster's workers (ray_driver.py);
    `ray_options`: address, workers, retries, timings (see `ray_driver.on_ray`). `compile`:
    torch.compile each runtime's transformer once per process (each worker's on Ray).
    `log_lines`, `estimates`: see RenderSession. `memory`: the memory tier
    (runtime/memory.py), "auto" (the default, or MOLDBATCH_MEMORY) picking the fastest that
    fits the GPU; a film that fits none is refused here."""
    if executor not in EXECUTORS:
        raise UsageError(f"unknown executor {executor!r}: {' or '.join(EXECUTORS)}")
    workdir = (workdir or default_workdir(plan.path)).resolve()
    tier = _tier(plan, memory, device, workdir)
    with _locked(workdir), _disk_errors(workdir):
        session = RenderSession(
            plan,
            workdir,
            keep_going,
            device,
            progress,
            runtimes,
            compile=compile,
            log_lines=log_lines,
            estimates=estimates,
            memory=tier,
        )
        if executor == "local":
            serial = os.environ.get(LANES_ENV) == "1"
            return session.run(run_in_order if serial else run_in_lanes)
        from moldbatch.execute.ray_driver import on_ray

        with on_ray(**(ray_options or {})) as run_stages:
            return session.run(run_stages)


def _tier(plan: Plan, memory: str | None, device: str | None, workdir: Path) -> str:
    """The memory tier of this render (runtime/memory.choose_tier); a render with no model
    stage to run (a cached film) needs none, nor torch."""
    from moldbatch.execute.store import stages_to_run
    from moldbatch.models import memory_needs
    from moldbatch.plan.types import RUNTIME_KINDS

    if not any(s.kind in RUNTIME_KINDS for s in stages_to_run(plan, workdir)):
        return memory if memory not in (None, "auto") else "resident"
    from moldbatch.runtime.memory import choose_tier

    return choose_tier(memory, memory_needs(plan.stages), device)


@contextlib.contextmanager
def _disk_errors(workdir: Path):
    """A work folder that fails under the render (full, deleted, read-only, its database
    unwritable) ends it with one line, exit 3; what was committed is kept."""
    try:
        yield
    except (OSError, sqlite3.Error) as e:
        why = getattr(e, "strerror", None) or str(e)
        deleted = isinstance(e, WorkdirGone) or not workdir.is_dir()
        gone = " (it was deleted during the render)" if deleted else ""
        with contextlib.suppress(OSError):
            if "full" not in why and shutil.disk_usage(workdir).free < 1 << 20:
                why += " (its disk is full)"  # what SQLite says then is often "disk I/O error"
        raise WorkdirFailed(
            f"cannot write the work folder {display_path(workdir)}{gone}: {why}; the stages "
            "committed before are kept: free space or fix the folder, then run the same "
            "command again to resume"
        ) from None


@contextlib.contextmanager
def _locked(workdir: Path):
    try:
        lock = WorkdirLock(workdir).__enter__()
    except OSError as e:
        raise WorkdirFailed(
            f"cannot use the work folder {display_path(workdir)}: {e.strerror or e}; "
            "pass --workdir with a folder you can write"
        ) from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)
