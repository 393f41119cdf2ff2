"""The GPU-time estimate: latent tokens, the rate table, calibration and the render budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moldbatch.models import MODELS
from moldbatch.plan.planner import plan_file
from moldbatch.review.cost import RATES, calibrate, estimate, latent_tokens, load_rates

from conftest import write

SPEC = """\
version: 1
defaults: {model: ltx-2-tiny:random, width: 64, height: 64, steps: 2}
shots:
  - {id: a, prompt: a red kite over dunes, frames: 9}
  - {id: b, prompt: a blue kite over the sea, frames: 40, clip_frames: 17, spatial_upscale: x2,
     width: 128, height: 128}
"""


def test_latent_tokens_follow_the_vae_grid():
    assert latent_tokens(97, 1216, 704) == 13 * 22 * 38
    assert latent_tokens(1, 64, 64) == 4
    assert latent_tokens(17, 64, 64) == 3 * 2 * 2


def test_every_model_has_a_documented_rate():
    assert set(RATES) == set(MODELS)
    assert all(r.seconds_per_token_step > 0 and r.source for r in RATES.values())


def test_estimate_per_stage(tmp_path):
    plan = plan_file(write(tmp_path, "film.yaml", SPEC))
    cost = estimate(plan)
    rate = RATES["ltx-2-tiny:random"].seconds_per_token_step
    a = cost.stages["a/clip-0"]
    assert (a.frames, a.tokens, a.steps) == (9, 2 * 2 * 2, 2)
    assert a.gpu_seconds == a.tokens * (a.steps + 1) * rate
    up = cost.stages["b/upscale-0"]
    assert up.tokens == latent_tokens(17, 128, 128) and up.gpu_seconds > 0
    assert cost.stages["b/stitch"].gpu_seconds == 0 and cost.stages["b/export"].frames == 40
    assert cost.gpu_seconds == sum(s.gpu_seconds for s in cost.stages.values())


def test_calibration_file_overrides_the_table(tmp_path, monkeypatch):
    table = tmp_path / "rates.json"
    rate = calibrate("ltx-2-tiny:random", 10.0, 1000, table, source="test bench")
    assert rate.seconds_per_token_step == 0.01
    monkeypatch.setenv("MOLDBATCH_COST_TABLE", str(table))
    rates = load_rates()
    assert rates["ltx-2-tiny:random"].seconds_per_token_step == 0.01
    assert rates["ltx-2-tiny:random"].source == "test bench"
    assert rates["ltx-2-19b-dev:fp8"] == RATES["ltx-2-19b-dev:fp8"]


def moldbatch(*args, cwd: Path):
    return subprocess.run(
        [sys.executable, "-m", "moldbatch", *args], cwd=cwd, capture_output=True, text=True
    )


def test_plan_shows_the_cost_and_render_refuses_over_budget(tmp_path):
    write(tmp_path, "film.yaml", SPEC)
    doc = json.loads(moldbatch("plan", "--json", "film.yaml", cwd=tmp_path).stdout)
    assert doc["cost"]["gpu_seconds"] > 0 and "ltx-2-tiny:random" in doc["cost"]["rates"]
    clip = next(s for s in doc["stages"] if s["kind"] == "clip")
    assert clip["cost"]["tokens"] == 8
    assert "estimated GPU time" in moldbatch("plan", "film.yaml", cwd=tmp_path).stdout

    res = moldbatch("render", "film.yaml", "--max-gpu-minutes", "0.0001", cwd=tmp_path)
    assert res.returncode == 4, res.stderr
    assert "over the budget" in res.stderr
    assert not (tmp_path / ".moldbatch" / "artifacts").exists()  # refused before it started


@pytest.mark.slow
def test_budget_counts_only_what_a_render_would_run(tmp_path):
    """With the clips' artifacts gone but the shots' outputs cached, a render runs nothing
    (it pulls from the outputs), so no budget is exceeded."""
    import shutil

    from moldbatch.execute.executor import render_plan
    from moldbatch.execute.store import ArtifactStore
    from moldbatch.review.cost import over_budget

    plan = plan_file(write(tmp_path, "film.yaml", SPEC))
    assert render_plan(plan, progress=False).ok
    store = ArtifactStore(tmp_path / ".moldbatch")
    for stage in plan.stages:
        if stage.kind in ("clip", "upscale"):
            shutil.rmtree(store.dir_of(stage.key))
    assert over_budget(plan, None, 0.0) is None
    # the exported shot gone too: its stitch is cached, and an export takes no GPU time
    shutil.rmtree(store.dir_of(plan.stage("a/export").key))
    assert over_budget(plan, None, 0.0) is None
    shutil.rmtree(store.dir_of(plan.stage("a/stitch").key))
    refusal = over_budget(plan, None, 0.0)
    assert refusal and "stages not cached" in refusal
