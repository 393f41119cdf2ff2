"""The runtime on the real diffusers LTX-2 pipeline with tiny random weights (no mocks)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from moldbatch.runtime import (
    ClipRequest,
    Lora,
    Runtime,
    RuntimeFeatureError,
    RuntimeLoadError,
    tiny,
)
from moldbatch.runtime import carry as carry_math
from moldbatch.runtime.ltx2 import pixel_to_latent_index

MODEL = "ltx-2-tiny:random"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def rt() -> Runtime:
    return Runtime.load(MODEL)


@pytest.fixture(scope="session")
def base() -> ClipRequest:
    return ClipRequest(
        model=MODEL,
        prompt="a red fox runs through deep snow",
        width=64,
        height=64,
        frames=17,
        fps=24.0,
        seed=7,
        steps=2,
        guidance=3.0,
    )


@pytest.fixture(scope="session")
def first(rt: Runtime, base: ClipRequest):
    return rt.render_clip(base)


@pytest.fixture(scope="session")
def image_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    # Not the render size or aspect: the pipeline must cover-resize and center-crop it.
    pixels = np.zeros((48, 80, 3), np.uint8)
    pixels[:, :40] = (255, 40, 0)
    pixels[::6] = 255
    path = tmp_path_factory.mktemp("img") / "cond.png"
    Image.fromarray(pixels).save(path)
    return path


def _digest(result) -> str:
    return hashlib.sha256(result.frames.tobytes() + result.audio.tobytes()).hexdigest()


# -- output shapes and timing


def test_frames_audio_and_latents_have_the_promised_shapes(
    rt: Runtime, base: ClipRequest, first
) -> None:
    assert first.frames.shape == (17, 64, 64, 3) and first.frames.dtype == np.uint8
    assert first.audio.dtype == np.float32 and first.audio.ndim == 2 and first.audio.shape[0] == 2
    assert first.sample_rate == rt.sample_rate == 24000
    assert abs(first.audio.shape[1] / first.sample_rate - base.frames / base.fps) < 0.002
    video_shape, audio_shape = rt.latent_shapes(base.frames, base.width, base.height, base.fps)
    assert tuple(first.video_latents.shape) == video_shape == (1, 8, 3, 2, 2)
    assert tuple(first.audio_latents.shape) == audio_shape
    assert first.video_latents.device.type == "cpu" and first.audio_latents.device.type == "cpu"
    assert np.isfinite(first.audio).all() and first.frames.std() > 0


def test_other_sizes_and_silent_clips(rt: Runtime, base: ClipRequest) -> None:
    silent = rt.render_clip(dataclasses.replace(base, frames=9, width=96, height=64, audio=False))
    assert silent.frames.shape == (9, 64, 96, 3)
    assert silent.audio is None and silent.audio_latents is None and silent.sample_rate is None
    assert tuple(silent.video_latents.shape) == (1, 8, 2, 2, 3)


def test_on_step_reports_every_denoising_step(rt: Runtime, base: ClipRequest) -> None:
    steps: list[tuple[int, int]] = []
    rt.render_clip(
        dataclasses.replace(base, frames=9, steps=3), on_step=lambda i, n: steps.append((i, n))
    )
    assert steps == [(1, 3), (2, 3), (3, 3)]


# -- determinism and loading once


@pytest.mark.slow
def test_same_request_gives_bitwise_identical_output(rt: Runtime, base: ClipRequest, first) -> None:
    again = rt.render_clip(base)
    assert np.array_equal(again.frames, first.frames)
    assert np.array_equal(again.audio, first.audio)
    assert torch.equal(again.video_latents, first.video_latents)
    other_seed = rt.render_clip(dataclasses.replace(base, seed=8))
    assert not np.array_equal(other_seed.frames, first.frames)


@pytest.mark.slow
def test_another_process_renders_the_same_bits(base: ClipRequest, first) -> None:
    script = textwrap.dedent(
        f"""
        import hashlib
        from moldbatch.runtime import ClipRequest, Runtime
        r = Runtime.load({MODEL!r}).render_clip(ClipRequest(**{dataclasses.asdict(base)!r}))
        print(hashlib.sha256(r.frames.tobytes() + r.audio.tobytes()).hexdigest())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == _digest(first)


