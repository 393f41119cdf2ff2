"""`moldbatch diff OLD NEW`: which stages a spec change adds, removes and re-renders, and why.

Both sides are planned; stages are matched by id. A stage whose key is unchanged is left
alone. A changed one is explained by comparing the two stages' params field by field (file
references by their bytes, as keys do) and naming the stages it needs whose keys changed.
Formatting, comments and the order of keys change nothing, because they change no key.

A side is a file, or a git revision and a path (`HEAD~1:film.yaml`, path from the repository
root, or `HEAD~1:./film.yaml` from the current folder). A revision's text is planned from a
hidden temporary file beside the working-tree copy so that relative asset paths resolve; the
assets themselves are read from that revision (plan/inputs.py `GitReader`), so a change to an
image alone shows. A spec missing from its revision (new in a pull request, or deleted) is a
plan without stages: every stage of the other side is added (or removed).

Light install only: no torch here.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from moldbatch.errors import UsageError, display_path
from moldbatch.plan.types import key_doc, media_needs
from moldbatch.review.cost import estimate, format_seconds

ADDED, REMOVED, CHANGED, SAME = "added", "removed", "changed", "unchanged"


class DiffError(UsageError):
    """A side could not be read or planned (exit 2)."""


@dataclass
class StageChange:
    id: str
    shot: str | None
    kind: str
    change: str  # added | removed | changed | unchanged
    reasons: list[str] = field(default_factory=list)
    key: str | None = None  # the new key (the old one for a removed stage)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "shot": self.shot,
            "kind": self.kind,
            "status": self.change,
            "reasons": self.reasons,
            "key": self.key,
        }


@dataclass
class PlanDiff:
    old: str
    new: str
    stages: list[StageChange]
    gpu_seconds: float = 0.0  # estimated GPU time of what the new plan adds or re-renders

    @property
    def renders(self) -> list[StageChange]:
        return [s for s in self.stages if s.change in (ADDED, CHANGED)]

    @property
    def changed(self) -> bool:
        return bool(self.renders)

    def count(self, change: str) -> int:
        return sum(s.change == change for s in self.stages)

    def by_shot(self) -> dict[str, list[StageChange]]:
        out: dict[str, list[StageChange]] = {}
        for s in self.stages:
            out.setdefault(s.shot or "film", []).append(s)
        return out

    def to_json(self) -> dict:
        shots = {}
        for shot, changes in self.by_shot().items():
            shots[shot] = {
                kind: [c.id for c in changes if c.change == kind]
                for kind in (ADDED, REMOVED, CHANGED)
            }
        return {
            "old": self.old,
            "new": self.new,
            "rerenders": self.changed,
            "counts": {k: self.count(k) for k in (ADDED, REMOVED, CHANGED, SAME)},
            "gpu_seconds": round(self.gpu_seconds, 3),
            "shots": shots,
            "stages": [s.to_json() for s in self.stages],
        }


# --- comparing two plans ----------------------------------------------------------------------
def _fields(params) -> dict:
    """A stage's params as its key sees them (a file by its bytes, not its path), a clip's
    conditions (prompt, seed, image, ...) named as fields of their own."""
    doc = key_doc(params)
    return {**doc.pop("conditions", {}), **doc}


def _reasons(old, new, old_keys: dict[str, str], new_keys: dict[str, str]) -> list[str]:
    reasons = []
    if old.kind != new.kind:
        reasons.append("kind")
    was, now = _fields(old.params), _fields(new.params)
    for name in sorted(set(was) | set(now)):
        if was.get(name) != now.get(name):
            reasons.append(name)
    # a prompt's encode is named by its key: its change is the `prompt` reason above
    old_needs, new_needs = media_needs(old.needs), media_needs(new.needs)
    if set(old_needs) != set(new_needs):
        gone = [n for n in old_needs if n not in new_needs]
        came = [n for n in new_needs if n not in old_needs]
        reasons.append("needs " + ", ".join([f"+{n}" for n in came] + [f"-{n}" for n in gone]))
    else:
        reasons += [f"needs {n}" for n in new_needs if old_keys.get(n) != new_keys.get(n)]
    return reasons or ["key"]


def diff_plans(old, new) -> PlanDiff:
    """Compare two valid plans stage by stage."""
    old_by = {s.id: s for s in old.stages}
    new_by = {s.id: s for s in new.stages}
    old_keys = {s.id: s.key for s in old.stages}
    new_keys = {s.id: s.key for s in new.stages}
    changes: list[StageChange] = []
    for st in new.stages:
        before = old_by.get(st.id)
        if before is None:
            changes.append(StageChange(st.id, st.shot, st.kind, ADDED, [], st.key))
        elif before.key == st.key:
            changes.append(StageChange(st.id, st.shot, st.kind, SAME, [], st.key))
        else:
            why = _reasons(before, st, old_keys, new_keys)
            changes.append(StageChange(st.id, st.shot, st.kind, CHANGED, why, st.key))
    for st in old.stages:
        if st.id not in new_by:
            changes.append(StageChange(st.id, st.shot, st.kind, REMOVED, [], st.key))
    # group by shot in the new plan's order (removed shots after), then the film's own stages
    # (its prompts' encodes and the join) in plan order
    order: dict[str, int] = {}
    for c in changes:
        if c.shot is not None:
            order.setdefault(c.shot, len(order))
    changes.sort(key=lambda c: order.get(c.shot, len(order)))
    cost = estimate(new)
    seconds = cost.seconds_for(c.id for c in changes if c.change in (ADDED, CHANGED))
    return PlanDiff(old.file, new.file, changes, seconds)


# --- reading a side ---------------------------------------------------------------------------
def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True)


@dataclass
class Side:
    """Where to plan one side from: a file on disk, and the reader of the files it names
    (None: the working tree). `absent`: the spec is not in that revision (no stages)."""

    path: Path
    shown: str
    reader: object = None
    absent: bool = False


@contextlib.contextmanager
def spec_file(ref: str, cwd: Path | None = None) -> Iterator[Side]:
    """A path to plan for `ref` (a file, or REV:PATH from git), the name to show and where
    its assets are read."""
    from moldbatch.plan.inputs import GitReader

    cwd = Path(cwd or Path.cwd())
    direct = cwd / ref
    if direct.is_file() or ":" not in ref:
        if not direct.is_file():
            raise DiffError(f"{ref}: no such file")
        yield Side(direct, display_path(direct))
        return
    rev, _, rel = ref.partition(":")
    top = _git(["rev-parse", "--show-toplevel"], cwd)
    if top.returncode != 0:
        raise DiffError(f"{ref}: not a file, and {cwd} is not in a git repository")
    root = Path(top.stdout.decode().strip())
    if _git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd).returncode != 0:
        raise DiffError(f"{ref}: {rev!r} is not a revision of this repository")
    tries = [(rel, root / rel)]
    if not rel.startswith(("./", "../")):
        tries.append((f"./{rel}", cwd / rel))
    text = None
    for spec, where in tries:
        res = _git(["show", f"{rev}:{spec}"], cwd)
        if res.returncode == 0:
            text, target = res.stdout, where.resolve()
            break
    if text is None:  # the revision has no such file: a spec added (or deleted) since
        yield Side(tries[0][1], ref, absent=True)
        return
    folder = target.parent if target.parent.is_dir() else cwd
    tmp = folder / f".moldbatch-diff-{os.getpid()}-{target.name}"
    tmp.write_bytes(text)
    try:
        yield Side(tmp, ref, GitReader(rev, root))
    finally:
        tmp.unlink(missing_ok=True)


def plan_ref(ref: str, cwd: Path | None = None, allow=()):
    """Plan one side; DiffError when it cannot be read or is invalid."""
    from moldbatch.plan.planner import plan_file
    from moldbatch.plan.types import Plan

    with spec_file(ref, cwd) as side:
        if side.absent:
            return Plan(file=side.shown, path=side.path, name=side.path.stem)
        plan = plan_file(side.path, display=side.shown, reader=side.reader, allow=allow)
        if plan.name == side.path.stem and ":" in side.shown:  # no `name:`: the file's
            plan.name = Path(side.shown.partition(":")[2]).stem
    if not plan.valid:
        lines = "\n".join(str(d) for d in plan.errors)
        raise DiffError(f"{side.shown} is not a valid spec:\n{lines}")
    return plan


def diff_refs(old: str, new: str, cwd: Path | None = None, allow=()) -> PlanDiff:
    """`allow`: folders besides each spec's project its paths may reach (--allow-path)."""
    return diff_plans(plan_ref(old, cwd, allow), plan_ref(new, cwd, allow))


