"""Audio-to-video and retake on the real tiny LTX-2 pipeline, end to end (no mocks):
spec -> planner -> executor -> runtime -> PyAV."""

from __future__ import annotations

import dataclasses
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from moldbatch.execute.handlers import load_media
from moldbatch.execute.store import ArtifactStore
from moldbatch.media.encode import resample_audio, write_video
from moldbatch.media.probe import read_audio, read_video
from moldbatch.plan.planner import plan_file
from moldbatch.runtime import ClipRequest, Runtime, sources

from conftest import render_spec, write

MODEL = "ltx-2-tiny:random"
HEAD = f"""\
version: 1
defaults:
  model: {MODEL}
  width: 64
  height: 64
  fps: 24
  steps: 2
"""
RATE = 22050  # not the runtime's rate: the input is resampled


@pytest.fixture(scope="module")
def runtimes():
    return {}


@pytest.fixture(scope="module")
def rt(runtimes) -> Runtime:
    runtimes.setdefault(MODEL, Runtime.load(MODEL))
    return runtimes[MODEL]


def _tone(seconds: float, rate: int) -> np.ndarray:
    """A mono chirp (so every stretch of it is different), float32 [1, S]."""
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * (220 * t + 60 * t * t))).astype(np.float32)[None]


def _write_wav(path: Path, audio: np.ndarray, rate: int) -> Path:
    pcm = np.round(np.clip(audio[0], -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.shape[-1], b.shape[-1])
    return float(np.corrcoef(a[..., :n].ravel(), b[..., :n].ravel())[0, 1])


# -- mel features and windows (no model)


def test_log_mel_has_the_audio_vae_layout_and_finds_the_tone():
    t = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)[None]
    mel = sources.log_mel(sources.stereo(tone), 16000, 160, 16)
    assert mel.shape == (1, 2, 101, 16)
    bank = sources.mel_filter_bank(16000, 1024, 16)
    peak = int(np.argmax(bank[round(1000 / 16000 * 1024)]))
    assert int(mel[0, 0, 50].argmax()) == peak
    assert torch.equal(mel[0, 0], mel[0, 1])


def test_retake_window_maps_conservatively_to_latent_frames():
    # frames floor(0.25 * 24) = 6 .. ceil(0.5 * 24) - 1 = 11, inside latent frames 1 and 2
    assert sources.retake_pixel_window((0.25, 0.5), 24, 33) == (6, 11)
    assert sources.regenerated_latent_frames((6, 11), 5) == [1, 2]
    assert sources.regenerated_latent_frames((0, 0), 5) == [0]
    assert sources.regenerated_latent_frames((8, 9), 5) == [1, 2]
    assert sources.retake_pixel_window((2.0, 3.0), 24, 17) is None
    assert sources.regenerated_latent_frames(None, 5) == []


# -- the runtime


def test_a2vid_holds_the_encoded_audio_and_returns_the_input(rt):
    audio = _tone(2.0, RATE)
    req = ClipRequest(
        model=MODEL, prompt="a drummer", width=64, height=64, frames=17, fps=24.0,
        seed=3, steps=2, guidance=3.0,
        audio_input=audio, audio_input_rate=RATE, audio_input_start=0.5,
    )  # fmt: skip
    result = rt.render_clip(req)
    held = rt.encode_audio(audio, RATE, 0.5, result.audio_latents.shape[2])
    assert torch.equal(result.audio_latents, held)  # held at timestep 0 through every step
    want = sources.cut(
        sources.stereo(resample_audio(audio, RATE, rt.sample_rate)),
        round(0.5 * rt.sample_rate),
        round(17 / 24 * rt.sample_rate),
    )
    np.testing.assert_array_equal(result.audio, want)
    plain = rt.render_clip(dataclasses.replace(req, audio_input=None, audio_input_rate=None))
    assert not np.array_equal(plain.frames, result.frames)  # the audio steers the video


def test_a2vid_tells_the_model_the_audio_is_clean_at_the_video_sigma(rt):
    """With the whole track held, every audio token has timestep 0 while the audio sigma (LTX-2.3's
    audio prompt modulation and the cross-attention gates read it) stays the step's, equal to the
    video's: the reference's frozen audio (a2vid_two_stage.py:205-209, noise 0, sigma kept)."""
    seen: list[dict] = []

    def hook(module, args, kwargs, output):  # after the pre-hooks: what forward received
        seen.append(
            {k: kwargs[k].detach().clone() for k in ("audio_timestep", "audio_sigma", "sigma")}
        )

    req = ClipRequest(
        model=MODEL, prompt="a drummer", width=64, height=64, frames=9, fps=24.0,
        seed=3, steps=2, guidance=1.0, audio_input=_tone(1.0, RATE), audio_input_rate=RATE,
    )  # fmt: skip
    handle = rt.pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        rt.render_clip(req)
        held = list(seen)
        seen.clear()
        rt.render_clip(dataclasses.replace(req, audio_input=None, audio_input_rate=None))
    finally:
        handle.remove()
    assert held and all(torch.all(c["audio_timestep"] == 0) for c in held)
    assert all(torch.equal(c["audio_sigma"], c["sigma"]) and c["sigma"].min() > 0 for c in held)
    assert all(torch.all(c["audio_sigma"] > 0) for c in seen)  # generated audio: noisy