def test_components_are_loaded_once_and_shared(rt: Runtime, base: ClipRequest, first) -> None:
    builds, transformer, vae = tiny.build_count, rt.pipe.transformer, rt.pipe.vae
    rt.render_clip(dataclasses.replace(base, frames=9))
    rt.upscale_spatial(first.video_latents)
    assert tiny.build_count == builds  # rendering and upscaling build nothing new
    assert rt.pipe.transformer is transformer and rt.pipe.vae is vae
    upsampler = rt.upsampler("spatial-x2")
    rt.upscale_spatial(first.video_latents)
    assert rt.upsampler("spatial-x2") is upsampler  # built with the runtime, kept
    Runtime.load(MODEL)
    assert tiny.build_count == builds + 1  # one build per Runtime, none per clip


def test_importing_the_runtime_package_does_not_import_torch() -> None:
    code = "import sys, moldbatch.runtime as r; r.carry_from; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )


# -- chain carry-over


def test_carry_holds_the_previous_tail_encoded_again(rt: Runtime, base: ClipRequest, first) -> None:
    # the last 9 decoded frames, encoded again: 2 latent frames (frame 0 alone, then 8), not
    # the previous clip's last 2 latents (whose first one stands for 8 frames)
    carry = rt.carry_from(first.frames, first.audio, first.sample_rate, tail_frames=9, fps=base.fps)
    assert carry.video.shape[2] == carry_math.carried_video_latent_frames(9) == 2
    torch.testing.assert_close(carry.video, rt.encode_video(first.frames[-9:]))
    assert not torch.allclose(carry.video, first.video_latents[:, :, -2:], atol=1e-3)
    # the sound from 9 / 24 s before the end: the latents wholly inside those 0.375 s
    n = carry_math.held_audio_latents(9 / 24)
    assert carry.audio.shape[2] == n == 10
    torch.testing.assert_close(
        carry.audio, rt.encode_audio(first.audio, first.sample_rate, 8 / 24, n)
    )

    nxt = dataclasses.replace(base, prompt="the fox stops and looks back", carry=carry)
    second = rt.render_clip(nxt)
    k, n_audio = carry.video.shape[2], carry.audio.shape[2]
    torch.testing.assert_close(second.video_latents[:, :, :k], carry.video, rtol=0, atol=1e-5)
    torch.testing.assert_close(second.audio_latents[:, :, :n_audio], carry.audio, rtol=0, atol=1e-5)

    # Without the carry the same request starts elsewhere: the match above is the carry's doing,
    # and the rest of the clip is still generated.
    free = rt.render_clip(dataclasses.replace(nxt, carry=None))
    assert (free.video_latents[:, :, :k] - carry.video).abs().max() > 0.1
    assert (free.audio_latents[:, :, :n_audio] - carry.audio).abs().max() > 0.1
    assert not torch.equal(second.video_latents[:, :, k:], free.video_latents[:, :, k:])
    assert second.frames.shape == first.frames.shape and second.audio.shape == first.audio.shape


def test_carry_math_on_the_real_time_grids() -> None:
    # 97 frames at 24 fps is 4.0417 s: 102 audio latents decode to 4.05 s, 101 would be 4.01 s.
    assert carry_math.audio_latent_length(97, 24.0) == 102
    assert carry_math.audio_latent_length(25, 25.0) == 26  # exactly 1 s
    assert (4 * carry_math.audio_latent_length(97, 24.0) - 3) / 100 >= 97 / 24
    assert [carry_math.carried_video_latent_frames(t) for t in (1, 9, 17, 25)] == [1, 2, 3, 4]
    # 8m + 1 tails are held whole; mold's other tails hold their first 8m + 1 frames
    assert [carry_math.held_frames(t) for t in (1, 4, 9, 16, 17, 25)] == [1, 1, 9, 9, 17, 25]
    # T = 17 at 24 fps is 0.708 s: 18 latents (69 mel frames, 0.69 s) lie wholly inside it
    assert carry_math.held_audio_latents(17 / 24) == 18
    assert (4 * 18 - 3) / 100 <= 17 / 24 < (4 * 19 - 3) / 100
    assert carry_math.held_audio_latents(1.0) == 25  # 97 mel frames, 0.97 s
    assert carry_math.tail_start(97, 17) == 80
    with pytest.raises(ValueError):
        carry_math.tail_start(17, 17)  # every clip must add a frame


