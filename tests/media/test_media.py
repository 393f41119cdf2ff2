"""Tests of moldbatch.media: stitching arithmetic, real PyAV encodes, probing and atomic writes."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from moldbatch.media.encode import write_video
from moldbatch.media.probe import probe, read_video
from moldbatch.media.stitch import fit_audio, join, stitch_audio, stitch_frames
from moldbatch.media.timing import fps_fraction, samples_for_frames

SR = 24000


# --------------------------------------------------------------------------- fixtures


def smooth_frames(n: int, h: int = 64, w: int = 96) -> np.ndarray:
    """Low-frequency moving gradients: survive yuv420p chroma subsampling almost intact."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i, ..., 0] = 128 + 90 * np.sin(xx / 19 + i * 0.2)
        out[i, ..., 1] = 128 + 90 * np.cos(yy / 13 - i * 0.1)
        out[i, ..., 2] = 128 + 60 * np.sin((xx + yy) / 29 + i * 0.3)
    return out


def tone(channels: int, samples: int, rate: int = SR) -> np.ndarray:
    t = np.arange(samples) / rate
    return np.stack(
        [0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)]
    ).astype(np.float32)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def const_clip(value: int, n: int, h: int = 4, w: int = 6) -> np.ndarray:
    """Frame k of the clip is filled with value + k, so every output frame names its source."""
    return np.stack([np.full((h, w, 3), value + k, np.uint8) for k in range(n)])


# --------------------------------------------------------------------------- timing


def test_fps_fraction_snaps_ntsc_and_keeps_integers():
    assert fps_fraction(24) == 24
    assert fps_fraction(25.0) == 25
    assert fps_fraction(23.976) == Fraction(24000, 1001)
    assert fps_fraction(29.97) == Fraction(30000, 1001)
    assert fps_fraction(Fraction(24000, 1001)) == Fraction(24000, 1001)
    assert fps_fraction(12.5) == Fraction(25, 2)
    with pytest.raises(ValueError):
        fps_fraction(0)


def test_samples_for_frames():
    assert samples_for_frames(24, 24, 24000) == 24000
    assert samples_for_frames(1, 23.976, 48000) == 2002  # 1001/24000 s * 48000
    assert samples_for_frames(121, 25, 24000) == 116160


# --------------------------------------------------------------------------- stitch frames


def test_stitch_smooth_drops_tail_of_later_clips():
    clips = [const_clip(0, 10), const_clip(100, 10), const_clip(200, 10)]
    out = stitch_frames(clips, "smooth", tail=3, fade_frames=0, total=24)
    assert out.shape == (24, 4, 6, 3)  # 10 + 7 + 7
    assert out[9, 0, 0, 0] == 9 and out[10, 0, 0, 0] == 103 and out[17, 0, 0, 0] == 203
    trimmed = stitch_frames(clips, "smooth", tail=3, fade_frames=0, total=20)
    np.testing.assert_array_equal(trimmed, out[:20])  # trimmed from the end


def test_stitch_cut_concatenates():
    clips = [const_clip(0, 5), const_clip(50, 6)]
    out = stitch_frames(clips, "cut", tail=3, fade_frames=2, total=11)
    assert [int(v) for v in out[:, 0, 0, 0]] == [0, 1, 2, 3, 4, 50, 51, 52, 53, 54, 55]


def test_stitch_fade_blends_overlap():
    a = np.zeros((8, 2, 2, 3), np.uint8)
    b = np.full((8, 2, 2, 3), 200, np.uint8)
    out = stitch_frames([a, b], "fade", tail=0, fade_frames=3, total=13)  # 8 + 8 - 3
    # Overlap frames 5, 6, 7 have clip b weights 1/4, 2/4, 3/4; the middle is the 50/50 mix.
    assert [int(v) for v in out[:, 0, 0, 0]] == [0] * 5 + [50, 100, 150] + [200] * 5
    three = stitch_frames([a, b, a], "fade", tail=0, fade_frames=3, total=18)
    assert three.shape[0] == 18  # 24 - 2 * 3
    assert int(three[6, 0, 0, 0]) == 100 and int(three[11, 0, 0, 0]) == 100


