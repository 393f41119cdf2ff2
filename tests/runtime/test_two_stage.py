"""The two-stage pipeline and the refine pass on the real tiny LTX-2 pipeline (no mocks):
half-size first pass, x2 latent upsample, refine with the distilled LoRA, chains that hold
the refined tail, and spatial upscales that refine."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from moldbatch.execute.handlers import LATENTS, load_media
from moldbatch.execute.store import ArtifactStore
from moldbatch.media.probe import probe
from moldbatch.plan.planner import plan_file
from moldbatch.plan.types import encode_needs, media_needs
from moldbatch.review.cost import REFINE_STEPS, estimate
from moldbatch.runtime import Runtime
from moldbatch.runtime.carry import carried_video_latent_frames
from moldbatch.runtime.lora import DISTILLED_LORA
from moldbatch.runtime.requests import Refine

from conftest import render_spec, tiny_clip, write

MODEL = "ltx-2-tiny:random"
HEAD = f"""\
version: 1
defaults:
  model: {MODEL}
  fps: 24
  steps: 2
  seed: 3
"""


@pytest.fixture(scope="module")
def runtimes() -> dict:
    return {MODEL: Runtime.load(MODEL)}


def latents(store: ArtifactStore, plan, stage_id: str) -> dict[str, torch.Tensor]:
    return load_file(str(store.get(plan.stage(stage_id).key).file(LATENTS)))


def test_two_stage_renders_half_size_then_refines_to_the_render_size(tmp_path, runtimes) -> None:
    spec = write(
        tmp_path,
        "film.yaml",
        HEAD + "shots:\n  - {id: dev, prompt: a lighthouse at night, frames: 17,"
        " width: 128, height: 128, pipeline: two-stage}\n",
    )
    plan, store = render_spec(spec, runtimes)
    clip, refine = plan.stage("dev/clip-0"), plan.stage("dev/refine-0")
    assert (clip.params.width, clip.params.height) == (64, 64)
    assert refine.kind == "refine" and media_needs(refine.needs) == ["dev/clip-0"]
    assert [plan.stage(n).params.prompt for n in encode_needs(refine.needs)] == [
        refine.params.refine.prompt
    ]  # the refine reads its prompt's stored encoding
    assert refine.params.spatial == "x2" and refine.params.refine.prompt.startswith("a l")
    assert plan.stage("dev/stitch").needs == ["dev/refine-0"]
    first = load_media(store.get(clip.key))[0]
    second = load_media(store.get(refine.key))[0]
    assert first.shape == (17, 64, 64, 3) and second.shape == (17, 128, 128, 3)
    info = probe(tmp_path / "renders" / "dev.mp4")
    assert (info.frames, info.width, info.height) == (17, 128, 128) and info.has_audio
    # the refine ran with the tiny model's distilled LoRA (the tiny model is not distilled)
    assert any(DISTILLED_LORA in name for name in runtimes[MODEL]._loras.loaded)
    # the refine is a real denoising pass: not the bare x2 upsample of the first pass
    rt = runtimes[MODEL]
    bare = rt.decode_video(rt.upscale_spatial(latents(store, plan, "dev/clip-0")["video"]))
    assert (abs(bare.astype(int) - second.astype(int))).mean() > 0.5
    cost = estimate(plan).stages["dev/refine-0"]
    assert cost.steps == REFINE_STEPS and cost.gpu_seconds > 0


def test_a_size_off_the_64_grid_is_refused_with_the_nearest_sizes(tmp_path) -> None:
    """The first pass is exactly half the render size (its x2 is the render size, so image
    and keyframe conditions line up in both passes): 160 px cannot be halved onto the grid."""
    spec = write(
        tmp_path,
        "film.yaml",
        HEAD + "shots:\n  - {id: odd, prompt: a desert road, frames: 9, width: 160, height: 128,"
        " pipeline: two-stage, audio: false}\n",
    )
    plan = plan_file(spec)
    assert not plan.valid
    (error,) = plan.errors
    assert "width 160: the two-stage pipeline renders a first pass at half the size" in str(error)
    assert "nearest valid widths: 128 or 192" in str(error)


def test_chained_refines_hold_the_previous_refined_tail(tmp_path, runtimes) -> None:
    spec = write(
        tmp_path,
        "film.yaml",
        HEAD
        + """\
shots:
  - id: walk
    frames: 25
    clip_frames: 17
    motion_tail: 9
    width: 128
    height: 128
    pipeline: two-stage
    prompts: [a corridor of mirrors, a door opens to a garden]
