"""Rendering on a Ray cluster, the driver's side: one film's shots spread over every GPU (or CPU
worker) of the cluster. (ray_worker.py is what runs in the workers.)

Ray does the scheduling, the transport and the restarts; this module only decides what runs
where:

- one actor per GPU (`num_gpus=1`; CPU actors for films on the tiny model) holds its loaded
  runtimes for its whole life, so weights load once per worker, not per shot;
- the shots' worker stages (clips and upscales) are handed out shot by shot, longest shot
  first; a shot's stages run in order on one worker, which keeps the latents of what it
  rendered, so a chain's next clip needs no transfer;
- the stage handlers are the local executor's (handlers.HANDLERS): a worker runs one into a
  scratch folder and returns the files' bytes through Ray's object store; the driver, which
  alone owns the artifact store and the state database, commits them with the same writer,
  keys and manifests as a local render. A cluster render therefore resumes locally and the
  other way round, and workers need no shared file system (input files referenced by the plan
  travel through the object store too, only when a worker does not have them);
- stitch, export and join need no GPU: the driver runs them on its CPU lane (the local
  executor's, lanes.CpuLane) as soon as their inputs are committed, while it goes on
  handing out and committing the workers' stages;
- a worker that dies (killed, out of memory, its node lost) loses only the stage it was
  running: Ray restarts the actor (`max_restarts=-1`) and the stage is sent again, up to
  `retries` more times; then it fails like any failed stage (and, without keep-going, the
  run stops). Ctrl-C kills the workers and leaves the store as a local interrupt does.

`import ray` happens only in here, and only when a Ray render starts.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from moldbatch.errors import MoldbatchError, UsageError, one_line
from moldbatch.execute.lanes import CpuLane
from moldbatch.execute.ray_worker import Events, StageWorker, artifact_payload
from moldbatch.execute.session import RenderSession
from moldbatch.models import MODELS
from moldbatch.plan.types import RUNTIME_KINDS, Stage, file_refs

log = logging.getLogger("moldbatch")

WAIT = 0.1  # seconds between looks at the workers' progress events


class RayUnavailable(UsageError):
    pass


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


@contextlib.contextmanager
def on_ray(
    address: str | None = None,
    workers: int | None = None,
    retries: int = 2,
    timings: list | None = None,
):
    """A way of running a render's stages on a Ray cluster (see session.RunStages).

    `workers`: how many actors (default: one per GPU of the cluster, or one per CPU for films on
    the tiny model; never more than the shots to render). `retries`: how many times a stage is
    sent again after its worker died. `timings`, when given, receives one dict per worker stage
    (wall seconds from dispatch to commit, seconds inside the worker, attempts)."""

    def run_stages(session: RenderSession, todo: list[Stage]) -> str:
        run = _Run(session, todo, workers, max(0, retries), timings)
        try:
            return run.go()
        finally:
            run.close()

    # Ray's own messages (a worker died, ...) go to stderr: stdout stays for --json
    with contextlib.redirect_stdout(sys.stderr), ray_session(address):
        yield run_stages


def wants_gpu(stages: list[Stage], device: str | None) -> bool:
    if device:
        return device.startswith("cuda")
    return any(not MODELS[s.params.model].built_in for s in stages)


def shot_cost(stages: list[Stage]) -> float:
    """Rough compute of a shot's worker stages: pixels x frames x steps (upscales as 2 steps)."""
    cost = 0.0
    for s in stages:
        p = s.params
        cost += (
            getattr(p, "width", 1)
            * getattr(p, "height", 1)
            * getattr(p, "frames", 1)
            * (getattr(p, "steps", 2))
        )
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
    """One Ray render's dispatch loop (lives for one session.run)."""

    def __init__(self, session: RenderSession, todo, workers, retries, timings):
        self.ray = import_ray()
        self.session, self.found, self.outcomes = session, session.found, session.outcomes
        self.workers, self.retries = workers, retries
        self.timings = timings if timings is not None else []
        self.blocked: set[str] = set()
        self.status = "done"
        self.stop = False
        self.lane = CpuLane(session, [s for s in todo if s.kind not in RUNTIME_KINDS])
        shots: dict[str, list[Stage]] = {}
        for s in todo:
            if s.kind in RUNTIME_KINDS:
                shots.setdefault(s.shot, []).append(s)
        # the film's text encodes first (one worker, one text encoder load), then the shots,
        # the costliest first
        self.shots = deque(
            sorted(shots.values(), key=lambda g: (g[0].kind != "encode", -shot_cost(g)))
        )
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
        gpu = wants_gpu(self.worker_todo, self.session.ctx.device)
        resources = ray.cluster_resources()
        capacity = int(resources.get("GPU" if gpu else "CPU", 0))
        if capacity < 1:
            raise RayClusterError(
                "the Ray cluster has no GPUs: start its workers on GPU machines "
                "(`ray start --address HEAD:6379` where `nvidia-smi` works)"
                if gpu
                else "the Ray cluster has no CPUs to run workers on"
            )
        n = min(self.workers or capacity, capacity, len(self.shots))
        device = self.session.ctx.device or (None if gpu else "cpu")
        if self.session.show:
            self.events = ray.remote(num_cpus=0)(Events).remote()
        token = uuid.uuid4().hex[:8]
        actor = ray.remote(StageWorker)
        for i in range(n):
            handle = actor.options(
                name=f"moldbatch-worker-{token}-{i}",
                num_cpus=1,
                num_gpus=1 if gpu else 0,
                max_restarts=-1,  # Ray brings a dead worker back; we count the retries
                max_task_retries=0,
            ).remote(device, self.session.ctx.compile, self.session.ctx.memory)
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
            with contextlib.suppress(Exception):
                self.session.pending(task.stage)
        self.inflight.clear()
        self.slots.clear()

    # --- the loop ---------------------------------------------------------------------
    def go(self) -> str:
        self._start_workers()
        try:
            while not self.stop:
                self._dispatch()
                self.lane.release()
                self.lane.raise_error()
                if self.lane.stop:  # a driver stage failed, without keep-going
                    self.stop = True
                if self.stop:
                    break
                if not self.inflight:
                    if self.lane.busy():
                        time.sleep(WAIT)  # its stages may still unblock more
                        continue
                    break  # nothing running, nothing ready: all done, failed or skipped
                ready, _ = self.ray.wait(
                    list(self.inflight), num_returns=len(self.inflight), timeout=WAIT
                )
                self._pump_events()
                for ref in ready:
                    self._finish(ref)
            if self.stop:
                self.lane.close()
            else:
                self.lane.drain()
        except BaseException:
            self.lane.close()
            raise
        return "failed" if self.lane.failed else self.status

    def _dispatch(self) -> None:
        for slot in self.slots:
            if slot.busy or self.stop:
                continue
            stage = self._next_stage(slot)
            if stage is not None:
                self.session.begin(stage)
                self._submit(slot, stage, 0, time.perf_counter())

    def _next_stage(self, slot: _Slot) -> Stage | None:
        while True:
            if not slot.queue:
                if not self.shots:
                    return None
                slot.queue = deque(self.shots.popleft())
            stage = slot.queue[0]
            if any(n in self.blocked for n in stage.needs):
                self._skip(slot.queue.popleft())
                continue
            if not all(n in self.found for n in stage.needs):
                return None  # it waits for what another worker renders (its prompts' encodes)
            return slot.queue.popleft()

    def _submit(self, slot: _Slot, stage: Stage, attempt: int, started: float) -> None:
        inputs = {n: (self.found[n].key, [self._input_ref(n, attempt)]) for n in stage.needs}
        files = {ref.sha256: [self._file_ref(ref)] for ref in file_refs(stage.params)}
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

    def _file_ref(self, ref):
        if ref.sha256 not in self.file_refs:
            data = self.session.plan.read_input(ref.path)
            self.file_refs[ref.sha256] = self.ray.put(data)
        return self.file_refs[ref.sha256]

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
            result = {"lost": one_line(e)}
        if result is not None and "lost" in result:
            slot.pid = None
            if task.attempt < self.retries:
                self.session.console.print(
                    f"[yellow]![/] {stage.id}: worker {slot.index} lost ({result['lost']}); "
                    f"retrying ({task.attempt + 1} of {self.retries})",
                    soft_wrap=True,
                )
                log.warning("ray: %s: worker %d lost; retrying", stage.id, slot.index)
                self._submit(slot, stage, task.attempt + 1, task.started)
                return
            error = WorkerLost(
                f"its worker died {task.attempt + 1} times "
                f"(last: {result['lost']}); --retries is {self.retries}"
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
                self.timings.append(
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
        try:
            self.session.commit(stage, result["files"], result["meta"])
        except (Exception, MoldbatchError) as e:  # noqa: BLE001 - recorded as the stage's failure
            return e
        return None

    def _ended(self, stage: Stage, seconds: float, error: BaseException | None) -> None:
        if not self.session.end(stage, seconds, error):
            self.blocked.add(stage.id)
            self.lane.block(stage.id)
            self.status = "failed"
            if not self.session.keep_going:
                self.stop = True

    def _skip(self, stage: Stage) -> None:
        self.blocked.add(stage.id)
        self.lane.block(stage.id)
        self.session.skip(stage)
        for n in stage.needs:
            if n in self.consumers:
                self.consumers[n] -= 1

    def _pump_events(self) -> None:
        if self.events is None:
            return
        for stage_id, i, n in self.ray.get(self.events.drain.remote()):
            self.session.bars.step(stage_id, i, n)