# --- showing it -------------------------------------------------------------------------------
_MARK = {ADDED: "+", REMOVED: "-", CHANGED: "~"}
_WORD = {ADDED: "add", REMOVED: "remove", CHANGED: "re-render"}


def _why(c: StageChange, limit: int = 4) -> str:
    if len(c.reasons) <= limit:
        return ", ".join(c.reasons)
    return ", ".join(c.reasons[:limit]) + f" (+{len(c.reasons) - limit} more)"


def _footer(d: PlanDiff) -> str:
    head = (
        f"{d.count(CHANGED)} to re-render, {d.count(ADDED)} to add, "
        f"{d.count(REMOVED)} to remove, {d.count(SAME)} unchanged"
    )
    if d.changed:
        head += f"; estimated GPU time {format_seconds(d.gpu_seconds)}"
    return head


def format_text(d: PlanDiff) -> str:
    lines = [f"{d.old} -> {d.new}"]
    for shot, changes in d.by_shot().items():
        moved = [c for c in changes if c.change != SAME]
        if not moved:
            continue
        lines.append(f"{shot}:")
        width = max(len(c.id) for c in moved)
        for c in moved:
            why = f"  {_why(c)}" if c.reasons else ""
            lines.append(f"  {_MARK[c.change]} {c.id:<{width}}  {_WORD[c.change]:<9}{why}")
    if not d.changed and not d.count(REMOVED):
        lines.append("nothing changes")
    lines.append(_footer(d))
    return "\n".join(lines)


def format_markdown(d: PlanDiff) -> str:
    """For a CI job summary or a pull-request comment."""
    lines = [f"### moldbatch diff `{d.old}` → `{d.new}`", ""]
    moved = [c for c in d.stages if c.change != SAME]
    if moved:
        lines += ["| shot | stage | change | reason |", "|---|---|---|---|"]
        for c in moved:
            why = _why(c, 6).replace("|", "\\|")
            lines.append(f"| {c.shot or 'film'} | `{c.id}` | {_WORD[c.change]} | {why} |")
        lines.append("")
    else:
        lines += ["Nothing re-renders.", ""]
    lines.append(_footer(d))
    return "\n".join(lines) + "\n"
