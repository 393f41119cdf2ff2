"""Rendering on a Ray cluster, the workers' side: an actor that holds its loaded runtimes for
its life, runs one stage's handler (the local executor's) into a scratch store and returns
the files' bytes through Ray's object store; the driver (ray_driver.py) commits them.

`import ray` happens only inside the actor's methods, which run in Ray's worker processes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import traceback
from collections import OrderedDict
from pathlib import Path

from moldbatch.errors import MoldbatchError, one_line
from moldbatch.execute.context import StageContext
from moldbatch.execute.handlers import HANDLERS
from moldbatch.execute.store import Artifact, ArtifactStore
from moldbatch.fsio import sha256_file
from moldbatch.plan.types import FileRef, Stage, file_refs, with_paths

KEEP = 4  # artifacts a worker keeps for the next stages of its shot


def artifact_payload(art: Artifact) -> dict:
    """A committed artifact as a worker returns one: its files' bytes and its meta."""
    return {
        "files": {name: art.file(name).read_bytes() for name in art.manifest["files"]},
        "meta": art.meta,
    }


class Events:
    """Workers' step events for the driver's progress bars (a Ray actor, num_cpus=0)."""

    def __init__(self):
        self.items: list = []

    def push(self, stage_id: str, i: int, n: int) -> None:
        self.items.append((stage_id, i, n))

    def drain(self) -> list:
        items, self.items = self.items, []
        return items


class StageWorker:
    """A Ray actor: loaded runtimes for its life, and a small store of what it rendered.

    `run_stage` runs one stage's handler (the local executor's) into its scratch store and
    returns the files' bytes; a handler's exception comes back as {"error", "traceback"}, an
    input it could not fetch as {"lost"} (the driver retries both like a dead worker's stage).
    """

    def __init__(self, device: str | None, compile: bool = False, memory: str = "resident"):
        if device == "cpu":
            # Ray caps a worker's threads at its CPU share; results on CPU depend on the thread
            # count, so use what a local render on this machine uses, and match it bit for bit.
            # Several such workers share the cores: idle OpenMP threads must sleep, not spin.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            import torch

            torch.set_num_threads(len(os.sched_getaffinity(0)))
        clean_stale_scratch()
        self.scratch = Path(tempfile.mkdtemp(prefix=f"moldbatch-worker-{os.getpid()}-"))
        self.store = ArtifactStore(self.scratch)
        self.kept: OrderedDict[str, Artifact] = OrderedDict()
        self.files: dict[str, Path] = {}
        self.ctx = StageContext(
            device=device, inputs={}, runtimes={}, compile=compile, memory=memory
        )

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def run_stage(self, stage: Stage, inputs: dict, files: dict, events=None) -> dict:
        t0 = time.perf_counter()
        node = _node()
        try:
            self.ctx.inputs = {sid: self._input(key, box) for sid, (key, box) in inputs.items()}
            stage = self._localize(stage, files)
        except Exception as e:  # noqa: BLE001 - an input lost with its node: the driver resends
            return {"lost": one_line(e), "pid": os.getpid(), "node": node}
        self.ctx.on_step = (
            (lambda i, n: events.push.remote(stage.id, i, n)) if events is not None else None
        )
        out = self.store.writer(stage.key, stage.id, durable=False)  # a scratch copy
        try:
            HANDLERS[stage.kind](stage, self.ctx, out)
            art = out.commit()
        except (Exception, MoldbatchError) as e:  # noqa: BLE001 - reported to the driver
            out.discard()
            from moldbatch.errors import RuntimeLoadError

            # model files are per machine: say which one lacks them (the driver checked its own)
            where = f" (on worker node {node})" if isinstance(e, RuntimeLoadError) else ""
            return {
                "error": one_line(e) + where,
                "traceback": f"on worker pid {os.getpid()} ({node}):\n"
                + "".join(traceback.format_exception(e)),
                "pid": os.getpid(),
                "node": node,
            }
        finally:
            self.ctx.on_step = None
        self._keep(art)
        return {
            **artifact_payload(art),
            "seconds": time.perf_counter() - t0,
            "pid": os.getpid(),
            "node": node,
        }

    def _input(self, key: str, box: list) -> Artifact:
        """An input artifact: the one this worker rendered, or the driver's copy."""
        if key in self.kept:
            self.kept.move_to_end(key)
            return self.kept[key]
        import ray

        payload = ray.get(box[0])
        out = self.store.writer(key, "input")
        for name, data in payload["files"].items():
            out.path(name).write_bytes(data)
        out.meta.update(payload["meta"])
        art = out.commit()
        self._keep(art)
        return art

    def _keep(self, art: Artifact) -> None:
        self.kept[art.key] = art
        self.kept.move_to_end(art.key)
        while len(self.kept) > KEEP:
            _, old = self.kept.popitem(last=False)
            shutil.rmtree(old.dir, ignore_errors=True)

    def _localize(self, stage: Stage, files: dict) -> Stage:
        """The stage with each referenced file at a path on this machine: the planner's own path
        when it is there with the same checksum, else a copy fetched from the driver."""
        if not files:
            return stage
        local = {ref.sha256: self._file(ref, files[ref.sha256]) for ref in file_refs(stage.params)}
        params = with_paths(stage.params, lambda ref: str(local[ref.sha256]))
        return Stage(stage.id, stage.kind, stage.shot, stage.needs, stage.key, params, stage.output)

    def _file(self, ref: FileRef, box: list) -> Path:
        sha = ref.sha256
        if sha in self.files:
            return self.files[sha]
        mine = Path(ref.path)
        if not (mine.is_file() and sha256_file(mine) == sha):
            import ray

            mine = self.scratch / "inputs" / sha / mine.name
            mine.parent.mkdir(parents=True, exist_ok=True)
            mine.write_bytes(ray.get(box[0]))
        self.files[sha] = mine
        return mine


def _node() -> str:
    import ray

    try:
        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - only for messages
        return "?"


def clean_stale_scratch() -> None:
    """Remove scratch folders of workers that were killed (SIGKILL leaves them behind)."""
    for d in Path(tempfile.gettempdir()).glob("moldbatch-worker-*-*"):
        try:
            pid = int(d.name.split("-")[2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, PermissionError, IndexError):
            continue