# -- end to end


def test_a2vid_shot_carries_the_input_audio_in_sync(tmp_path, runtimes, rt):
    audio = _tone(1.5, RATE)
    _write_wav(tmp_path / "beat.wav", audio, RATE)
    spec = write(
        tmp_path,
        "film.yaml",
        HEAD + "shots:\n  - {id: drum, prompt: a drummer, frames: 17, audio_file: beat.wav}\n",
    )
    plan, _ = render_spec(spec, runtimes)
    assert plan.shots[0].pipeline == "a2vid"
    frames, got, rate = read_video(tmp_path / "renders" / "drum.mp4")
    assert frames.shape == (17, 64, 64, 3)
    source, source_rate = read_audio(tmp_path / "beat.wav")
    want = resample_audio(source, source_rate, rate)[:, : round(17 / 24 * rate)]
    assert _corr(got[0], want[0]) > 0.99
    # the stored clip is the input slice exactly (at the runtime's rate)
    store = ArtifactStore(tmp_path / ".moldbatch")
    _, clip_audio, clip_rate = load_media(store.get(plan.stage("drum/clip-0").key))
    exact = resample_audio(source, source_rate, clip_rate)[:, : round(17 / 24 * clip_rate)]
    np.testing.assert_array_equal(clip_audio[0], exact[0])


@pytest.mark.slow
def test_a2vid_chain_follows_each_window_and_keeps_the_audio_continuous(tmp_path, runtimes, rt):
    audio = _tone(2.0, RATE)
    _write_wav(tmp_path / "song.wav", audio, RATE)
    spec = write(
        tmp_path,
        "film.yaml",
        HEAD
        + """\
shots:
  - id: song
    frames: 25
    clip_frames: 17
    motion_tail: 9
    audio_file: song.wav
    prompts: [a singer, a crowd]
""",
    )
    plan, _ = render_spec(spec, runtimes)
    clips = [s for s in plan.stages if s.kind == "clip"]
    assert [list(s.params.audio_window) for s in clips] == [[0.0, 17 / 24], [8 / 24, 25 / 24]]
    store = ArtifactStore(tmp_path / ".moldbatch")
    rate = rt.sample_rate
    source, source_rate = read_audio(tmp_path / "song.wav")
    whole = resample_audio(source, source_rate, rate)
    stitched = load_media(store.get(plan.stage("song/stitch").key))[1]
    n = round(25 / 24 * rate)
    assert stitched.shape == (2, n)
    # clip 1 drops its first 9 frames: the stitched audio is the input, seam included
    np.testing.assert_array_equal(stitched[0], whole[0, :n])
    frames, got, mp4_rate = read_video(tmp_path / "renders" / "song.mp4")
    assert frames.shape == (25, 64, 64, 3)
    want = resample_audio(source, source_rate, mp4_rate)
    assert _corr(got[0], want[0, : got.shape[1]]) > 0.99


@pytest.fixture(scope="module")
def source_mp4(tmp_path_factory) -> Path:
    """A 33-frame 96x64 clip (not the render size) of moving bars, with a tone."""
    folder = tmp_path_factory.mktemp("src")
    y, x = np.mgrid[0:64, 0:96]
    frames = np.stack(
        [
            np.stack([(x * 3 + 8 * i) % 256, (y * 4) % 256, np.full_like(x, 40 + 5 * i)], -1)
            for i in range(33)
        ]
    ).astype(np.uint8)
    path = folder / "source.mp4"
    write_video(path, frames, 24, audio=_tone(33 / 24, 24000), sample_rate=24000, crf=12)
    return path


def _beside(folder: Path, source: Path) -> str:
    """The source copied into the spec's folder (a spec reads nothing outside its project)."""
    shutil.copy(source, folder / source.name)
    return source.name


