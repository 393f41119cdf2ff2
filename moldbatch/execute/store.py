"""The content-addressed artifact store: one folder per stage key, complete or absent.

An artifact is written into a temporary folder, its manifest (with a sha256 per file) written
last, and the folder renamed into place: a killed process leaves at most a temporary folder,
never something a later run takes for a finished artifact. A file that no longer matches its
manifest checksum makes the artifact count as missing. A durable artifact (what leaves the
work folder: a shot file, the film) is fsynced before the rename; the intermediates are not
(they can be rendered again, and a power loss that leaves one torn fails its checksum):
at 1216x704x97 the fsync of a clip's frames cost more than the rest of its write
(benchmarks/bench_artifacts.py).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from moldbatch.fsio import fsync_dir, fsync_file, sha256_file
from moldbatch.plan.types import TERMINAL_KINDS

MANIFEST = "manifest.json"


def default_workdir(spec_path: Path) -> Path:
    return spec_path.resolve().parent / ".moldbatch"


@dataclass
class Artifact:
    key: str
    dir: Path
    manifest: dict

    def file(self, name: str) -> Path:
        return self.dir / name

    @property
    def meta(self) -> dict:
        return self.manifest.get("meta", {})

    def tensors(self, name: str, framework: str = "numpy", only: str | None = None) -> dict:
        """A safetensors file of the artifact (numpy arrays or torch tensors); `only`: that
        entry alone, if it has it."""
        from safetensors import safe_open

        with safe_open(str(self.file(name)), framework=framework) as f:
            names = [only] if only is not None else list(f.keys())
            return {n: f.get_tensor(n) for n in names if n in f.keys()}


class Pending:
    """A stage's artifact before its commit: what its handler `put` (lanes.WriteBehind commits it
    meanwhile), read by the next model stages from memory. Arrays are read-only and tensors
    copied, so that no reader changes what is being written."""

    def __init__(self, writer: ArtifactWriter):
        self.key, self.writer = writer.key, writer

    @property
    def meta(self) -> dict:
        return self.writer.meta

    def tensors(self, name: str, framework: str = "numpy", only: str | None = None) -> dict:
        held = self.writer.held[name]
        names = [only] if only is not None else list(held)
        return {n: _unshared(held[n]) for n in names if n in held}


def _unshared(value):
    if hasattr(value, "clone"):  # a torch tensor (small: latents, a stored prompt)
        return value.clone()
    view = value.view()
    view.flags.writeable = False
    return view


class ArtifactWriter:
    """A temporary artifact folder; `commit` publishes it under its key."""

    def __init__(self, store: ArtifactStore, key: str, stage_id: str, durable: bool = True):
        self.store, self.key, self.stage_id = store, key, stage_id
        self.durable = durable
        self.dir = store.tmp / f"{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir(parents=True)
        self.meta: dict = {}
        self.held: dict[str, dict] = {}  # name -> tensors, written as safetensors by commit

    def path(self, name: str) -> Path:
        return self.dir / name

    def put(self, name: str, tensors: dict) -> None:
        """A safetensors file of numpy arrays or torch tensors, written at the commit (on the
        write-behind thread, when the render has one); until then `Pending` reads it."""
        self.held[name] = tensors

    def commit(self) -> Artifact:
        for name, tensors in self.held.items():
            if any(hasattr(t, "clone") for t in tensors.values()):
                from safetensors.torch import save_file
            else:
                from safetensors.numpy import save_file
            save_file(tensors, str(self.path(name)))
        files = {}
        for path in sorted(self.dir.iterdir()):
            if self.durable:
                fsync_file(path)
            files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest = {
            "key": self.key,
            "stage": self.stage_id,
            "created": time.time(),
            "files": files,
            "meta": self.meta,
        }
        with (self.dir / MANIFEST).open("w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            if self.durable:
                os.fsync(f.fileno())
        if self.durable:
            fsync_dir(self.dir)
        final = self.store.dir_of(self.key)
        for link in (self.store.root, final.parent, final):  # never publish through a link
            if link.is_symlink():
                link.unlink()
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # a broken artifact under this key: replace it whole
            trash = self.store.tmp / f"trash-{uuid.uuid4().hex}"
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(self.dir, final)
        if self.durable:
            fsync_dir(final.parent)
        return Artifact(self.key, final, manifest)

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class ArtifactStore:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.root = workdir / "artifacts"
        self.tmp = workdir / "tmp"

    def dir_of(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str, verify: bool = True) -> Artifact | None:
        """The artifact under `key` if it is complete (and, with `verify`, intact)."""
        d = self.dir_of(key)
        if d.is_symlink() or d.parent.is_symlink():  # links (from a checkout) lead anywhere
            return None
        try:
            manifest = json.loads((d / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict) or manifest.get("key") != key:
            return None
        files, meta = manifest.get("files"), manifest.get("meta", {})
        if not isinstance(files, dict) or not isinstance(meta, dict):
            return None
        if "file" in meta and meta["file"] not in files:
            return None
        for name, info in files.items():
            if not isinstance(info, dict) or "/" in name or name.startswith("."):
                return None
            path = d / name
            try:
                if path.is_symlink() or path.stat().st_size != info.get("bytes"):
                    return None
                if verify and sha256_file(path) != info.get("sha256"):
                    return None
            except OSError:
                return None
        return Artifact(key, d, manifest)

    def writer(self, key: str, stage_id: str, durable: bool = True) -> ArtifactWriter:
        return ArtifactWriter(self, key, stage_id, durable)

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [p.name for sub in self.root.iterdir() if sub.is_dir() for p in sub.iterdir()]

    def clean_tmp(self) -> None:
        """Remove what killed runs left half-written (only called under the work-folder lock);
        a link in its place is removed, never followed."""
        if self.tmp.is_symlink():
            self.tmp.unlink()
        elif self.tmp.is_dir():
            shutil.rmtree(self.tmp, ignore_errors=True)


def resolve(plan, store: ArtifactStore, *, verify: bool = True):
    """What a render of `plan` runs: pulled from the outputs, a stage whose artifact is present
    (and, with `verify`, intact) is not run, and nothing upstream of it is looked at.
    Returns (the stages to run, in plan order; stage id -> artifact found on the way)."""
    by_id = {s.id: s for s in plan.stages}
    found: dict[str, Artifact] = {}
    todo: set[str] = set()

    def need(stage) -> None:
        if stage.id in todo or stage.id in found:
            return
        art = store.get(stage.key, verify=verify)
        if art is not None:
            found[stage.id] = art
            return
        todo.add(stage.id)
        for dep in stage.needs:
            need(by_id[dep])

    for stage in plan.stages:
        if stage.kind in TERMINAL_KINDS:
            need(stage)
    return [s for s in plan.stages if s.id in todo], found


def collect_garbage(
    plans, workdir: Path | None, dry_run: bool = False, allow=(), lean: bool = False
):
    """Remove every artifact no stage needs: of `plans`, or of any other spec that rendered
    into this work folder and still exists (work folders are shared by the specs beside
    them). `lean`: of `plans`, keep only the finished shot and film files (export and join
    stages) of each shot that is finished, and everything of one that is not: the raw frames
    and latents of finished shots go, a render of the same specs still renders nothing, the
    clips done of an unfinished shot are kept, and a changed finished shot renders all its
    stages again. Returns (count, bytes, other specs whose artifacts were kept)."""
    import contextlib

    from moldbatch.execute.lock import WorkdirLock
    from moldbatch.plan.planner import plan_file

    workdir = workdir or default_workdir(plans[0].path)
    store = ArtifactStore(workdir)
    keep = {s.key for p in plans for s in p.stages}
    if lean:  # a finished shot keeps its file only; an unfinished one keeps all it has done
        keep = set()
        for p in plans:
            done = {
                s.shot for s in p.stages if s.kind == "export" and store.get(s.key, verify=False)
            }
            keep |= {s.key for s in p.stages if s.kind in TERMINAL_KINDS or s.shot not in done}
    given = {str(p.path.resolve()) for p in plans}
    others = []
    for spec in dict.fromkeys(_specs_rendered_in(workdir) + _specs_beside(workdir)):
        if spec not in given and Path(spec).is_file():
            other = plan_file(Path(spec), workdir=workdir, allow=allow)
            if other.valid:
                keep |= {s.key for s in other.stages}
                others.append(spec)
    removed = freed = 0
    with contextlib.nullcontext() if dry_run else WorkdirLock(workdir):
        for key in store.keys():
            if key in keep:
                continue
            d = store.dir_of(key)
            freed += sum(f.stat().st_size for f in d.iterdir() if f.is_file())
            removed += 1
            if not dry_run:
                shutil.rmtree(d, ignore_errors=True)
        if not dry_run:
            store.clean_tmp()
    return removed, freed, others


def _specs_rendered_in(workdir: Path) -> list[str]:
    """The specs the state database says rendered here; a damaged database stops gc (it
    cannot tell whose artifacts these are) rather than removing another spec's."""
    import sqlite3

    from moldbatch.errors import WorkdirFailed, display_path
    from moldbatch.execute.state import StateDB, is_corrupt

    if not (workdir / "state.sqlite").is_file():
        return []
    try:
        db = StateDB(workdir, readonly=True)
        try:
            return db.specs()
        finally:
            db.close()
    except sqlite3.Error as e:
        if not is_corrupt(e):
            return []
        raise WorkdirFailed(
            f"the state database {display_path(workdir / 'state.sqlite')} is damaged ({e}): "
            "gc cannot tell which specs rendered here, so it removes nothing; a render moves "
            "the database aside and starts a new one"
        ) from None


def _specs_beside(workdir: Path) -> list[str]:
    """The spec files a default work folder (`.moldbatch/`) is shared by: they keep their
    artifacts even when the database forgot them (a damaged one, started again)."""
    if workdir.name != ".moldbatch":
        return []
    folder = workdir.resolve().parent
    return [
        str(p.resolve())
        for pattern in ("*.yaml", "*.yml", "*.toml")
        for p in sorted(folder.glob(pattern))
        if p.is_file()
    ]


def stages_to_run(plan, workdir: Path | None) -> list:
    """The stages a render would run, found as the executor does, without verifying sums."""
    return resolve(plan, ArtifactStore(workdir or default_workdir(plan.path)), verify=False)[0]
