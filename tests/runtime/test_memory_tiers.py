"""Memory tiers: the same bytes in every tier, the estimates `auto` chooses by, a film that fits
no tier refused before it starts, an out-of-memory as one line, and the host memory the
sequential tier saves, measured."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from moldbatch.errors import MoldbatchError, StageFailed
from moldbatch.execute.executor import render_plan
from moldbatch.models import GB, MEMORY_TIERS, MODELS, peak_bytes, tier_for
from moldbatch.plan.planner import plan_file
from moldbatch.runtime import memory

from conftest import tiny_clip, write

TINY = "ltx-2-tiny:random"
FILM = """\
version: 1
defaults: {model: ltx-2-tiny:random, width: 64, height: 64, guidance: 1.0}
shots:
  - id: walk
    frames: 30
    clip_frames: 17
    motion_tail: 1
    prompts: [a quiet harbour, boats at dusk]
"""


def test_every_tier_renders_a_clip_byte_identical_to_resident():
    from moldbatch.runtime import Runtime

    got = {}
    for tier in MEMORY_TIERS:
        rt = Runtime(TINY, device="cpu", memory=tier)
        assert rt.denoiser_loaded is (tier == "resident")  # the others load it on first use
        r = rt.render_clip(tiny_clip(frames=9, guidance=3.0, negative_prompt="blur"))
        got[tier] = (r.frames.tobytes(), r.audio.tobytes(), r.video_latents.numpy().tobytes())
        if tier == "streamed":  # the transformer's blocks run under group-offloading hooks
            block = rt.pipe.transformer.transformer_blocks[0]
            assert getattr(block, "_diffusers_hook", None) is not None
        assert rt.text_encoder_loaded is (tier == "resident")
    assert got["sequential"] == got["resident"]
    assert got["streamed"] == got["resident"]


def test_the_released_text_encoder_holds_no_weights():
    from moldbatch.runtime import Runtime

    rt = Runtime(TINY, device="cpu", memory="sequential")
    rt.encode_text("a kite")
    encoder = rt._text_encoder
    assert sum(p.numel() for p in encoder.parameters()) > 0
    rt.pipe  # noqa: B018 - the denoiser loads: the text encoder goes first
    assert not rt.text_encoder_loaded
    assert all(p.numel() == 0 for p in encoder.parameters())


def test_estimates_fall_with_each_tier_and_grow_with_the_clip():
    for m in MODELS.values():
        if m.built_in:
            continue
        full = [peak_bytes(m, t, 1216, 704, 97) for t in MEMORY_TIERS]
        assert full[0] > full[1] > full[2]
        assert peak_bytes(m, "streamed", 1216, 704, 97) > peak_bytes(m, "streamed", 608, 352, 97)
    distilled = MODELS["ltx-2-19b-distilled:fp8"]
    need = [(distilled, 1216, 704, 97)]
    # the cards people have: what auto takes on each (README, "Which GPU")
    assert tier_for(need, 80 * GB) == "resident"
    assert tier_for(need, 48 * GB) == "sequential"
    assert tier_for(need, 24 * GB) == "streamed"
    assert tier_for(need, 8 * GB) is None


def test_auto_takes_the_fastest_tier_that_fits_the_free_memory(monkeypatch):
    need = [(MODELS["ltx-2.3-22b-distilled:fp8"], 1216, 704, 97)]
    for free, want in ((80, "resident"), (40, "sequential"), (24, "streamed")):
        monkeypatch.setattr(memory, "device_memory", lambda device, f=free: (f * GB, f * GB))
        assert memory.choose_tier("auto", need, "cuda") == want
    assert memory.choose_tier("sequential", need, "cuda") == "sequential"  # as asked
    monkeypatch.setattr(memory, "device_memory", lambda device: (6 * GB, 8 * GB))
    with pytest.raises(MoldbatchError, match="needs ~.* GB even streamed"):
        memory.choose_tier(None, need, "cuda")
    monkeypatch.setattr(memory, "device_memory", lambda device: None)  # no CUDA
    assert memory.choose_tier(None, need, None) == "resident"
    monkeypatch.setenv(memory.MEMORY_ENV, "streamed")
    assert memory.choose_tier(None, need, None) == "streamed"
    monkeypatch.setenv(memory.MEMORY_ENV, "tiny")
    with pytest.raises(MoldbatchError, match="memory tier 'tiny'"):
        memory.choose_tier(None, need, None)


def test_a_film_that_fits_no_tier_is_refused_before_it_starts(film_dir: Path, monkeypatch):
    dev = FILM.replace("ltx-2-tiny:random", "ltx-2-19b-dev:fp8").replace("64", "1024")
    spec = write(film_dir, "film.yaml", dev)
    plan = plan_file(spec)
    assert plan.valid, [str(d) for d in plan.diagnostics]
    monkeypatch.setattr(memory, "device_memory", lambda device: (4 * GB, 8 * GB))
    with pytest.raises(MoldbatchError, match="even streamed"):
        render_plan(plan, progress=False, memory="auto")
    assert not (film_dir / ".moldbatch" / "artifacts").exists()


class OutOfMemoryOnTheSecondClip:
    """A real runtime whose second clip runs out of CUDA memory."""

    def __init__(self, runtime):
        self.runtime, self.clips = runtime, 0

    def __getattr__(self, name):
        return getattr(self.runtime, name)

    def render_clip(self, req, on_step=None):
        self.clips += 1
        if self.clips == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return self.runtime.render_clip(req, on_step=on_step)


def test_an_out_of_memory_is_one_line_naming_stage_and_tier(film_dir: Path):
    from moldbatch.runtime import Runtime

    plan = plan_file(write(film_dir, "film.yaml", FILM))
    runtimes = {TINY: OutOfMemoryOnTheSecondClip(Runtime(TINY, device="cpu"))}
    with pytest.raises(StageFailed) as failed:
        render_plan(plan, progress=False, runtimes=runtimes, memory="sequential")
    message = str(failed.value).splitlines()[0]
    assert "walk/clip-1: out of GPU memory in the sequential memory tier" in message
    assert "try --memory streamed" in message
    done = {o.id for o in failed.value.summary.stages if o.status == "rendered"}
    assert {"walk/clip-0"} | {s.id for s in plan.stages if s.kind == "encode"} <= done


def test_the_out_of_memory_hint_goes_down_the_tiers():
    assert "try --memory sequential" in memory.oom_message("a/clip-0", "resident")
    assert "smaller size" in memory.oom_message("a/clip-0", "streamed")


@pytest.mark.slow
def test_sequential_peaks_lower_on_the_host_by_most_of_the_text_encoder():
    """A child process's max RSS (benchmarks/bench_memory.py), a 300 MB text encoder."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_memory
    import numpy as np

    # a parent larger than either child (as a long test run is): its peak must not show in
    # theirs (ru_maxrss would carry it over the exec)
    ballast = np.ones(1_500_000_000 // 8)
    resident, sequential = bench_memory.run(300, ("resident", "sequential"))
    del ballast
    text = resident["text_encoder_mb"]
    assert text >= 300
    assert resident["max_rss_mb"] - sequential["max_rss_mb"] >= 0.8 * text, (resident, sequential)


def test_render_takes_memory_and_refuses_an_unknown_tier(film_dir: Path):
    from click.testing import CliRunner

    from moldbatch.cli import cli

    spec = write(film_dir, "film.yaml", FILM)
    res = CliRunner().invoke(cli, ["render", str(spec), "--memory", "huge"])
    assert res.exit_code == 2 and "huge" in res.output
    assert "--memory" in CliRunner().invoke(cli, ["render", "--help"]).output


def test_models_and_plan_show_the_estimate(film_dir: Path):
    import json

    from click.testing import CliRunner

    from moldbatch.cli import cli

    doc = json.loads(CliRunner().invoke(cli, ["models", "--json"]).output)
    dev = next(m for m in doc if m["name"] == "ltx-2-19b-dev:fp8")
    assert list(dev["gpu_memory_gb"]) == list(MEMORY_TIERS)
    assert dev["gpu_memory_gb"]["resident"] > dev["gpu_memory_gb"]["streamed"] > 10
    dev_film = FILM.replace("ltx-2-tiny:random", "ltx-2-19b-dev:fp8").replace("64", "1024")
    out = CliRunner().invoke(cli, ["plan", str(write(film_dir, "film.yaml", dev_film))]).output
    assert "GPU memory: needs ~" in out and "GB sequential, ~" in out and "streamed" in out
