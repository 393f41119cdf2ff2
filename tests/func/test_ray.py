"""The Ray executor on a real local Ray cluster (2 CPU workers) and the real tiny LTX-2 pipeline.

The cluster is started once for the module; each render starts its own worker actors on it,
as a CLI render would. Outputs are compared with the local executor's: every clip's latents and
every clip's and shot's decoded frames and audio samples byte for byte; the encoded files by
their decoded frames and samples (libx264 is not bit-reproducible under CPU load, with either
executor: two local encodes of the same frames can differ by a few code values).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from moldbatch.errors import StageFailed
from moldbatch.execute.executor import render_plan
from moldbatch.execute.store import ArtifactStore
from moldbatch.media.probe import read_video
from moldbatch.plan.planner import plan_file
from moldbatch.plan.types import media_needs

from conftest import undecodable_png, write

pytestmark = pytest.mark.slow  # renders through subprocesses, Ray, Chromium or training

ray = pytest.importorskip("ray")

FILM = """\
version: 1
defaults:
  model: ltx-2-tiny:random
  width: 64
  height: 64
  fps: 24
  steps: 4
output: renders/film.mp4
shots:
  - id: walk
    frames: 40
    clip_frames: 17
    motion_tail: 1
    prompts: [a forest path, a lake shore, fireflies over water]
  - id: rain
    frames: 40
    clip_frames: 17
    transition: cut
    prompt: rain on a neon window
  - id: sea
    frames: 33
    clip_frames: 17
    motion_tail: 1
    prompt: waves on a black beach
  - {id: top, prompt: a spinning top, frames: 9, format: gif}
"""
OUTPUTS = ["walk.mp4", "rain.mp4", "sea.mp4", "top.gif", "film.mp4"]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with 2 CPUs (so 2 CPU workers) and a small object store."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=200 * 1024 * 1024,
        logging_level=logging.WARNING,
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The film rendered by the local executor, in this process."""
    folder = tmp_path_factory.mktemp("local")
    spec = write(folder, "film.yaml", FILM)
    assert render_plan(plan_file(spec), progress=False, runtimes={}).ok
    return folder


def ray_render(spec: Path, timings: list | None = None, **kw):
    options = {"workers": 2, "timings": timings if timings is not None else []}
    options.update(kw.pop("ray_options", {}))
    return render_plan(plan_file(spec), progress=False, executor="ray", ray_options=options, **kw)


def statuses(summary) -> dict[str, str]:
    return {s.id: s.status for s in summary.stages}


def assert_same_as(reference: Path, folder: Path) -> None:
    """Every clip and stitch artifact (latents, decoded frames and samples) is the same bytes
    as the local render's, with the same manifest, and every delivered file is the same bytes
    (so it decodes to the same frames and samples)."""
    plan = plan_file(folder / "film.yaml")
    ours, theirs = ArtifactStore(folder / ".moldbatch"), ArtifactStore(reference / ".moldbatch")
    for stage in plan.stages:
        a, b = ours.get(stage.key), theirs.get(stage.key)
        assert a is not None and b is not None, stage.id
        assert a.meta == b.meta, stage.id
        assert a.manifest["files"] == b.manifest["files"], stage.id
    for name in OUTPUTS:
        a, b = folder / "renders" / name, reference / "renders" / name
        fa, aa, ra = read_video(a)
        fb, ab, rb = read_video(b)
        assert fa.shape == fb.shape and ra == rb, name
        np.testing.assert_array_equal(fa, fb)
        if aa is not None or ab is not None:
            np.testing.assert_array_equal(aa, ab)
        assert a.read_bytes() == b.read_bytes(), name


def test_ray_render_is_identical_to_local_and_resumes_both_ways(tmp_path, cluster, reference):
    spec = write(tmp_path, "film.yaml", FILM)
    timings: list[dict] = []
    summary = ray_render(spec, timings)
    assert summary.ok and set(statuses(summary).values()) == {"rendered"}
    assert_same_as(reference, tmp_path)
    # both workers worked, and each shot's clips ran on one of them
    assert {t["worker"] for t in timings} == {0, 1}
    by_shot: dict[str, set] = {}
    for t in timings:
        by_shot.setdefault(t["stage"].split("/")[0], set()).add(t["worker"])
    assert all(len(w) == 1 for w in by_shot.values())
    # longest first: the two 3-clip shots went one to each worker at the start
    assert by_shot["walk"] != by_shot["rain"]
    # a cluster render resumes locally and the other way round: nothing to render
    again = render_plan(plan_file(spec), progress=False, runtimes={})
    assert set(statuses(again).values()) == {"cached"}
    timings.clear()
    again = ray_render(write(reference, "film.yaml", FILM), timings)
    assert set(statuses(again).values()) == {"cached"} and timings == []


