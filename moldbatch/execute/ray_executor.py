"""The Ray executor: one film's shots spread over every GPU (or CPU worker) of a Ray cluster.

Ray does the scheduling, the transport and the restarts; this module only decides what runs
where:

- one actor per GPU (`num_gpus=1`; CPU actors for films on the tiny model) holds its loaded
  runtimes for its whole life, so weights load once per worker, not per shot;
- the shots' worker stages (clips and upscales) are handed out shot by shot, longest shot
  first; a shot's stages run in order on one worker, which keeps the latents of what it
  rendered, so a chain's next clip needs no transfer;
- the stage handlers are the local executor's (stages.HANDLERS): a worker runs one into a
  scratch folder and returns the files' bytes through Ray's object store; the driver, which
  alone owns the artifact store and the state database, commits them with the same writer,
  keys and manifests as a local render. A cluster render therefore resumes locally and the
  other way round, and workers need no shared file system (input files referenced by the plan
  travel through the object store too, only when a worker does not have them);
- stitch, export and join are cheap and need no GPU: the driver runs them itself, with the
  local executor's code, as soon as their inputs are committed;
- a worker that dies (killed, out of memory, its node lost) loses only the stage it was
  running: Ray restarts the actor (`max_restarts=-1`) and the stage is sent again, up to
  `retries` more times; then it fails like any failed stage (and, without keep-going, the
  run stops). Ctrl-C kills the workers and leaves the store as a local interrupt does.

`import ray` happens only in here, and only when a Ray render starts.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

from moldbatch.errors import MoldbatchError
from moldbatch.execute.executor import Executor, Summary, _Bars, _one_line
from moldbatch.execute.lock import WorkdirLock
from moldbatch.execute.store import Artifact, ArtifactStore, default_workdir
from moldbatch.fsio import sha256_file
from moldbatch.plan.model import Plan, Stage

log = logging.getLogger("moldbatch")

WORKER_KINDS = ("clip", "upscale")  # the stages that need a model; the rest run on the driver
KEEP = 4  # artifacts a worker keeps for the next stages of its shot
WAIT = 0.1  # seconds between looks at the workers' progress events


class RayUnavailable(MoldbatchError):
    exit_code = 2


class RayClusterError(MoldbatchError):
    exit_code = 3


class RemoteStageError(MoldbatchError):
    """A stage's handler raised on a worker: its one-line message, then the worker's traceback
    (so the failure log has the real one)."""


class WorkerLost(MoldbatchError):
    """The worker died under the stage more often than `retries` allows."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--executor ray needs Ray: pip install 'moldbatch[ray]'") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None):
    """Connect to `address` (auto, host:port or ray://host:10001), or start a local Ray
    instance; reuse the session when the process already has one (and leave it running)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(include_dashboard=False, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a local instance"
        raise RayClusterError(f"cannot start or reach Ray at {where}: {e}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def render_plan_ray(
    plan: Plan,
    *,
    workdir: Path | None = None,
    keep_going: bool = False,
    device: str | None = None,
    progress: bool = True,
    address: str | None = None,
    workers: int | None = None,
    retries: int = 2,
    timings: list | None = None,
) -> Summary:
    """render_plan on a Ray cluster; same Summary, same exceptions, same store and database.

    `workers`: how many actors (default: one per GPU of the cluster, or one per CPU for films on
    the tiny model; never more than the shots to render). `retries`: how many times a stage is
    sent again after its worker died. `timings`, when given, receives one dict per worker stage
    (wall seconds from dispatch to commit, seconds inside the worker, attempts)."""
    workdir = (workdir or default_workdir(plan.path)).resolve()
    # Ray's own messages (a worker died, ...) go to stderr: stdout stays for --json
    with WorkdirLock(workdir), contextlib.redirect_stdout(sys.stderr), ray_session(address):
        ex = RayExecutor(plan, workdir, keep_going, device, progress, workers, retries)
        try:
            return ex.run()
        finally:
            if timings is not None:
                timings.extend(ex.timings)


class RayExecutor(Executor):
    def __init__(self, plan, workdir, keep_going, device, progress, workers, retries):
        super().__init__(plan, workdir, keep_going, device, progress, None)
        self.workers, self.retries = workers, max(0, retries)
        self.timings: list[dict] = []

    def _progress(self, todo):
        return _RayBars(self.console, todo, self.ctx, enabled=self.show)

    def _run_todo(self, todo, found, outcomes, db, run_id, bar, summary) -> str:
        run = _Run(self, todo, found, outcomes, db, run_id, bar, summary)
        try:
            return run.go()
        finally:
            run.close()


def wants_gpu(stages: list[Stage], device: str | None) -> bool:
    from moldbatch.models import MODELS

    if device:
        return device.startswith("cuda")
    return any(MODELS[s.params["model"]].family != "tiny" for s in stages)


def shot_cost(stages: list[Stage]) -> float:
    """Rough compute of a shot's worker stages: pixels x frames x steps (upscales as 2 steps)."""
    cost = 0.0
    for s in stages:
        p = s.params
        cost += p["width"] * p["height"] * p.get("frames", 1) * p.get("steps", 2)
    return cost