def test_stitch_fade_zero_is_cut():
    clips = [const_clip(0, 5), const_clip(50, 5)]
    np.testing.assert_array_equal(
        stitch_frames(clips, "fade", 0, 0, 10), stitch_frames(clips, "cut", 0, 0, 10)
    )


def test_stitch_errors():
    clips = [const_clip(0, 5), const_clip(50, 5)]
    with pytest.raises(ValueError, match="fewer than total"):
        stitch_frames(clips, "cut", 0, 0, 11)
    with pytest.raises(ValueError, match="transition"):
        stitch_frames(clips, "wipe", 0, 0, 5)
    with pytest.raises(ValueError, match="fade"):
        stitch_frames([clips[0], clips[1], clips[0]], "fade", 0, 3, 5)  # middle clip < 2 * 3
    with pytest.raises(ValueError, match="smooth"):
        stitch_frames(clips, "smooth", 5, 0, 5)
    with pytest.raises(ValueError):
        stitch_frames([const_clip(0, 5), const_clip(0, 5, h=8)], "cut", 0, 0, 5)


# --------------------------------------------------------------------------- stitch audio


@pytest.mark.parametrize(
    ("transition", "fps", "tail", "fade", "expected"),
    [
        ("cut", 24, 0, 0, 3 * 4000),  # a frame is 1000 samples at 24 fps / 24 kHz
        ("smooth", 24, 1, 0, 3 * 4000 - 2 * 1000),  # later clips drop 1 frame = 1000 samples
        ("fade", 48, 0, 1, 3 * 4000 - 2 * 500),  # 1 frame at 48 fps = 500-sample overlaps
    ],
)
def test_stitch_audio_lengths(transition, fps, tail, fade, expected):
    clips = [tone(2, 4000) for _ in range(3)]
    total = expected * fps // SR  # the whole stitched length, in frames
    out = stitch_audio(clips, transition, tail, fade, fps, SR, total)
    assert out.shape == (2, samples_for_frames(total, fps, SR)) == (2, expected)
    assert out.dtype == np.float32
    shorter = stitch_audio(clips, transition, tail, fade, fps, SR, total - 3)
    np.testing.assert_array_equal(shorter, out[:, : shorter.shape[1]])  # trimmed from the end


def test_stitch_audio_fade_midpoint_and_trim():
    a, b = np.zeros((1, 2000), np.float32), np.ones((1, 2000), np.float32)
    out = stitch_audio([a, b], "fade", 0, 1, 24, SR, 2)  # 1000-sample overlap, trimmed to 2000
    assert out.shape == (1, 2000)
    assert out[0, 999] == 0.0 and out[0, 1000] == pytest.approx(1 / 1001)
    assert out[0, 1499] == pytest.approx(500 / 1001) and out[0, 1999] == pytest.approx(1000 / 1001)


def test_stitch_audio_silence_padding_and_none():
    assert stitch_audio([None, None], "cut", 0, 0, 24, SR, 10) is None
    short = stitch_audio([tone(1, 9990)], "cut", 0, 0, 24, SR, 10)  # 10 short: padded
    assert short.shape == (1, 10000) and not short[0, 9990:].any()
    with pytest.raises(ValueError, match="short"):
        stitch_audio([tone(1, 5000)], "cut", 0, 0, 24, SR, 10)
    with pytest.raises(ValueError, match="clip_frames"):
        stitch_audio([tone(1, 4000), None], "cut", 0, 0, 24, SR, 8)
    filled = stitch_audio([tone(1, 3990), None], "cut", 0, 0, 24, SR, 8, clip_frames=[4, 4])
    assert filled.shape == (1, 8000) and not filled[0, 3990:].any() and filled[0, :3990].any()


