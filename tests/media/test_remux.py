"""A film of mp4 shots copies their video: its frames are the shot files' own, bit for bit,
at the right times, with one AAC track laid on the frame grid; parts that cannot be joined
as they are say so before anything is written."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from moldbatch.media.encode import CannotRemux, remux_mp4, write_video
from moldbatch.media.probe import probe
from moldbatch.media.stitch import film_audio
from moldbatch.media.timing import samples_for_frames

SR = 48_000


def _decoded(path: Path) -> tuple[list[np.ndarray], np.ndarray | None]:
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        sound = [f.to_ndarray() for f in c.decode(audio=0)] if c.streams.audio else []
    return frames, np.concatenate(sound, axis=1) if sound else None


def _shots(tmp_path: Path, counts, size=(48, 64), fps=24, audio=True):
    rng = np.random.default_rng(7)
    paths, sounds = [], []
    for i, n in enumerate(counts):
        frames = rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)
        sound = (rng.standard_normal((2, samples_for_frames(n, fps, SR))) * 0.1).astype(np.float32)
        path = tmp_path / f"shot-{i}.mp4"
        write_video(path, frames, fps, audio=sound if audio else None, sample_rate=SR)
        paths.append(path)
        sounds.append(sound)
    return paths, sounds


@pytest.mark.parametrize("fps", [24, 30000 / 1001])
def test_the_film_is_its_shots_frames_and_their_sound_on_the_frame_grid(tmp_path, fps):
    counts = [17, 25, 9]
    parts, sounds = _shots(tmp_path, counts, fps=fps)
    sound = film_audio(counts, sounds, fps, SR)
    film = remux_mp4(tmp_path / "film.mp4", parts, fps, audio=sound, sample_rate=SR)
    frames, audio = _decoded(film)
    want = [f for p in parts for f in _decoded(p)[0]]
    assert len(frames) == sum(counts)
    assert all((a == b).all() for a, b in zip(frames, want, strict=True))
    info = probe(film)
    assert info.frames == sum(counts)
    assert abs(info.duration - sum(counts) / fps) < 1e-3
    # the one track is what encoding the film's frames with that sound gives
    encoded = write_video(
        tmp_path / "encoded.mp4",
        np.concatenate([np.stack(_decoded(p)[0]) for p in parts]),
        fps,
        audio=sound,
        sample_rate=SR,
    )
    assert np.array_equal(audio, _decoded(encoded)[1])


def test_a_silent_film_has_no_audio_track(tmp_path):
    parts, _ = _shots(tmp_path, [9, 9], audio=False)
    film = remux_mp4(tmp_path / "film.mp4", parts, 24)
    with av.open(str(film)) as c:
        assert not c.streams.audio and c.streams.video[0].frames == 18


def test_parts_of_another_size_cannot_be_copied_and_nothing_is_written(tmp_path):
    for name, size in (("a", (48, 64)), ("b", (64, 64))):
        (tmp_path / name).mkdir()
        _shots(tmp_path / name, [9], size=size)
    parts = [tmp_path / "a" / "shot-0.mp4", tmp_path / "b" / "shot-0.mp4"]
    with pytest.raises(CannotRemux):
        remux_mp4(tmp_path / "film.mp4", parts, 24)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
