"""The render-side commands through the CLI: render, plan's cache column, status and gc."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shot_counts, wait_until_rendered, write

pytestmark = pytest.mark.slow  # renders through subprocesses, Ray, Chromium or training

SPEC = """\
version: 1
defaults: {model: ltx-2-tiny:random, width: 64, height: 64, steps: 2}
shots:
  - {id: a, prompt: a red kite over dunes, frames: 9}
  - {id: b, prompt: a blue kite over the sea, frames: 9, format: gif}
"""


def moldbatch(*args, cwd: Path):
    return subprocess.run(
        [sys.executable, "-m", "moldbatch", *args], cwd=cwd, capture_output=True, text=True
    )


def test_render_plan_status_and_gc_work_together(tmp_path: Path):
    write(tmp_path, "film.yaml", SPEC)
    before = json.loads(moldbatch("plan", "--json", "film.yaml", cwd=tmp_path).stdout)
    assert all(s["status"] == "pending" for s in before["stages"])

    res = moldbatch("render", "film.yaml", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)  # stdout holds only the JSON
    assert summary["ok"] and shot_counts(summary)["rendered"] == 6
    assert {k: Path(p).name for k, p in summary["outputs"].items()} == {"a": "a.mp4", "b": "b.gif"}
    assert all({"id", "status", "seconds"} <= set(s) for s in summary["stages"])

    after = json.loads(moldbatch("plan", "--json", "film.yaml", cwd=tmp_path).stdout)
    assert shot_counts(after) == {"cached": 6}
    table = moldbatch("plan", "film.yaml", cwd=tmp_path).stdout
    assert re.search(r"\b0 of \d+ stages will render", table), table

    status = json.loads(moldbatch("status", "--json", "film.yaml", cwd=tmp_path).stdout)
    assert shot_counts(status)["cached"] == 6 and status["last_run"]["status"] == "done"
    shown = moldbatch("status", "film.yaml", cwd=tmp_path).stdout
    assert re.search(r"\b(\d+) of \1 stages cached", shown), shown  # 6, and the text phase

    # drop shot b: its three artifacts (and its prompt's encode) are garbage for this spec,
    # shot a's are not
    write(tmp_path, "film.yaml", SPEC.rsplit("  - {id: b", 1)[0])
    dry = moldbatch("gc", "film.yaml", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0 and "would remove 4 artifacts" in dry.stdout
    assert "removed 4 artifacts" in moldbatch("gc", "film.yaml", cwd=tmp_path).stdout
    again = json.loads(moldbatch("render", "film.yaml", "--json", cwd=tmp_path).stdout)
    assert again["counts"]["rendered"] == 0 and shot_counts(again)["cached"] == 3


def test_render_of_an_invalid_spec_exits_1_and_renders_nothing(tmp_path: Path):
    write(tmp_path, "film.yaml", SPEC.replace("frames: 9}", "frames: 10}", 1))
    res = moldbatch("render", "film.yaml", cwd=tmp_path)
    assert res.returncode == 1
    assert "film.yaml:4:52: shots[0].frames: 10 frames is off the 8k+1 frame grid" in res.stderr
    assert not (tmp_path / ".moldbatch").exists() and not (tmp_path / "renders").exists()


def test_out_and_workdir_options_place_files(tmp_path: Path):
    write(tmp_path, "film.yaml", SPEC)
    res = moldbatch("render", "film.yaml", "--out", "deliver", "--workdir", "cache", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "deliver" / "a.mp4").is_file()
    assert (tmp_path / "cache" / "state.sqlite").is_file()
    assert not (tmp_path / "renders").exists()


def test_an_output_path_that_is_a_folder_fails_the_run_in_one_line(tmp_path: Path):
    write(tmp_path, "film.yaml", SPEC)
    (tmp_path / "renders" / "a.mp4").mkdir(parents=True)
    res = moldbatch("render", "film.yaml", "--json", cwd=tmp_path)
    assert res.returncode == 3
    assert "cannot write renders/a.mp4" in res.stderr and "Traceback" not in res.stderr
    summary = json.loads(res.stdout)  # --json still says what was done and kept
    assert summary["ok"] is False and shot_counts(summary)["rendered"] == 6
    (tmp_path / "renders" / "a.mp4").rmdir()
    again = json.loads(moldbatch("render", "film.yaml", "--json", cwd=tmp_path).stdout)
    assert again["ok"] and again["counts"]["rendered"] == 0  # nothing re-renders: it is delivered


def test_gc_during_a_render_is_refused_in_one_line(tmp_path: Path):
    from moldbatch.execute.lock import WorkdirLock

    write(tmp_path, "film.yaml", SPEC)
    with WorkdirLock(tmp_path / ".moldbatch"):
        res = moldbatch("gc", "film.yaml", cwd=tmp_path)
        dry = moldbatch("gc", "film.yaml", "--dry-run", cwd=tmp_path)
    assert res.returncode == 3 and "in use by another moldbatch process" in res.stderr
    assert "Traceback" not in res.stderr
    assert dry.returncode == 0  # a dry run only reads


def test_a_malformed_manifest_counts_as_missing(tmp_path: Path):
    write(tmp_path, "film.yaml", SPEC)
    assert moldbatch("render", "film.yaml", cwd=tmp_path).returncode == 0
    manifests = sorted((tmp_path / ".moldbatch" / "artifacts").glob("*/*/manifest.json"))
    manifests[0].write_text("[]")
    bad = {"key": manifests[1].parent.name, "files": {}, "meta": {"file": "x"}}
    manifests[1].write_text(json.dumps(bad))
    res = moldbatch("render", "film.yaml", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["ok"]


def test_status_says_interrupted_after_a_kill(tmp_path: Path):
    import os
    import signal

    # a chain long enough that Ctrl-C lands mid-run: 8 clips of 30 steps
    write(
        tmp_path,
        "film.yaml",
        SPEC.replace("steps: 2", "steps: 30")
        + """\
  - {id: long, prompt: a long walk, frames: 68, clip_frames: 9, motion_tail: 1}
""",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "moldbatch", "render", "film.yaml"],
        cwd=tmp_path,
        stderr=subprocess.DEVNULL,
    )
    wait_until_rendered(proc, tmp_path / ".moldbatch", 1)
    assert proc.poll() is None, "the render finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGINT)  # Ctrl-C: a clean stop with exit 130
    assert proc.wait(60) == 130
    status = json.loads(moldbatch("status", "--json", "film.yaml", cwd=tmp_path).stdout)
    assert status["last_run"]["status"] == "interrupted"