def test_fit_audio():
    a = tone(2, 100)
    assert fit_audio(a, 50).shape == (2, 50)
    assert fit_audio(a, 120).shape == (2, 120)
    with pytest.raises(ValueError):
        fit_audio(a, 200, pad_tolerance=10)


# --------------------------------------------------------------------------- join


def test_join_aligns_audio_to_frames():
    fps = 23.976
    shots = [
        (const_clip(0, 5), tone(2, 4000)),  # too short: padded
        (const_clip(50, 7), None),  # silent: silence
        (const_clip(100, 3), tone(1, 9999)),  # mono, too long: trimmed, duplicated
    ]
    frames, audio = join(shots, fps, SR)
    assert frames.shape == (15, 4, 6, 3)
    assert audio.shape == (2, samples_for_frames(15, fps, SR))
    s5, s12 = samples_for_frames(5, fps, SR), samples_for_frames(12, fps, SR)
    assert not audio[:, 4000:s12].any()
    np.testing.assert_array_equal(audio[0, s12:], audio[1, s12:])
    assert audio[:, s12:].any() and s5 > 4000


def test_join_rejects_size_mismatch_and_handles_all_silent():
    with pytest.raises(ValueError, match="size"):
        join([(const_clip(0, 2), None), (const_clip(0, 2, h=8), None)], 24)
    frames, audio = join([(const_clip(0, 2), None), (const_clip(9, 3), None)], 24)
    assert frames.shape[0] == 5 and audio is None
    with pytest.raises(ValueError, match="sample_rate"):
        join([(const_clip(0, 2), tone(1, 10))], 24)


# --------------------------------------------------------------------------- mp4


@pytest.mark.parametrize("fps", [24, 23.976, 25])
def test_mp4_streams_counts_and_sync(tmp_path, fps):
    frames = smooth_frames(30)
    n = samples_for_frames(30, fps, SR)
    path = write_video(tmp_path / "shot.mp4", frames, fps, audio=tone(2, n), sample_rate=SR)
    assert path == tmp_path / "shot.mp4"
    info = probe(path)
    assert info.format == "mp4" and info.video_codec == "h264" and info.audio_codec == "aac"
    assert (info.frames, info.width, info.height) == (30, 96, 64)
    assert info.fps == pytest.approx(float(fps_fraction(fps)), rel=1e-9)
    assert info.duration == pytest.approx(30 / float(fps_fraction(fps)), abs=1e-6)
    assert info.has_audio and info.sample_rate == SR and info.audio_channels == 2
    assert abs(info.audio_duration - info.duration) <= 1024 / SR
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
    decoded, audio, rate = read_video(path)
    assert decoded.shape == frames.shape and rate == SR
    assert abs(audio.shape[1] - n) <= 1024
    assert leftovers(tmp_path) == ["shot.mp4"]


def test_mp4_near_lossless_roundtrip(tmp_path):
    frames = smooth_frames(12)
    decoded, audio, _ = read_video(write_video(tmp_path / "a.mp4", frames, 24, crf=0))
    assert audio is None
    diff = np.abs(decoded.astype(np.int16) - frames)
    assert diff.mean() < 1.5 and diff.max() < 24  # yuv420p chroma subsampling is the only loss


def test_mp4_audio_content_is_aligned(tmp_path):
    frames = smooth_frames(24)
    sound = tone(2, 24000)
    _, audio, _ = read_video(
        write_video(tmp_path / "a.mp4", frames, 24, audio=sound, sample_rate=SR)
    )
    # Priming removed and no shift: the decoded tone matches the input closely.
    err = np.sqrt(np.mean((audio[:, :23000] - sound[:, :23000]) ** 2))
    assert err < 0.02


def test_mp4_odd_size_is_padded_to_even(tmp_path):
    frames = smooth_frames(5, h=33, w=47)
    info = probe(write_video(tmp_path / "odd.mp4", frames, 24))
    assert (info.width, info.height, info.frames) == (48, 34, 5)


