"""Upscale stages on the real tiny LTX-2 pipeline: temporal x2, spatial x2 and x1.5 (no mocks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moldbatch.execute.handlers import load_media
from moldbatch.execute.store import ArtifactStore
from moldbatch.media.probe import probe, read_video
from moldbatch.runtime import ClipRequest, Runtime, RuntimeFeatureError
from moldbatch.runtime.requests import Refine

from conftest import TINY_HEAD as HEAD
from conftest import render_spec, write

MODEL = "ltx-2-tiny:random"


@pytest.fixture(scope="module")
def runtimes() -> dict:
    return {}


@pytest.fixture(scope="module")
def rt(runtimes) -> Runtime:
    runtimes[MODEL] = Runtime.load(MODEL)
    return runtimes[MODEL]


@pytest.fixture(scope="module")
def half_rate(rt: Runtime):
    """A 17-frame clip at 12 fps, as a 33-frame 24 fps shot with temporal x2 renders it."""
    return rt.render_clip(
        ClipRequest(
            model=MODEL,
            prompt="a kite over the sea",
            width=64,
            height=64,
            frames=17,
            fps=12.0,
            seed=5,
            steps=2,
            guidance=3.0,
        )
    )


# -- the runtime


def test_temporal_x2_maps_latent_frames_f_to_2f_minus_1(rt: Runtime, half_rate) -> None:
    up = rt.upscale_temporal(half_rate.video_latents)
    assert tuple(half_rate.video_latents.shape) == (1, 8, 3, 2, 2)
    assert tuple(up.shape) == (1, 8, 5, 2, 2)  # 17 frames -> 33
    result = rt.upscale(
        half_rate.video_latents,
        temporal="x2",
        audio=half_rate.audio,
        sample_rate=half_rate.sample_rate,
        fps=24.0,
    )
    assert result.frames.shape == (33, 64, 64, 3)
    # 17 frames at 12 fps last 34/24 s, one output frame longer than 33 frames at 24 fps
    assert half_rate.audio.shape[1] == round(17 / 12 * half_rate.sample_rate)
    assert result.audio.shape == (2, round(33 / 24 * half_rate.sample_rate))
    np.testing.assert_array_equal(result.audio, half_rate.audio[:, : result.audio.shape[1]])
    # the same trim without the output rate: from the rendered length
    again = rt.upscale(
        half_rate.video_latents, temporal="x2", audio=half_rate.audio, sample_rate=24000
    )
    assert again.audio.shape == result.audio.shape
    np.testing.assert_array_equal(again.frames, result.frames)  # deterministic


def test_spatial_scales_and_both_at_once(rt: Runtime, half_rate) -> None:
    x15 = rt.upscale(half_rate.video_latents, spatial="x1.5")
    assert tuple(x15.video_latents.shape) == (1, 8, 3, 3, 3)
    assert x15.frames.shape == (17, 96, 96, 3)
    both = rt.upscale(half_rate.video_latents, spatial="x2", temporal="x2")
    assert both.frames.shape == (33, 128, 128, 3)
    with pytest.raises(RuntimeFeatureError, match="x2 only"):
        rt.upscale(half_rate.video_latents, temporal="x3")
    with pytest.raises(RuntimeFeatureError, match="x1.5 only"):
        rt.upscale_spatial(half_rate.video_latents, 3.0)


def test_refine_after_a_spatial_upscale_is_deterministic_and_keeps_the_shape(
    rt: Runtime, half_rate
) -> None:
    up = rt.upscale_spatial(half_rate.video_latents, 2.0)
    kite = Refine("a kite over the sea", seed=5)
    refined = rt.refine(up, kite, fps=12.0, audio_latents=half_rate.audio_latents)
    assert refined.shape == up.shape and not torch.equal(refined, up)
    again = rt.refine(up, kite, fps=12.0, audio_latents=half_rate.audio_latents)
    assert torch.equal(refined, again)
    assert rt.decode_video(refined).shape == (17, 128, 128, 3)


def test_odd_latent_sizes_at_x1_5_are_cropped_to_the_planned_size(rt: Runtime) -> None:
    # 96 px is 3 latents; x1.5 gives 5 (160 px), cropped about the centre to the planned 144
    clip = rt.render_clip(
        ClipRequest(
            model=MODEL,
            prompt="dunes",
            width=96,
            height=64,
            frames=9,
            fps=24.0,
            seed=2,
            steps=2,
            guidance=1.0,
            audio=False,
        )
    )
    up = rt.upscale(clip.video_latents, spatial="x1.5", width=144, height=96)
    assert up.frames.shape == (9, 96, 144, 3)


# -- whole shots


def test_temporal_x2_shot_renders_the_planned_frames_fps_and_audio(tmp_path, runtimes, rt) -> None:
    spec = write(
        tmp_path,
        "film.yaml",
        HEAD + "shots:\n  - {id: slow, prompt: waves at dusk, frames: 33, temporal_upscale: x2}\n",
    )
    plan, _ = render_spec(spec, runtimes)
    shot = plan.shots[0]
    assert [c.frames for c in shot.clips] == [17] and shot.render_fps == 12
    clip = load_media(ArtifactStore(tmp_path / ".moldbatch").get(plan.stage("slow/clip-0").key))
    assert clip[0].shape[0] == 17
    info = probe(tmp_path / "renders" / "slow.mp4")
    assert (info.frames, info.width, info.height, info.fps) == (33, 64, 64, 24)
    assert info.has_audio and info.audio_duration == pytest.approx(33 / 24, abs=0.05)
    up_frames, up_audio, rate = load_media(
        ArtifactStore(tmp_path / ".moldbatch").get(plan.stage("slow/upscale-0").key)
    )
    assert up_frames.shape == (33, 64, 64, 3)
    assert up_audio.shape[1] == round(33 / 24 * rate)


@pytest.mark.slow
def test_two_clip_temporal_chain_stitches_to_the_planned_length(tmp_path, runtimes, rt) -> None:
    spec = write(
        tmp_path,
        "film.yaml",
        HEAD
        + """\
