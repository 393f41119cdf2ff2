"""IC-LoRA on the real tiny LTX-2 pipeline (diffusers' LTX2InContextPipeline with moldbatch's
held latents), end to end: spec -> planner -> executor -> runtime -> PyAV (no mocks)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from moldbatch.execute.handlers import LATENTS, load_media
from moldbatch.media.encode import write_video
from moldbatch.media.probe import probe
from moldbatch.runtime import Lora, Runtime, RuntimeFeatureError
from moldbatch.runtime.carry import carried_video_latent_frames
from moldbatch.runtime.lora import reference_downscale_factor
from moldbatch.runtime.tiny import random_lora

from conftest import render_spec, tiny_clip, write

MODEL = "ltx-2-tiny:random"
SHOT = f"""\
version: 1
defaults: {{model: {MODEL}, width: 64, height: 64, fps: 24, steps: 2, seed: 4}}
shots:
  - id: dance
    pipeline: ic-lora
    video: source.mp4
    loras: [{{path: ic.safetensors}}]
    frames: 25
    clip_frames: 17
    motion_tail: 9
    prompts: [a dancer in a red coat, the dancer spins]
"""


@pytest.fixture(scope="module")
def runtimes() -> dict:
    return {MODEL: Runtime.load(MODEL)}


def _source(path: Path, seed: int) -> Path:
    """A 1.5 s source video whose frames all differ (a moving gradient plus noise)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (36, 64, 64, 3), dtype=np.uint8)
    frames[:, :, :, 0] = (np.arange(64)[None, None, :] * 4 + np.arange(36)[:, None, None] * 7) % 256
    return write_video(path, frames, 24)


def _lora(rt: Runtime, path: Path, factor: int | None) -> Path:
    meta = {"reference_downscale_factor": str(factor)} if factor else None
    save_file(random_lora(rt.pipe.transformer, "attn1.to_k", seed=9), path, metadata=meta)
    return path


def _render(folder: Path, runtimes):
    return render_spec(write(folder, "film.yaml", SHOT), runtimes)


def test_ic_lora_chain_follows_its_reference_and_carries(tmp_path, runtimes) -> None:
    rt = runtimes[MODEL]
    _source(tmp_path / "source.mp4", seed=0)
    _lora(rt, tmp_path / "ic.safetensors", factor=2)
    plan, store = _render(tmp_path, runtimes)
    shot = plan.shots[0]
    assert shot.pipeline == "ic-lora" and [c.frames for c in shot.clips] == [17, 17]
    # each clip follows its own stretch of the reference
    windows = [list(plan.stage(f"dance/clip-{i}").params.source_window) for i in (0, 1)]
    assert windows[0][0] == 0 and windows[1][0] == pytest.approx(8 / 24)
    info = probe(tmp_path / "renders" / "dance.mp4")
    assert (info.frames, info.width, info.height, info.has_audio) == (25, 64, 64, True)
    k = carried_video_latent_frames(9)
    c1 = load_file(str(store.get(plan.stage("dance/clip-1").key).file(LATENTS)))["video"]
    f0 = load_media(store.get(plan.stage("dance/clip-0").key))[0]
    # the carry holds on the in-context pipeline: clip 0's last 9 frames, encoded again
    assert torch.equal(c1[:, :, :k], rt.encode_video(f0[-9:]))

    # another reference video: new keys, and a different film
    other = tmp_path / "other"
    other.mkdir()
    _source(other / "source.mp4", seed=1)
    (other / "ic.safetensors").write_bytes((tmp_path / "ic.safetensors").read_bytes())
    plan2, store2 = _render(other, runtimes)
    assert plan2.stage("dance/clip-0").key != plan.stage("dance/clip-0").key
    a = load_file(str(store.get(plan.stage("dance/clip-0").key).file(LATENTS)))["video"]
    b = load_file(str(store2.get(plan2.stage("dance/clip-0").key).file(LATENTS)))["video"]
    assert not torch.equal(a, b)  # (same prompts, seeds and LoRA: only the reference differs)


def test_reference_reaches_the_model_and_the_downscale_factor_is_read(tmp_path, runtimes) -> None:
    rt = runtimes[MODEL]
    scaled = _lora(rt, tmp_path / "scaled.safetensors", factor=2)
    plain = _lora(rt, tmp_path / "plain.safetensors", factor=None)
    assert reference_downscale_factor([Lora(str(plain)), Lora(str(scaled))]) == 2
    assert reference_downscale_factor([Lora(str(plain))]) == 1
    slow = tmp_path / "slow.safetensors"
    save_file(
        random_lora(rt.pipe.transformer, "attn1.to_k", seed=9),
        slow,
        metadata={"reference_temporal_scale_factor": "2"},
    )
    with pytest.raises(RuntimeFeatureError, match="reference_temporal_scale_factor"):
        reference_downscale_factor([Lora(str(slow))])
    req = tiny_clip(prompt="a dancer", frames=9, audio=False, loras=[Lora(str(scaled))])
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)
    first = rt.render_clip(dataclasses.replace(req, reference_frames=ref))
    again = rt.render_clip(dataclasses.replace(req, reference_frames=ref))
    other = rt.render_clip(dataclasses.replace(req, reference_frames=255 - ref))
    without = rt.render_clip(req)
    assert np.array_equal(first.frames, again.frames)
    assert not torch.equal(first.video_latents, other.video_latents)
    assert not torch.equal(first.video_latents, without.video_latents)
    assert first.frames.shape == (9, 64, 64, 3)
