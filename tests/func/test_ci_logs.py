"""A render as a CI job sees it: output piped into a log, a job cancelled with SIGTERM, a
light install (no torch) on the runner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import shot_counts, wait_until_rendered, write

pytestmark = pytest.mark.slow  # renders through subprocesses

SPEC = """\
version: 1
defaults: {model: ltx-2-tiny:random, width: 64, height: 64, steps: 12}
shots:
  - {id: a, prompt: a red kite over dunes, frames: 9}
  - {id: b, prompt: a blue kite over the sea, frames: 9}
  - {id: c, prompt: a green kite over a field, frames: 9}
"""

ENV = {**os.environ, "CI": "true", "GITHUB_ACTIONS": "true", "TERM": "dumb"}


def timed_lines(proc: subprocess.Popen) -> list[tuple[float, str]]:
    """(seconds since the start, line) of each stderr line, as it arrives through the pipe."""
    t0 = time.monotonic()
    lines = []
    for line in proc.stderr:
        lines.append((time.monotonic() - t0, line.rstrip("\n")))
    return lines


@pytest.mark.parametrize("as_json", [False, True])
def test_piped_render_output_arrives_stage_by_stage(tmp_path: Path, as_json: bool):
    write(tmp_path, "film.yaml", SPEC)
    args = ["render", "film.yaml"] + (["--json"] if as_json else [])
    proc = subprocess.Popen(
        [sys.executable, "-m", "moldbatch", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))
    reader.start()
    lines = timed_lines(proc)
    assert proc.wait(120) == 0
    reader.join()
    end = lines[-1][0]
    stage_lines = [(t, text) for t, text in lines if text.startswith("moldbatch: [")]
    total = int(stage_lines[0][1].split("/", 1)[1].split("]", 1)[0])  # the text phase's too
    assert total == 9 + 4  # 9 stages of shots, 4 encodes (3 prompts, the empty negative)
    assert len(stage_lines) == 2 * total, lines  # each stage started and rendered
    started = [text for _, text in stage_lines if " started " in text and "encode/" not in text]
    assert started[0].startswith(f"moldbatch: [5/{total}] a/clip-0 started (clip, 12 steps")
    rendered = [(t, text) for t, text in stage_lines if " rendered in " in text]
    assert rendered[-1][1].startswith(f"moldbatch: [{total}/{total}] c/export rendered in ")
    assert any("left" in text for _, text in rendered[:-1])  # the estimate of the time left
    # each line was in the log as its stage started or ended, not all at once at the end: the
    # first before the model had loaded, the first clip's end before the last stage's
    assert stage_lines[0][0] < end - 1.0, lines
    assert rendered[0][0] < rendered[-1][0], lines
    assert [t for t, _ in stage_lines] == sorted(t for t, _ in stage_lines)
    if as_json:
        assert json.loads(out[0])["ok"] is True  # stdout holds the document only
    else:
        assert out[0] == "" and "Done in" in lines[-2][1] + lines[-1][1]


def test_sigterm_mid_render_keeps_the_finished_stages_in_the_log(tmp_path: Path):
    write(tmp_path, "film.yaml", SPEC.replace("steps: 12", "steps: 30"))
    log = (tmp_path / "job.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moldbatch", "render", "film.yaml"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=ENV,
    )
    wait_until_rendered(proc, tmp_path / ".moldbatch", 3, encodes=False)
    assert proc.poll() is None, "the render finished before it could be cancelled"
    os.kill(proc.pid, signal.SIGTERM)  # what a cancelled or timed-out CI job sends
    assert proc.wait(60) == 130
    log.close()
    text = (tmp_path / "job.log").read_text()
    assert "a/clip-0 rendered in" in text and "a/export rendered in" in text, text
    assert "interrupted; run the same command again to resume (" in text
    assert "Traceback" not in text
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "moldbatch", "status", "--json", "film.yaml"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert status["last_run"]["status"] == "interrupted"
    assert status["counts"]["cached"] >= 3  # what was done is kept


LIGHT = (
    "import sys\n"
    "for m in ('torch', 'numpy', 'PIL', 'av', 'safetensors', 'diffusers'):\n"
    "    sys.modules[m] = None\n"
    "from moldbatch.cli import main\n"
    "sys.argv = ['moldbatch', *sys.argv[1:]]\n"
    "main()\n"
)


def test_render_on_the_light_install_says_what_to_install(tmp_path: Path):
    write(tmp_path, "film.yaml", SPEC.replace("steps: 12", "steps: 2"))
    light = [sys.executable, "-c", LIGHT, "render", "film.yaml"]
    res = subprocess.run(light, cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 3
    assert res.stderr.strip().splitlines() == [
        "moldbatch: rendering needs the GPU runtime (numpy, torch, av not installed): "
        'pip install "moldbatch[gpu]"'
    ]
    assert not (tmp_path / "renders").exists()
    # a film whose stages are all cached needs no torch: it is delivered as it is
    full = subprocess.run(
        [sys.executable, "-m", "moldbatch", "render", "film.yaml"],
        cwd=tmp_path,
        capture_output=True,
    )
    assert full.returncode == 0
    for f in (tmp_path / "renders").iterdir():
        f.unlink()
    res = subprocess.run(light + ["--json"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert shot_counts(doc)["cached"] == 9 and sorted(doc["outputs"]) == ["a", "b", "c"]
    assert all(Path(p).is_file() for p in doc["outputs"].values())
