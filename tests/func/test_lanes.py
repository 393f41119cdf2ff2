"""The executor's two lanes: the model's stages in plan order on the render's thread, stitches,
exports and the join beside them on the CPU lane. The same bytes as one thread, the same
failure rules, and a kill while an export runs loses nothing that was done."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moldbatch.errors import StageFailed
from moldbatch.execute import handlers
from moldbatch.execute.executor import LANES_ENV, render_plan
from moldbatch.plan.planner import plan_file

from conftest import TINY_HEAD, write

FILM = (
    TINY_HEAD
    + """\
output: renders/film.mp4
shots:
  - {id: a, prompt: rain on a neon window, frames: 17}
  - {id: b, prompt: a harbour at dawn, frames: 25, clip_frames: 17, motion_tail: 9}
  - {id: c, prompt: a spinning top, frames: 9, format: webp, audio: false}
"""
)


@pytest.fixture(scope="module")
def runtimes():
    return {}


def _render(folder: Path, runtimes, **kw):
    write(folder, "film.yaml", FILM)
    return render_plan(plan_file(folder / "film.yaml"), progress=False, runtimes=runtimes, **kw)


def _outputs(folder: Path) -> dict[str, bytes]:
    """The shot files and the film (not the render report beside them)."""
    films = sorted((folder / "renders").glob("*.mp4")) + sorted((folder / "renders").glob("*.webp"))
    return {p.name: p.read_bytes() for p in films}


def _stage_times(folder: Path) -> dict[str, tuple[float, float]]:
    """stage id -> (started, started + seconds) of the last run, from the state database."""
    db = sqlite3.connect(folder / ".moldbatch" / "state.sqlite")
    try:
        rows = db.execute(
            "SELECT stage, started, seconds FROM stages WHERE run_id=(SELECT MAX(id) FROM runs)"
        ).fetchall()
    finally:
        db.close()
    return {s: (t, t + (d or 0)) for s, t, d in rows if t is not None}


def test_two_lanes_write_the_same_bytes_as_one_thread(tmp_path, runtimes, monkeypatch):
    (tmp_path / "lanes").mkdir()
    (tmp_path / "serial").mkdir()
    assert _render(tmp_path / "lanes", runtimes).ok
    monkeypatch.setenv(LANES_ENV, "1")
    assert _render(tmp_path / "serial", runtimes).ok
    lanes, serial = _outputs(tmp_path / "lanes"), _outputs(tmp_path / "serial")
    assert set(lanes) == {"a.mp4", "b.mp4", "c.webp", "film.mp4"}
    assert lanes == serial


def _slow(kind: str, shot: str, seconds: float, monkeypatch, marker: Path | None = None):
    """Make one shot's `kind` stage take `seconds` longer (its real handler still runs)."""
    real = handlers.HANDLERS[kind]

    def slow(stage, ctx, out):
        if stage.shot == shot:
            if marker is not None:
                marker.write_text("started")
            time.sleep(seconds)
        return real(stage, ctx, out)

    monkeypatch.setitem(handlers.HANDLERS, kind, slow)


def test_the_gpu_lane_goes_on_while_a_stitch_runs(tmp_path, runtimes, monkeypatch):
    _slow("stitch", "a", 2.0, monkeypatch)
    assert _render(tmp_path, runtimes).ok
    times = _stage_times(tmp_path)
    # shot b's first clip starts while shot a's stitch still runs (on one thread, in plan
    # order, it would wait for a's stitch and export)
    assert times["b/clip-0"][0] < times["a/stitch"][1], times


def _failing(kind: str, shot: str, monkeypatch):
    real = handlers.HANDLERS[kind]

    def fail(stage, ctx, out):
        if stage.shot == shot:
            raise RuntimeError("the stitch broke")
        return real(stage, ctx, out)

    monkeypatch.setitem(handlers.HANDLERS, kind, fail)


def test_a_failed_stitch_stops_the_render_and_keeps_what_was_done(tmp_path, runtimes, monkeypatch):
    _failing("stitch", "a", monkeypatch)
    with pytest.raises(StageFailed, match="a/stitch failed: RuntimeError") as e:
        _render(tmp_path, runtimes)
    status = {s.id: s.status for s in e.value.summary.stages}
    assert status["a/clip-0"] == "rendered" and status["a/stitch"] == "failed"
    assert status["a/export"] == "pending" and status["film/join"] == "pending"
    assert not (tmp_path / "renders").exists()  # nothing half-delivered


def test_with_keep_going_a_failed_stitch_leaves_the_other_shots_delivered(
    tmp_path, runtimes, monkeypatch
):
    _failing("stitch", "a", monkeypatch)
    summary = _render(tmp_path, runtimes, keep_going=True)
    status = {s.id: s.status for s in summary.stages}
    assert not summary.ok
    assert status["a/stitch"] == "failed" and status["a/export"] == "skipped"
    assert status["film/join"] == "skipped"
    assert status["b/export"] == status["c/export"] == "rendered"
    assert sorted(p.name for p in (tmp_path / "renders").iterdir()) == ["b.mp4", "c.webp"]


SLOW_EXPORT = """\
import sys, time
from pathlib import Path
from moldbatch.execute import handlers
from moldbatch.cli import main

real = handlers.HANDLERS["export"]
marker = Path(sys.argv[1])

def slow(stage, ctx, out):
    if stage.shot == "a":
        marker.write_text("exporting")
        time.sleep(30)
    return real(stage, ctx, out)

handlers.HANDLERS["export"] = slow
sys.argv = ["moldbatch", "render", "film.yaml", "--json"]
main()
"""


@pytest.mark.slow
def test_a_kill_while_an_export_runs_and_the_gpu_lane_is_ahead_loses_nothing(tmp_path, runtimes):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for d in (clean, killed):
        d.mkdir()
        write(d, "film.yaml", FILM)
    assert render_plan(plan_file(clean / "film.yaml"), progress=False, runtimes=runtimes).ok

    script = write(tmp_path, "slow_export.py", SLOW_EXPORT)
    marker = tmp_path / "exporting"
    plan = plan_file(killed / "film.yaml")
    b_last = plan.stage("b/clip-1").key
    artifacts = killed / ".moldbatch" / "artifacts"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(marker)],
        cwd=killed,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    deadline = time.monotonic() + 120
    # wait until a's export runs and the GPU lane has gone on to shot b's last clip
    while time.monotonic() < deadline and proc.poll() is None:
        if marker.exists() and (artifacts / b_last[:2] / b_last / "manifest.json").exists():
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the render ended before it could be killed"
    done = {s.id for s in plan.stages if (artifacts / s.key[:2] / s.key / "manifest.json").exists()}
    assert "a/export" not in done and "b/clip-1" in done

    res = subprocess.run(
        [sys.executable, "-m", "moldbatch", "render", "film.yaml", "--json"],
        cwd=killed,
        check=True,
        capture_output=True,
        text=True,
    )
    rendered = {s["id"] for s in json.loads(res.stdout)["stages"] if s["status"] == "rendered"}
    assert rendered == {s.id for s in plan.stages} - done  # nothing renders twice
    assert _outputs(killed) == _outputs(clean)