def test_retake_keeps_the_source_outside_the_window(tmp_path, runtimes, rt, source_mp4):
    spec = write(
        tmp_path,
        "film.yaml",
        HEAD
        + f"""\
shots:
  - id: fix
    prompt: a red car drives past
    video: {_beside(tmp_path, source_mp4)}
    retake: {{start: 0.5, end: 0.9}}
""",
    )
    plan, _ = render_spec(spec, runtimes)
    shot = plan.shots[0]
    assert (shot.pipeline, shot.frames, [c.frames for c in shot.clips]) == ("retake", 33, [33])
    source, source_audio, source_rate = read_video(source_mp4)
    fitted = sources.fit_frames(source, 64, 64)
    store = ArtifactStore(tmp_path / ".moldbatch")
    clip, clip_audio, clip_rate = load_media(store.get(plan.stage("fix/clip-0").key))
    window = slice(12, 22)  # floor(0.5 * 24) .. ceil(0.9 * 24) - 1
    outside = np.ones(33, bool)
    outside[window] = False
    np.testing.assert_array_equal(clip[outside], fitted[outside])
    assert np.abs(clip[window].astype(int) - fitted[window]).mean() > 5
    # audio: the source's outside the window
    src = resample_audio(source_audio, source_rate, clip_rate)
    a, b = round(12 / 24 * clip_rate), round(22 / 24 * clip_rate)
    np.testing.assert_array_equal(clip_audio[0, :a], src[0, :a])
    np.testing.assert_array_equal(clip_audio[0, b:], src[0, b : clip_audio.shape[1]])
    # and the mp4: outside the window within the codec's tolerance of the source
    frames, _, _ = read_video(tmp_path / "renders" / "fix.mp4")
    assert frames.shape == (33, 64, 64, 3)
    err = np.abs(frames.astype(int) - fitted).reshape(33, -1).mean(1)
    assert err[outside].max() < 4
    assert err[window].min() > 5


@pytest.mark.slow
def test_an_upscaled_retake_still_keeps_the_source_outside_the_window(
    tmp_path, runtimes, rt, source_mp4
):
    """No refine (it would re-noise the kept frames): the upscale pastes the source back,
    at the output size."""
    spec = write(
        tmp_path,
        "film.yaml",
        HEAD
        + f"""\
shots:
  - id: fix
    prompt: a red car drives past
    video: {_beside(tmp_path, source_mp4)}
    retake: {{start: 0.5, end: 0.9}}
    width: 128
    height: 128
    spatial_upscale: x2
""",
    )
    plan, _ = render_spec(spec, runtimes)
    up = plan.stage("fix/upscale-0")
    assert up.params.refine is None and up.params.retake_source.retake.start == 0.5
    source, _, _ = read_video(source_mp4)
    fitted = sources.fit_frames(source, 128, 128)
    frames, _, _ = read_video(tmp_path / "renders" / "fix.mp4")
    assert frames.shape == (33, 128, 128, 3)
    outside = np.ones(33, bool)
    outside[12:22] = False
    err = np.abs(frames.astype(int) - fitted).reshape(33, -1).mean(1)
    assert err[outside].max() < 4
    assert err[~outside].min() > 5


def test_retake_holds_the_source_latents_outside_the_window(rt, source_mp4):
    source, _, _ = read_video(source_mp4)
    fitted = sources.fit_frames(source, 64, 64)[:17]
    req = ClipRequest(
        model=MODEL, prompt="a red car", width=64, height=64, frames=17, fps=24.0,
        seed=5, steps=2, guidance=3.0, source_frames=fitted, retake_window=(0.3, 0.6),
    )  # fmt: skip
    result = rt.render_clip(req)
    encoded = rt.encode_video(fitted)
    # pixels 7..14 sit in latent frames 1 and 2: latent 0 is held exactly, the rest is new
    assert torch.equal(result.video_latents[:, :, 0], encoded[:, :, 0])
    assert not torch.allclose(result.video_latents[:, :, 1:], encoded[:, :, 1:])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("retake: {start: 0.5, end: 9}", "past the end"),
        ("retake: {start: 0.8, end: 0.5}", "must be after its start"),
        ("pipeline: retake", "retake needs `retake"),
    ],
)
def test_retake_planner_errors_still_hold(tmp_path, source_mp4, fields, message):
    spec = write(
        tmp_path,
        "film.yaml",
        HEAD
        + f"shots:\n  - {{id: a, prompt: x, video: {_beside(tmp_path, source_mp4)}, {fields}}}\n",
    )
    plan = plan_file(spec)
    assert not plan.valid
    assert any(message in str(d) for d in plan.diagnostics), [str(d) for d in plan.diagnostics]


def test_a2vid_without_audio_file_is_refused(tmp_path):
    spec = write(tmp_path, "film.yaml", HEAD + "shots:\n  - {id: a, prompt: x, pipeline: a2vid}\n")
    plan = plan_file(spec)
    assert not plan.valid
    assert any("needs `audio_file`" in str(d) for d in plan.diagnostics)