@dataclass
class _Slot:
    index: int
    actor: object
    queue: deque = field(default_factory=deque)  # the rest of its current shot
    busy: bool = False
    pid: int | None = None


@dataclass
class _Task:
    slot: _Slot
    stage: Stage
    attempt: int
    started: float


class _Run:
    """One Ray render's dispatch loop (lives for one RayExecutor.run)."""

    def __init__(self, ex: RayExecutor, todo, found, outcomes, db, run_id, bar, summary):
        self.ray = import_ray()
        self.ex, self.found, self.outcomes = ex, found, outcomes
        self.db, self.run_id, self.bar, self.summary = db, run_id, bar, summary
        self.blocked: set[str] = set()
        self.status = "done"
        self.stop = False
        self.driver_todo = [s for s in todo if s.kind not in WORKER_KINDS]
        shots: dict[str, list[Stage]] = {}
        for s in todo:
            if s.kind in WORKER_KINDS:
                shots.setdefault(s.shot, []).append(s)
        self.shots = deque(sorted(shots.values(), key=shot_cost, reverse=True))
        self.worker_todo = [s for group in self.shots for s in group]
        # results of this run still needed by a later worker stage: id -> ObjectRef
        self.live: dict[str, object] = {}
        self.consumers: dict[str, int] = {}
        for s in self.worker_todo:
            for n in s.needs:
                self.consumers[n] = self.consumers.get(n, 0) + 1
        self.file_refs: dict[str, object] = {}
        self.inflight: dict[object, _Task] = {}
        self.slots: list[_Slot] = []
        self.events = None

    # --- workers ----------------------------------------------------------------------
    def _start_workers(self) -> None:
        if not self.shots:
            return
        ray = self.ray
        gpu = wants_gpu(self.worker_todo, self.ex.ctx.device)
        resources = ray.cluster_resources()
        capacity = int(resources.get("GPU" if gpu else "CPU", 0))
        if capacity < 1:
            raise RayClusterError(
                "the Ray cluster has no GPUs: start its workers on GPU machines "
                "(`ray start --address HEAD:6379` where `nvidia-smi` works)"
                if gpu
                else "the Ray cluster has no CPUs to run workers on"
            )
        n = min(self.ex.workers or capacity, capacity, len(self.shots))
        device = self.ex.ctx.device or (None if gpu else "cpu")
        if self.ex.show:
            self.events = ray.remote(num_cpus=0)(_Events).remote()
        token = uuid.uuid4().hex[:8]
        actor = ray.remote(StageWorker)
        for i in range(n):
            handle = actor.options(
                name=f"moldbatch-worker-{token}-{i}",
                num_cpus=1,
                num_gpus=1 if gpu else 0,
                max_restarts=-1,  # Ray brings a dead worker back; we count the retries
                max_task_retries=0,
            ).remote(device)
            self.slots.append(_Slot(i, handle))
        log.info("ray: %d %s workers for %d shots", n, "GPU" if gpu else "CPU", len(self.shots))

    def close(self) -> None:
        """Stop the workers: at the end of the run, on a failure without keep-going, on Ctrl-C."""
        ray = self.ray
        idle = [s.actor.close.remote() for s in self.slots if not s.busy]
        if idle:
            with contextlib.suppress(Exception):
                ray.wait(idle, num_returns=len(idle), timeout=5)
        for s in self.slots:
            with contextlib.suppress(Exception):
                ray.kill(s.actor, no_restart=True)
        if self.events is not None:
            with contextlib.suppress(Exception):
                ray.kill(self.events)
        for task in self.inflight.values():  # stopped before it ended: not done, not failed
            self.outcomes[task.stage.id].status = "pending"
            with contextlib.suppress(Exception):
                self.db.set_stage(self.run_id, task.stage.id, "pending")
        self.inflight.clear()
        self.slots.clear()

    # --- the loop ---------------------------------------------------------------------
    def go(self) -> str:
        self._start_workers()
        while not self.stop:
            self._dispatch()
            ran = False if self.stop else self._driver_stage()
            if self.stop:
                break
            if not self.inflight:
                if ran:
                    continue
                break  # nothing running, nothing ready: everything is done, failed or skipped
            ready, _ = self.ray.wait(
                list(self.inflight), num_returns=len(self.inflight), timeout=0 if ran else WAIT
            )
            self._pump_events()
            for ref in ready:
                self._finish(ref)
        return self.status

    def _dispatch(self) -> None:
        for slot in self.slots:
            if slot.busy or self.stop:
                continue
            stage = self._next_stage(slot)
            if stage is not None:
                self.ex._begin_stage(stage, self.db, self.run_id, self.bar)
                self._submit(slot, stage, 0, time.perf_counter())

    def _next_stage(self, slot: _Slot) -> Stage | None:
        while True:
            if not slot.queue:
                if not self.shots:
                    return None
                slot.queue = deque(self.shots.popleft())
            stage = slot.queue.popleft()
            if any(n in self.blocked for n in stage.needs):
                self._skip(stage)
                continue
            return stage

    def _submit(self, slot: _Slot, stage: Stage, attempt: int, started: float) -> None:
        inputs = {n: (self.found[n].key, [self._input_ref(n, attempt)]) for n in stage.needs}
        files = {sha: [self._file_ref(sha, path)] for sha, path in input_files(stage.params)}
        ref = slot.actor.run_stage.remote(stage, inputs, files, self.events)
        self.inflight[ref] = _Task(slot, stage, attempt, started)
        slot.busy = True

    def _input_ref(self, sid: str, attempt: int):
        """What a worker that lacks input `sid` fetches: the result that rendered it in this
        run (it stays in the object store), or, when cached on disk or after a worker died, a
        copy of the committed artifact."""
        if attempt == 0 and sid in self.live:
            return self.live[sid]
        art = self.found[sid]
        ref = self.ray.put(artifact_payload(art))
        self.live[sid] = ref
        return ref

    def _file_ref(self, sha: str, path: str):
        if sha not in self.file_refs:
            self.file_refs[sha] = self.ray.put(Path(path).read_bytes())
        return self.file_refs[sha]

    def _finish(self, ref) -> None:
        ray = self.ray
        task = self.inflight.pop(ref)
        slot, stage = task.slot, task.stage
        slot.busy = False
        error: BaseException | None = None
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # the worker code itself broke
            result, error = None, e
        except ray.exceptions.RayError as e:  # the worker died: killed, out of memory, node lost
            result = {"lost": _one_line(e)}
        if result is not None and "lost" in result:
            slot.pid = None
            if task.attempt < self.ex.retries:
                self.ex.console.print(
                    f"[yellow]![/] {stage.id}: worker {slot.index} lost ({result['lost']}); "
                    f"retrying ({task.attempt + 1} of {self.ex.retries})"
                )
                log.warning("ray: %s: worker %d lost; retrying", stage.id, slot.index)
                self._submit(slot, stage, task.attempt + 1, task.started)
                return
            error = WorkerLost(
                f"its worker died {task.attempt + 1} times "
                f"(last: {result['lost']}); --retries is {self.ex.retries}"
            )
        elif result is not None and "error" in result:
            error = RemoteStageError(f"{result['error']}\n{result['traceback']}")
        elif result is not None:
            if slot.pid != result["pid"]:
                log.info(
                    "ray: worker %d is pid %d on %s", slot.index, result["pid"], result["node"]
                )
                slot.pid = result["pid"]
            error = self._commit(stage, result)
            if error is None:
                self.ex.timings.append(
                    {
                        "stage": stage.id,
                        "worker": slot.index,
                        "wall": time.perf_counter() - task.started,
                        "worker_seconds": result["seconds"],
                        "attempts": task.attempt + 1,
                    }
                )
                if self.consumers.get(stage.id):
                    self.live.setdefault(stage.id, ref)
        for n in stage.needs:  # what this stage read is no longer needed by it
            self.consumers[n] -= 1
            if self.consumers[n] <= 0:
                self.live.pop(n, None)
        self._ended(stage, time.perf_counter() - task.started, error)

    def _commit(self, stage: Stage, result: dict) -> BaseException | None:
        out = self.ex.store.writer(stage.key, stage.id)
        try:
            for name, data in result["files"].items():
                out.path(name).write_bytes(data)
            out.meta.update(result["meta"])
            self.found[stage.id] = out.commit()
        except (Exception, MoldbatchError) as e:  # noqa: BLE001 - recorded as the stage's failure
            out.discard()
            return e
        return None

    def _ended(self, stage: Stage, seconds: float, error: BaseException | None) -> None:
        ok = self.ex._end_stage(
            stage, self.outcomes[stage.id], self.db, self.run_id, self.bar, seconds, error
        )
        if stage.kind in WORKER_KINDS:
            self.summary.runtime_seconds += seconds
        if not ok:
            self.blocked.add(stage.id)
            self.status = "failed"
            if not self.ex.keep_going:
                self.stop = True

    def _skip(self, stage: Stage) -> None:
        self.blocked.add(stage.id)
        self.outcomes[stage.id].status = "skipped"
        self.db.set_stage(self.run_id, stage.id, "skipped")
        for n in stage.needs:
            if n in self.consumers:
                self.consumers[n] -= 1

    def _driver_stage(self) -> bool:
        """Skip the driver stages that can no longer run; run the first one that is ready."""
        for stage in list(self.driver_todo):
            if any(n in self.blocked for n in stage.needs):
                self.driver_todo.remove(stage)
                self._skip(stage)
            elif all(n in self.found for n in stage.needs):
                self.driver_todo.remove(stage)
                ok = self.ex._run_stage(
                    stage, self.found, self.outcomes[stage.id], self.db, self.run_id, self.bar
                )
                if not ok:
                    self.blocked.add(stage.id)
                    self.status = "failed"
                    self.stop = not self.ex.keep_going
                return True
        return False

    def _pump_events(self) -> None:
        if self.events is None:
            return
        for stage_id, i, n in self.ray.get(self.events.drain.remote()):
            self.bar.step(stage_id, i, n)