""",
    )
    plan, store = render_spec(spec, runtimes)
    assert media_needs(plan.stage("walk/refine-1").needs) == ["walk/clip-1", "walk/refine-0"]
    k = carried_video_latent_frames(9)
    rt = runtimes[MODEL]
    # first pass: the last 9 frames of clip 0, encoded again, come back exactly (held clean),
    # at half size
    c1 = latents(store, plan, "walk/clip-1")["video"]
    f0 = load_media(store.get(plan.stage("walk/clip-0").key))[0]
    assert torch.equal(c1[:, :, :k], rt.encode_video(f0[-9:]))
    # second pass: the refined tail of clip 0 is held at the start of clip 1's refine
    r1 = latents(store, plan, "walk/refine-1")["video"]
    g0 = load_media(store.get(plan.stage("walk/refine-0").key))[0]
    assert r1.shape[3:] == (4, 4)
    assert torch.equal(r1[:, :, :k], rt.encode_video(g0[-9:]))
    assert not torch.equal(r1[:, :, k:], torch.zeros_like(r1[:, :, k:]))
    # the audio latents pass through every refine unchanged
    assert torch.equal(
        latents(store, plan, "walk/refine-1")["audio"], latents(store, plan, "walk/clip-1")["audio"]
    )
    info = probe(tmp_path / "renders" / "walk.mp4")
    assert (info.frames, info.width, info.height) == (25, 128, 128)


def test_spatial_upscale_refines_with_the_clip_prompt_and_image(tmp_path, runtimes) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "red.png")
    spec = write(
        tmp_path,
        "film.yaml",
        HEAD + "shots:\n  - {id: big, prompt: a red door, frames: 17, width: 128, height: 128,"
        " spatial_upscale: x2, image: red.png, temporal_upscale: x2, audio: false}\n",
    )
    plan, store = render_spec(spec, runtimes)
    up = plan.stage("big/upscale-0")
    assert up.params.refine.image.path.endswith("red.png")
    assert up.params.temporal == "x2" and plan.stage("big/clip-0").params.frames == 9
    # the stage keeps the refined latents before the temporal upsampler (what a carry holds)
    assert latents(store, plan, "big/upscale-0")["video"].shape[2:] == (2, 4, 4)
    assert load_media(store.get(up.key))[0].shape == (17, 128, 128, 3)


def test_refine_conditions_on_the_image_and_is_deterministic(runtimes) -> None:
    rt = runtimes[MODEL]
    clip = rt.render_clip(tiny_clip(prompt="a tower", frames=9, audio=False))
    up = rt.upscale_spatial(clip.video_latents)
    plain = rt.refine(up, Refine("a tower", seed=1), fps=24.0)
    assert torch.equal(plain, rt.refine(up, Refine("a tower", seed=1), fps=24.0))
    assert not torch.equal(plain, rt.refine(up, Refine("a tower", seed=2), fps=24.0))
    assert not torch.equal(plain, rt.refine(up, Refine("a bridge", seed=1), fps=24.0))


def test_first_pass_settings_follow_the_reference_recipes() -> None:
    """What each family's first pass asks of the pipeline (the real models cannot run here)."""
    from diffusers.pipelines.ltx2.utils import DEFAULT_NEGATIVE_PROMPT, DISTILLED_SIGMA_VALUES

    from moldbatch.runtime.registry import model_info
    from moldbatch.runtime.sampling import dev_sigmas, negative_prompt_for, sampling_kwargs

    # the guided schedule: shift of 4096 tokens, stretched to end at 0.1 (worked by hand for 3)
    assert dev_sigmas(3) == pytest.approx([1.0, 0.73418, 0.1], abs=1e-4)
    thirty = dev_sigmas(30)
    assert len(thirty) == 30 and thirty[0] == 1.0 and thirty[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(thirty, thirty[1:], strict=False))

    dev = model_info("ltx-2.3-22b-dev:fp8")
    req = tiny_clip(model=dev.name, steps=30, guidance=3.0)
    got = sampling_kwargs(dev, req)
    assert got["sigmas"] == thirty and got["guidance_scale"] == 3.0
    assert got["spatio_temporal_guidance_blocks"] == [28]
    assert negative_prompt_for(dev, req) == DEFAULT_NEGATIVE_PROMPT  # none given: Lightricks'
    assert negative_prompt_for(dev, dataclasses.replace(req, negative_prompt="rain")) == "rain"

    distilled = model_info("ltx-2-19b-distilled:fp8")
    req = tiny_clip(model=distilled.name, steps=8, guidance=3.0)
    got = sampling_kwargs(distilled, req)
    assert got["sigmas"] == list(DISTILLED_SIGMA_VALUES) and got["guidance_scale"] == 1.0
    assert negative_prompt_for(distilled, req) == ""  # no guidance: no negative prompt