class _Pids(logging.Handler):
    """Collects the worker pids the executor logs as results come in."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.pids: list[int] = []
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("ray: worker "):
            self.pids.append(record.args[1])
            self.seen.set()


def test_killing_a_worker_mid_run_still_completes_the_film(tmp_path, cluster, reference):
    spec = write(tmp_path, "film.yaml", FILM)
    handler = _Pids()
    logger = logging.getLogger("moldbatch")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    killed: list[int] = []

    def killer() -> None:
        # a worker's first result came in: it is now rendering its shot's next clip
        if handler.seen.wait(120):
            time.sleep(0.02)
            os.kill(handler.pids[0], signal.SIGKILL)
            killed.append(handler.pids[0])

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    timings: list[dict] = []
    try:
        summary = ray_render(spec, timings)
    finally:
        thread.join(5)
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert killed, "no worker was killed"
    assert summary.ok
    retried = [t for t in timings if t["attempts"] > 1]
    assert len(retried) == 1, timings
    # the restarted worker (a new process) finished the job, and nothing was lost
    assert len(set(handler.pids)) == 3
    assert_same_as(reference, tmp_path)


def test_interrupted_driver_resumes_with_only_the_missing_stages(tmp_path, cluster, reference):
    spec = write(tmp_path, "film.yaml", FILM)
    plan = plan_file(spec)
    clip_keys = [s.key for s in plan.stages if s.kind == "clip"]
    cmd = [sys.executable, "-m", "moldbatch", "render", "film.yaml", "--json"]
    cmd += ["--executor", "ray", "--address", cluster, "--workers", "2"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    artifacts = tmp_path / ".moldbatch" / "artifacts"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if sum((artifacts / k[:2] / k / "manifest.json").exists() for k in clip_keys) >= 2:
            os.kill(proc.pid, signal.SIGINT)  # Ctrl-C
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; run the same command again to resume" in err
    assert "Traceback" not in err
    store = ArtifactStore(tmp_path / ".moldbatch")
    done = {s.id for s in plan.stages if store.get(s.key) is not None}
    assert 2 <= len(done) < len(plan.stages)
    assert not (tmp_path / "renders" / "film.mp4").exists()
    db = sqlite3.connect(tmp_path / ".moldbatch" / "state.sqlite")
    assert db.execute("SELECT status FROM runs").fetchall() == [("interrupted",)]
    # the workers of the interrupted driver are gone: the next render gets both CPUs
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    rendered = {s["id"] for s in summary["stages"] if s["status"] == "rendered"}
    assert rendered == {s.id for s in plan.stages} - done
    assert_same_as(reference, tmp_path)


def test_a_failing_stage_fails_closed_and_keep_going_renders_the_rest(tmp_path, cluster):
    undecodable_png(tmp_path / "bad.png")  # planning accepts it; decoding it fails
    spec = write(
        tmp_path,
        "film.yaml",
        FILM.replace("steps: 4", "steps: 2")
        + "  - {id: broken, prompt: a storm, frames: 9, image: bad.png}\n",
    )
    with pytest.raises(StageFailed, match="broken/clip-0 failed: cannot read conditioning image"):
        ray_render(spec)
    assert not (tmp_path / "renders" / "film.mp4").exists()
    summary = ray_render(spec, keep_going=True)
    st = statuses(summary)
    assert not summary.ok and st["broken/clip-0"] == "failed"
    assert st["broken/stitch"] == st["film/join"] == "skipped"
    assert all(st[f"{s}/export"] in ("rendered", "cached") for s in ("walk", "rain", "sea"))
    assert (tmp_path / "renders" / "walk.mp4").exists()
    assert not (tmp_path / "renders" / "film.mp4").exists()
    log = (tmp_path / ".moldbatch" / "logs" / "failures.log").read_text()
    assert "on worker pid" in log and "cannot identify image file" in log


def test_plan_and_validate_never_import_ray_or_torch(tmp_path):
    spec = write(tmp_path, "film.yaml", FILM)
    code = (
        "import sys\n"
        "from moldbatch.cli import cli\n"
        "for cmd in (['validate', sys.argv[1]], ['plan', sys.argv[1], '--json']):\n"
        "    try:\n"
        "        cli(cmd, standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(spec)], capture_output=True, text=True, check=True
    )
    assert res.stdout.strip().splitlines()[-1] == "[]"


LADDER = """\
version: 1
defaults: {model: ltx-2-tiny:random, width: 128, height: 128, fps: 24, steps: 2}
shots:
  - {id: dev, prompt: a lighthouse, frames: 25, clip_frames: 17, motion_tail: 9, pipeline: two-stage}
  - {id: big, prompt: a harbour, frames: 25, clip_frames: 17, motion_tail: 9, spatial_upscale: x2}
"""


def test_refine_ladders_render_the_same_bytes_on_ray(tmp_path, cluster):
    """A refine holds the previous clip's refined tail: on Ray it reads that stage's artifact
    from another worker or the driver and still gives the local bytes."""
    local, remote = tmp_path / "local", tmp_path / "ray"
    local.mkdir()
    remote.mkdir()
    spec = write(local, "film.yaml", LADDER)
    assert render_plan(plan_file(spec), progress=False, runtimes={}).ok
    plan = plan_file(write(remote, "film.yaml", LADDER))
    assert media_needs(plan.stage("dev/refine-1").needs) == ["dev/clip-1", "dev/refine-0"]
    assert media_needs(plan.stage("big/upscale-1").needs) == ["big/clip-1", "big/upscale-0"]
    # their prompts' encodes are rendered once, on a worker, and read by every other one
    assert ray_render(remote / "film.yaml").ok
    ours, theirs = ArtifactStore(remote / ".moldbatch"), ArtifactStore(local / ".moldbatch")
    for stage in plan.stages:
        assert ours.get(stage.key).manifest["files"] == theirs.get(stage.key).manifest["files"]
    for name in ("dev.mp4", "big.mp4"):
        assert (remote / "renders" / name).read_bytes() == (local / "renders" / name).read_bytes()
