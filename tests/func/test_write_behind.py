"""The model stages' commits behind the GPU lane: the next clip renders while the last one's
frames are saved and hashed, carrying from memory; the same bytes as one thread; a commit
that fails is that stage's failure; a full disk ends the render; the commits that wait are
bounded."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import pytest

from moldbatch.errors import StageFailed, WorkdirFailed
from moldbatch.execute import handlers
from moldbatch.execute.executor import LANES_ENV, render_plan
from moldbatch.execute.store import ArtifactWriter
from moldbatch.plan.planner import plan_file
from moldbatch.plan.types import RUNTIME_KINDS

from conftest import TINY_HEAD, write

FILM = (
    TINY_HEAD
    + """\
output: renders/film.mp4
shots:
  - {id: a, prompt: rain on a neon window, frames: 17}
  - {id: b, prompt: a harbour at dawn, frames: 33, clip_frames: 17, motion_tail: 9}
"""
)


@pytest.fixture(scope="module")
def runtimes():
    return {}


def _render(folder: Path, runtimes, **kw):
    folder.mkdir(exist_ok=True)
    write(folder, "film.yaml", FILM)
    return render_plan(plan_file(folder / "film.yaml"), progress=False, runtimes=runtimes, **kw)


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "renders").glob("*.mp4"))}


def _commits(monkeypatch, slow: dict[str, float] | None = None, fail: dict | None = None):
    """Commits as they are, timed (stage id -> (start, end)); those named in `slow` take that
    much longer, those in `fail` raise that error instead."""
    times: dict[str, tuple[float, float]] = {}
    real = ArtifactWriter.commit

    def commit(self):
        t = time.monotonic()
        if fail and self.stage_id in fail:
            raise fail[self.stage_id]
        time.sleep((slow or {}).get(self.stage_id, (slow or {}).get("*", 0.0)))
        art = real(self)
        times[self.stage_id] = (t, time.monotonic())
        return art

    monkeypatch.setattr(ArtifactWriter, "commit", commit)
    return times


def _handler_times(monkeypatch) -> dict[str, tuple[float, float]]:
    """The model stages' handlers, timed (stage id -> (start, end))."""
    times: dict[str, tuple[float, float]] = {}
    for kind in RUNTIME_KINDS:
        real = handlers.HANDLERS[kind]

        def timed(stage, ctx, out, real=real):
            t = time.monotonic()
            real(stage, ctx, out)
            times[stage.id] = (t, time.monotonic())

        monkeypatch.setitem(handlers.HANDLERS, kind, timed)
    return times


def test_the_next_clip_renders_while_the_last_one_commits_and_carries_from_memory(
    tmp_path, runtimes, monkeypatch
):
    monkeypatch.setenv(LANES_ENV, "1")
    assert _render(tmp_path / "serial", runtimes).ok
    monkeypatch.delenv(LANES_ENV)
    commits = _commits(monkeypatch, slow={"b/clip-0": 1.5})
    ran = _handler_times(monkeypatch)
    assert _render(tmp_path / "lanes", runtimes).ok
    # b/clip-1 carries b/clip-0's tail: it ran while b/clip-0 was still being written, so it
    # read the frames from memory (on one thread it waits for the commit)
    assert ran["b/clip-1"][0] < commits["b/clip-0"][1]
    assert _outputs(tmp_path / "lanes") == _outputs(tmp_path / "serial")
    assert not any(t.name == "moldbatch-commit" for t in threading.enumerate())  # ended


def test_at_most_two_commits_wait_behind_the_gpu_lane(tmp_path, runtimes, monkeypatch):
    commits = _commits(monkeypatch, slow={"*": 0.25})
    ran = _handler_times(monkeypatch)
    assert _render(tmp_path, runtimes).ok
    # at each model stage's start: the stages before it rendered, whose commits had not ended
    waiting = [sum(ran[o][1] <= start < commits[o][1] for o in ran) for start, _ in ran.values()]
    assert max(waiting) == 2, waiting  # ahead of the disk, never further than two commits


def test_a_commit_that_fails_is_the_stage_failure(tmp_path, runtimes, monkeypatch):
    _commits(monkeypatch, fail={"a/clip-0": OSError(errno.EIO, "Input/output error")})
    with pytest.raises(StageFailed, match="a/clip-0 failed: .*Input/output error") as e:
        _render(tmp_path, runtimes)
    status = {s.id: s.status for s in e.value.summary.stages}
    assert status["a/clip-0"] == "failed" and status["a/stitch"] == "pending"
    assert not (tmp_path / "renders").exists()


def test_with_keep_going_a_failed_commit_leaves_the_other_shot_delivered(
    tmp_path, runtimes, monkeypatch
):
    _commits(monkeypatch, fail={"a/clip-0": OSError(errno.EIO, "Input/output error")})
    summary = _render(tmp_path, runtimes, keep_going=True)
    status = {s.id: s.status for s in summary.stages}
    assert status["a/clip-0"] == "failed" and status["a/export"] == "skipped"
    assert status["b/export"] == "rendered" and status["film/join"] == "skipped"
    assert sorted(p.name for p in (tmp_path / "renders").iterdir()) == ["b.mp4"]


def test_a_full_disk_in_a_commit_ends_the_render(tmp_path, runtimes, monkeypatch):
    _commits(monkeypatch, fail={"b/clip-0": OSError(errno.ENOSPC, "No space left on device")})
    with pytest.raises(WorkdirFailed, match="No space left on device.*run the same command"):
        _render(tmp_path, runtimes)
    assert not (tmp_path / "renders").exists()


def test_a_work_folder_deleted_under_a_commit_is_one_line_even_when_made_again(
    tmp_path, runtimes, monkeypatch
):
    """The next stage makes the work folder's temporary folder again before the deleted one's
    commit fails: the render still ends as a deleted work folder, not as a failed stage."""
    import shutil

    from moldbatch.errors import MoldbatchError

    real = handlers.HANDLERS["clip"]

    def clip_then_gone(stage, ctx, out):
        if stage.id == "a/clip-0":
            shutil.rmtree(tmp_path / ".moldbatch")
        return real(stage, ctx, out)

    monkeypatch.setitem(handlers.HANDLERS, "clip", clip_then_gone)
    _commits(monkeypatch, slow={"a/clip-0": 1.0})
    with pytest.raises(MoldbatchError) as e:
        _render(tmp_path, runtimes)
    assert len(str(e.value).splitlines()) == 1, str(e.value)
    assert "deleted during the render" in str(e.value) and e.value.exit_code == 3