def test_a_carry_encodes_the_tail_and_its_sound() -> None:
    """carry_from cuts the frames and the seconds; the runtime's encoders do the rest."""

    class Encoder:
        audio_latents_per_second = 25.0

        def encode_video(self, frames):
            return torch.from_numpy(frames[:, 0, 0, 0].astype(np.float32)).view(1, 1, -1, 1, 1)

        def encode_audio(self, audio, rate, start, length):
            return (start, length)

    frames = np.arange(97, dtype=np.uint8).reshape(97, 1, 1, 1).repeat(3, axis=3)
    audio = np.zeros((2, 97 * 1000), np.float32)  # 97 frames at 24 fps, 24 kHz
    carry = carry_math.carry_from(Encoder(), frames, audio, 24000, tail_frames=17, fps=24.0)
    assert carry.video.flatten().tolist() == list(range(80, 97))
    assert carry.audio == (80 / 24, 18) and carry.tail_frames == 17
    # mold's tail of 4 holds its first frame (one latent frame), the stitch drops all 4
    assert carry_math.carry_from(
        Encoder(), frames, None, tail_frames=4, fps=24.0
    ).video.flatten().tolist() == [93]
    # a temporal x2 clip's sound is cut short of its rendered length: only what it has is held
    short = carry_math.carry_from(
        Encoder(), frames, audio[:, :-600], 24000, tail_frames=17, fps=24.0
    )
    assert short.audio == (80 / 24, carry_math.held_audio_latents(17 / 24 - 0.025))
    assert carry_math.carry_from(Encoder(), frames, audio, 24000, tail_frames=0, fps=24.0) is None


def test_a_carry_must_match_the_clip_size(rt: Runtime, base: ClipRequest, first) -> None:
    carry = rt.carry_from(first.frames, tail_frames=9, fps=base.fps)
    with pytest.raises(RuntimeFeatureError, match="share a size"):
        rt.render_clip(dataclasses.replace(base, width=96, carry=carry))


# -- image, keyframe and LoRA conditioning


def test_image_conditioning_changes_the_clip(
    rt: Runtime, base: ClipRequest, first, image_path: Path
) -> None:
    conditioned = rt.render_clip(dataclasses.replace(base, image=image_path))
    assert conditioned.frames.shape == first.frames.shape
    assert np.abs(conditioned.frames.astype(int) - first.frames.astype(int)).mean() > 1.0
    assert np.array_equal(
        conditioned.frames, rt.render_clip(dataclasses.replace(base, image=image_path)).frames
    )


def test_keyframes_change_the_clip(rt: Runtime, base: ClipRequest, first, image_path: Path) -> None:
    keyed = rt.render_clip(dataclasses.replace(base, keyframes=[(16, image_path), (5, image_path)]))
    assert keyed.frames.shape == first.frames.shape
    assert not np.array_equal(keyed.frames, first.frames)
    assert [pixel_to_latent_index(f) for f in (0, 1, 8, 9, 16, 96)] == [0, 1, 1, 2, 2, 12]


def _write_lora(rt: Runtime, path: Path, suffix: str, seed: int) -> str:
    """A LoRA file on every tiny transformer Linear named `*suffix`, as `load_lora_weights` reads it."""
    from safetensors.torch import save_file

    from moldbatch.runtime.tiny import random_lora

    save_file(random_lora(rt.pipe.transformer, suffix, seed), path)
    return str(path)