def test_mp4_resamples_rates_aac_refuses_and_fits_length(tmp_path):
    frames = smooth_frames(12)
    # 10 kHz is not an AAC rate: coded at 11025. Audio 0.2 s too long: trimmed to the video.
    info = probe(
        write_video(tmp_path / "r.mp4", frames, 24, audio=tone(1, 7000, 10000), sample_rate=10000)
    )
    assert info.sample_rate == 11025 and info.audio_channels == 1
    assert abs(info.audio_duration - info.duration) <= 1024 / 11025


def test_mp4_rejects_bad_audio(tmp_path):
    frames = smooth_frames(3)
    with pytest.raises(ValueError, match="sample_rate"):
        write_video(tmp_path / "x.mp4", frames, 24, audio=tone(2, 3000))
    bad = tone(2, 3000)
    bad[0, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_video(tmp_path / "x.mp4", frames, 24, audio=bad, sample_rate=SR)
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- silent formats


@pytest.mark.parametrize(
    ("name", "fmt"), [("a.gif", "gif"), ("a.png", "apng"), ("a.apng", "apng"), ("a.webp", "webp")]
)
def test_silent_formats(tmp_path, name, fmt):
    frames = smooth_frames(10, h=40, w=56)
    with pytest.raises(ValueError, match="silent"):
        write_video(tmp_path / name, frames, 24, audio=tone(2, 10000), sample_rate=SR)
    assert leftovers(tmp_path) == []
    info = probe(write_video(tmp_path / name, frames, 24))
    assert info.format == fmt and not info.has_audio and info.sample_rate is None
    assert (info.frames, info.width, info.height) == (10, 56, 40)
    assert info.fps == pytest.approx(24, rel=1e-3)
    decoded, audio, rate = read_video(tmp_path / name)
    assert decoded.shape == frames.shape and audio is None and rate is None
    tolerance = {"gif": 12, "apng": 0, "webp": 6}[fmt]  # mean abs error per channel
    assert np.abs(decoded.astype(np.int16) - frames).mean() <= tolerance
    assert leftovers(tmp_path) == [name]


def test_format_from_suffix_and_explicit(tmp_path):
    frames = smooth_frames(3)
    with pytest.raises(ValueError, match="suffix"):
        write_video(tmp_path / "a.mkv", frames, 24)
    info = probe(write_video(tmp_path / "anim.bin", frames, 24, format="gif"))
    assert info.format == "gif" and info.frames == 3


# --------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("name", ["a.mp4", "a.gif", "a.webp", "a.png"])
def test_failed_encode_leaves_nothing(tmp_path, name):
    good = list(smooth_frames(8))
    good[5] = np.zeros((10, 10, 3), np.uint8)  # bad shape, discovered mid-encode
    with pytest.raises(ValueError, match="frame 5"):
        write_video(tmp_path / name, good, 24)
    assert leftovers(tmp_path) == []


def test_failed_encode_keeps_existing_file(tmp_path, monkeypatch):
    final = tmp_path / "shot.mp4"
    final.write_bytes(b"previous render")
    calls = {"n": 0}
    real = av.VideoFrame.from_numpy_buffer

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "from_numpy_buffer", failing)
    with pytest.raises(RuntimeError, match="boom"):
        write_video(final, smooth_frames(10), 24, audio=tone(2, 10000), sample_rate=SR)
    assert calls["n"] == 5
    assert final.read_bytes() == b"previous render"
    assert leftovers(tmp_path) == ["shot.mp4"]
    monkeypatch.undo()
    write_video(final, smooth_frames(10), 24)  # a good encode replaces it
    assert probe(final).frames == 10


# --------------------------------------------------------------------------- hygiene


def test_media_never_imports_torch():
    code = (
        "import sys, moldbatch.media; "
        "import moldbatch.media.stitch, moldbatch.media.encode, moldbatch.media.probe; "
        "moldbatch.media.encode.write_video; moldbatch.media.probe.probe; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    for src in (Path(__file__).resolve().parents[2] / "moldbatch" / "media").glob("*.py"):
        assert "import torch" not in src.read_text(), src
