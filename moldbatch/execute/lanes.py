"""The ways a render's stages run in this process. `run_in_lanes` (the default): the model's
stages in plan order on the render's thread (the GPU lane); each one's artifact committed on a
thread of its own (`WriteBehind`) while the next one runs, reading what it needs of it from
memory; the stages that need no model (stitch, export, join) on a pool as soon as their inputs
are committed (`CpuLane`, which the Ray driver uses too). `run_in_order` (MOLDBATCH_LANES=1):
everything on one thread, in plan order. Both write the same bytes.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from moldbatch.execute.session import RenderSession
from moldbatch.execute.store import ArtifactWriter, Pending
from moldbatch.plan.types import RUNTIME_KINDS, Stage


def run_in_order(session: RenderSession, todo: list[Stage]) -> str:
    """Run the stages in plan order, one at a time, in this process; "done" or "failed"."""
    blocked: set[str] = set()
    status = "done"
    for stage in todo:
        if any(n in blocked for n in stage.needs):
            blocked.add(stage.id)
            session.skip(stage)
            continue
        if not session.run_here(stage):
            blocked.add(stage.id)
            status = "failed"
            if not session.keep_going:
                break
    return status


def run_in_lanes(session: RenderSession, todo: list[Stage]) -> str:
    """The model's stages in plan order on this thread, their commits behind them, the other
    stages on the CPU lane beside them; "done" or "failed"."""
    lane = CpuLane(session, [s for s in todo if s.kind not in RUNTIME_KINDS])
    behind = WriteBehind(session, lane, todo)
    status = "done"
    try:
        for stage in (s for s in todo if s.kind in RUNTIME_KINDS):
            lane.release()
            lane.raise_error()
            if lane.stop:
                break
            if any(n in lane.blocked for n in stage.needs):
                lane.block(stage.id)
                session.skip(stage)
                continue
            ok = session.run_here(stage, behind)
            behind.read(stage)
            if not ok:
                lane.block(stage.id)
                status = "failed"
                if not session.keep_going:
                    lane.stop = True
                    break
        lane.widen()  # the GPU lane's core is free: the film's last encodes may share them
        behind.drain()
        lane.drain()
    except BaseException:
        behind.drain()  # what the GPU rendered is kept: its commits are quick
        lane.close()
        raise
    return "failed" if lane.failed else status


class WriteBehind:
    """The model stages' commits (save, checksum, rename: a full-size clip's ~250 MB of frames)
    on a thread of their own, so that the GPU lane goes on at once; the next model stages read
    what they need of the last ones from memory (store.Pending). At most `depth` commits wait:
    a GPU lane that outruns the disk waits for it, so memory stays bounded, and a view is let
    go once committed and either read by every model stage that needs it or older than the
    last `keep` (later readers read the committed file). A failed commit is the stage's
    failure, recorded like any other; a full or vanished disk ends the render."""

    def __init__(self, session: RenderSession, lane: CpuLane, todo: list[Stage], depth=2, keep=4):
        self.session, self.lane = session, lane
        self.users = collections.Counter(
            n for s in todo if s.kind in RUNTIME_KINDS for n in s.needs
        )  # stage id -> model stages still to read it
        self.views: dict[str, Pending] = {}
        self.recent: collections.deque[str] = collections.deque(maxlen=keep)
        self.done: set[str] = set()  # commits that ended
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(depth)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._commits, name="moldbatch-commit", daemon=True)
        self._thread.start()

    def submit(self, stage: Stage, out: ArtifactWriter, seconds: float) -> None:
        """Commit `out` behind the GPU lane (waits while `depth` commits wait)."""
        self._slots.acquire()
        with self._lock:
            self.views[stage.id] = Pending(out)
            self.recent.append(stage.id)
            self._let_go()
        self._queue.put((stage, out, seconds))

    def view(self, stage_id: str) -> Pending | None:
        with self._lock:
            return self.views.get(stage_id)

    def read(self, stage: Stage) -> None:
        """A model stage ended: it no longer needs what it read."""
        with self._lock:
            for n in stage.needs:
                self.users[n] -= 1
            self._let_go()

    def _let_go(self) -> None:  # under the lock
        for sid in [sid for sid in self.views if sid in self.done]:
            if self.users[sid] <= 0 or sid not in self.recent:
                del self.views[sid]

    def _commits(self) -> None:
        while (item := self._queue.get()) is not None:
            stage, out, seconds = item
            try:
                ok = self.session.commit_behind(stage, out, seconds)
            except BaseException as e:  # noqa: BLE001 - the disk: raised on the render's thread
                self.lane.end_render(e)
                ok = False
            finally:
                self._slots.release()
            with self._lock:
                self.done.add(stage.id)
                self._let_go()
            if not ok:
                self.lane.stage_failed(stage.id)
            self.lane.release()

    def drain(self) -> None:
        """Wait for the commits submitted; the thread ends."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def cpu_workers() -> tuple[int, int]:
    """How many stages the CPU lane runs at once: beside the GPU lane (whose thread keeps a
    core), then once it is done; at most 4 (each holds a shot's frames, and x264 has threads
    of its own)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, (cores or 1) - 1)), max(1, min(4, cores or 1))


class CpuLane:
    """The stages that need no model, each run on a pool thread as soon as its needs are
    committed, beside whatever the caller runs meanwhile (the model's stages, in plan order).

    `release()` hands out what has become ready (call it after each stage the caller ran);
    `widen()` lets more run at once (the caller's stages are done); `drain()` waits for the
    rest. A failure blocks what depends on it; without keep-going it also sets `stop`, and the
    caller starts nothing new."""

    def __init__(self, session: RenderSession, stages: list[Stage], workers=None):
        self.session = session
        self.waiting = list(stages)
        self.blocked: set[str] = set()
        self.failed = False
        self.stop = False
        self.limit, self._widest = workers or cpu_workers()
        self._pool = ThreadPoolExecutor(
            max_workers=self._widest, thread_name_prefix="moldbatch-cpu"
        )
        self._running: set = set()
        self._active = 0  # stages running (a finished one stops counting before it releases)
        self._lock = threading.Lock()
        self.error: BaseException | None = None  # the books failed (the disk): end the render

    def widen(self) -> None:
        with self._lock:
            self.limit = self._widest
        self.release()

    def raise_error(self) -> None:
        """On the render's thread: end the render the way the lane's stage failed."""
        if self.error is not None:
            raise self.error

    def end_render(self, error: BaseException) -> None:
        """A stage could not be recorded (a full or vanished work folder): stop, and raise it
        on the render's thread."""
        with self._lock:
            self.error = self.error or error
            self.stop = True

    def stage_failed(self, stage_id: str) -> None:
        """A stage failed: what needs it cannot run; without keep-going, nothing new starts."""
        with self._lock:
            self.blocked.add(stage_id)
            self.failed = True
            self.stop = self.stop or not self.session.keep_going

    def busy(self) -> bool:
        """Whether a stage of the lane is running (it may make more ready)."""
        with self._lock:
            return any(not f.done() for f in self._running)

    def block(self, stage_id: str) -> None:
        """A stage of the caller's failed or was skipped: what needs it cannot run."""
        with self._lock:
            self.blocked.add(stage_id)

    def release(self) -> None:
        with self._lock:
            if self.stop:  # a failure without keep-going: what has not started stays pending
                return
            for stage in list(self.waiting):
                if any(n in self.blocked for n in stage.needs):
                    self.waiting.remove(stage)
                    self.blocked.add(stage.id)
                    self.session.skip(stage)
                elif self._active < self.limit and self.session.ready(stage):
                    self.waiting.remove(stage)
                    self._active += 1
                    self._running.add(self._pool.submit(self._run, stage))

    def _run(self, stage: Stage) -> None:
        try:
            ok = self.session.run_here(stage)
        except BaseException as e:  # noqa: BLE001 - a full or vanished work folder: raised on the render's thread
            self.end_render(e)
            return
        finally:
            with self._lock:
                self._active -= 1
        if not ok:
            self.stage_failed(stage.id)
        self.release()  # what this stage unblocked, at once

    def drain(self) -> None:
        """Run what can still run; leave what waits on stages that never ran."""
        while True:
            self.release()
            with self._lock:
                done = [f for f in self._running if f.done()]
                self._running -= set(done)
                running = list(self._running)
            for f in done:
                f.result()
            self.raise_error()
            if not running:
                break
            wait(running, return_when=FIRST_COMPLETED)
        self._pool.shutdown(wait=True)

    def close(self) -> None:
        """Stop: start nothing more, let the stage that runs finish (its write is atomic)."""
        with self._lock:
            self.stop = True
            self.waiting.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