def test_lora_applies_per_clip_and_switches_off(
    rt: Runtime, base: ClipRequest, tmp_path: Path
) -> None:
    pytest.importorskip("peft")
    style = _write_lora(rt, tmp_path / "style.safetensors", "attn1.to_q", seed=0)
    short = dataclasses.replace(base, frames=9)
    plain = rt.render_clip(short)
    styled = rt.render_clip(dataclasses.replace(short, loras=[Lora(style, 1.0)]))
    after = rt.render_clip(short)
    assert not np.array_equal(plain.frames, styled.frames)
    assert np.array_equal(plain.frames, after.frames)


def test_stacked_loras_combine_and_scale_zero_is_the_base(
    rt: Runtime, base: ClipRequest, tmp_path: Path
) -> None:
    pytest.importorskip("peft")
    style = _write_lora(rt, tmp_path / "style.safetensors", "attn1.to_q", seed=1)
    motion = _write_lora(rt, tmp_path / "motion.safetensors", "ff.net.2", seed=2)
    short = dataclasses.replace(base, frames=9)

    def render(*loras: Lora):
        return rt.render_clip(dataclasses.replace(short, loras=list(loras))).frames

    plain = render()
    alone_style, alone_motion = render(Lora(style, 1.0)), render(Lora(motion, 0.8))
    stacked = render(Lora(style, 1.0), Lora(motion, 0.8))
    outputs = [plain, alone_style, alone_motion, stacked]
    for i, a in enumerate(outputs):  # all four differ from each other
        for b in outputs[i + 1 :]:
            assert np.abs(a.astype(int) - b.astype(int)).mean() > 0.1
    # The stack is both: dropping one LoRA from it gives the other alone, bit for bit.
    assert np.array_equal(render(Lora(style, 1.0), Lora(motion, 0.0)), alone_style)
    # Scale 0 contributes nothing: exactly the base weights' output.
    assert np.array_equal(render(Lora(style, 0.0), Lora(motion, 0.0)), plain)
    assert np.array_equal(render(Lora(style, 0.0)), plain)
    assert rt._loras.loaded.keys() >= {str(Path(style).resolve()), str(Path(motion).resolve())}


# -- upscaling and errors


def test_spatial_x2_upscale_then_decode(rt: Runtime, first) -> None:
    up = rt.upscale_spatial(first.video_latents, 2.0)
    assert tuple(up.shape) == (1, 8, 3, 4, 4)
    assert rt.decode_video(up).shape == (17, 128, 128, 3)
    with pytest.raises(RuntimeFeatureError):
        rt.upscale_spatial(first.video_latents, 3.0)


def test_upscale_stage_entry_point_reads_saved_latents(rt: Runtime, first, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"video": first.video_latents.contiguous()}, tmp_path / "latents.safetensors")
    result = rt.upscale(
        tmp_path / "latents.safetensors",
        spatial="x2",
        temporal=None,
        audio=first.audio,
        sample_rate=first.sample_rate,
    )
    assert result.frames.shape == (17, 128, 128, 3) and result.audio is first.audio
    with pytest.raises(RuntimeFeatureError, match="temporal"):
        rt.upscale(first.video_latents, spatial=None, temporal="x4")


def test_bad_requests_and_models_raise_clear_errors(rt: Runtime, base: ClipRequest) -> None:
    with pytest.raises(RuntimeFeatureError, match="8k\\+1"):
        rt.render_clip(dataclasses.replace(base, frames=16))
    with pytest.raises(RuntimeFeatureError, match="multiples of 32"):
        rt.render_clip(dataclasses.replace(base, width=70))
    with pytest.raises(RuntimeFeatureError, match="holds"):
        rt.render_clip(dataclasses.replace(base, model="ltx-2-19b-distilled:fp8"))
    with pytest.raises(RuntimeLoadError, match="unknown model"):
        Runtime.load("ltx-3:nope")