def input_files(params) -> list[tuple[str, str]]:
    """(sha256, path) of every file a stage's params reference (images, keyframes, LoRAs,
    audio): the planner writes each as {"path": ..., "sha256": ...}."""
    found: list[tuple[str, str]] = []

    def walk(v) -> None:
        if isinstance(v, dict):
            if isinstance(v.get("path"), str) and isinstance(v.get("sha256"), str):
                found.append((v["sha256"], v["path"]))
            for x in v.values():
                walk(x)
        elif isinstance(v, list | tuple):
            for x in v:
                walk(x)

    walk(params)
    return sorted(set(found))


def artifact_payload(art: Artifact) -> dict:
    """A committed artifact as a worker returns one: its files' bytes and its meta."""
    return {
        "files": {name: art.file(name).read_bytes() for name in art.manifest["files"]},
        "meta": art.meta,
    }


class _Events:
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

    def __init__(self, device: str | None):
        from moldbatch.execute.stages import StageContext

        if device == "cpu":
            # Ray caps a worker's threads at its CPU share; results on CPU depend on the thread
            # count, so use what a local render on this machine uses, and match it bit for bit.
            # Several such workers share the cores: idle OpenMP threads must sleep, not spin.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            import torch

            torch.set_num_threads(len(os.sched_getaffinity(0)))
        _clean_stale_scratch()
        self.scratch = Path(tempfile.mkdtemp(prefix=f"moldbatch-worker-{os.getpid()}-"))
        self.store = ArtifactStore(self.scratch)
        self.kept: OrderedDict[str, Artifact] = OrderedDict()
        self.files: dict[str, Path] = {}
        self.ctx = StageContext(device=device, inputs={}, runtimes={})

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def run_stage(self, stage: Stage, inputs: dict, files: dict, events=None) -> dict:
        from moldbatch.execute.stages import HANDLERS

        t0 = time.perf_counter()
        node = _node()
        try:
            self.ctx.inputs = {sid: self._input(key, box) for sid, (key, box) in inputs.items()}
            stage = self._localize(stage, files)
        except Exception as e:  # noqa: BLE001 - an input lost with its node: the driver resends
            return {"lost": _one_line(e), "pid": os.getpid(), "node": node}
        self.ctx.on_step = (
            (lambda i, n: events.push.remote(stage.id, i, n)) if events is not None else None
        )
        out = self.store.writer(stage.key, stage.id)
        try:
            HANDLERS[stage.kind](stage, self.ctx, out)
            art = out.commit()
        except (Exception, MoldbatchError) as e:  # noqa: BLE001 - reported to the driver
            out.discard()
            from moldbatch.runtime.errors import RuntimeLoadError

            # model files are per machine: say which one lacks them (the driver checked its own)
            where = f" (on worker node {node})" if isinstance(e, RuntimeLoadError) else ""
            return {
                "error": _one_line(e) + where,
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
        local = {sha: self._file(sha, path, files[sha]) for sha, path in input_files(stage.params)}
        params = copy.deepcopy(stage.params)

        def walk(v) -> None:
            if isinstance(v, dict):
                if isinstance(v.get("sha256"), str) and v["sha256"] in local:
                    v["path"] = str(local[v["sha256"]])
                for x in v.values():
                    walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)

        walk(params)
        return dataclasses.replace(stage, params=params)

    def _file(self, sha: str, path: str, box: list) -> Path:
        if sha in self.files:
            return self.files[sha]
        mine = Path(path)
        if not (mine.is_file() and sha256_file(mine) == sha):
            import ray

            mine = self.scratch / "inputs" / sha / Path(path).name
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


def _clean_stale_scratch() -> None:
    """Remove scratch folders of workers that were killed (SIGKILL leaves them behind)."""
    for d in Path(tempfile.gettempdir()).glob("moldbatch-worker-*-*"):
        try:
            pid = int(d.name.split("-")[2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, PermissionError, IndexError):
            continue


class _RayBars(_Bars):
    """The local bars, with one steps bar per stage running on a worker at the same time."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.running: dict[str, object] = {}

    def start(self, stage: Stage) -> None:
        super().start(stage)
        self.ctx.on_step = None
        if self.steps is not None:
            self.running[stage.id], self.steps = self.steps, None

    def step(self, stage_id: str, i: int, n: int) -> None:
        task = self.running.get(stage_id)
        if task is not None:
            self.progress.update(task, completed=i, total=n)

    def done(self, stage: Stage) -> None:
        self.steps = self.running.pop(stage.id, None)
        super().done(stage)