shots:
  - id: walk
    frames: 49
    clip_frames: 33
    motion_tail: 17
    temporal_upscale: x2
    prompts: [a forest path, a lake shore]
""",
    )
    plan, _ = render_spec(spec, runtimes)
    shot = plan.shots[0]
    # a tail of 17 output frames is 9 rendered ones (8m + 1 at the render rate)
    assert [c.frames for c in shot.clips] == [17, 17]
    assert plan.stage("walk/clip-1").params.conditions.carry_tail == 9
    frames, audio, rate = read_video(tmp_path / "renders" / "walk.mp4")
    assert frames.shape == (49, 64, 64, 3)
    assert audio is not None and audio.shape[1] == pytest.approx(49 / 24 * rate, abs=1024)


@pytest.mark.slow
def test_spatial_x2_shot_renders_at_twice_the_size(tmp_path, runtimes, rt) -> None:
    spec = write(
        tmp_path,
        "film.yaml",
        HEAD + "shots:\n  - {id: big, prompt: a harbour, frames: 9, width: 128, height: 128,"
        " spatial_upscale: x2}\n",
    )
    plan, _ = render_spec(spec, runtimes)
    assert (plan.shots[0].render_width, plan.shots[0].render_height) == (64, 64)
    info = probe(tmp_path / "renders" / "big.mp4")
    assert (info.frames, info.width, info.height, info.fps) == (9, 128, 128, 24)


@pytest.mark.parametrize(
    "role, kind",
    [
        ("spatial-x2", dict(spatial_upsample=True, temporal_upsample=False)),  # LTX-2.0: rational
        (
            "spatial-x2",
            dict(spatial_upsample=True, temporal_upsample=False, use_rational_resampler=False),
        ),  # LTX-2.3: conv + pixel shuffle
        (
            "spatial-x1.5",
            dict(spatial_upsample=True, temporal_upsample=False, rational_spatial_scale=1.5),
        ),
        ("temporal-x2", dict(spatial_upsample=False, temporal_upsample=True)),
    ],
)
def test_single_file_upsamplers_load_as_published(tmp_path, role, kind) -> None:
    """Lightricks ships each upsampler as one file with the module names diffusers uses; the
    loader tells the x2 variants apart by their weights."""
    from diffusers.pipelines.ltx2 import LTX2LatentUpsamplerModel
    from safetensors.torch import save_file

    from moldbatch.runtime.loading import _upsampler_from_file

    torch.manual_seed(1)
    model = LTX2LatentUpsamplerModel(
        in_channels=8, mid_channels=32, num_blocks_per_stage=1, dims=3, **kind
    ).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("blur_down.kernel")}
    save_file(state, tmp_path / "up.safetensors")
    loaded = _upsampler_from_file(tmp_path / "up.safetensors", role).eval()
    x = torch.randn(1, 8, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
