"""A keyframe at frame k shows in decoded frame k, in a clip and in a chain.

These run the real pipeline on the tiny model with two components swapped for ones that can
show a keyframe (see tests/keyframe_model.py): a VAE that keeps colours and a transformer
trained to copy keyframes to where the reference places them. Each frame of the colour VAE's
latent group holds the group's colour, so a keyframe shows in the whole group of its frame and
in no other.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from moldbatch.media.probe import read_video
from moldbatch.runtime import ClipRequest, Runtime

from conftest import render_spec, tiny_clip, write
from keyframe_model import FPS, FRAMES, MODEL, SIZE, follower_runtime, latent_frame_of

pytestmark = pytest.mark.slow  # renders through subprocesses, Ray, Chromium or training

RED, BLUE = (255, 0, 0), (0, 0, 255)
# Mean |difference| per channel (of 255) for "the frame is this colour", and for "it is not".
# Measured: a keyframe at any frame 0..32, in red, blue, white, black or grey, comes out within
# 3 of its colour; the plain render's frames are 105 or more from red and from blue.
SHOWS = 8.0
ABSENT = 60.0


@pytest.fixture(scope="module")
def follower(request: pytest.FixtureRequest) -> Runtime:
    cache = getattr(request.config, "cache", None)
    return follower_runtime(cache.mkdir("keyframe-follower") if cache is not None else None)


@pytest.fixture(scope="module")
def clip() -> ClipRequest:
    return tiny_clip(
        prompt="a red fox runs through deep snow",
        frames=FRAMES,
        seed=7,
        steps=3,
        guidance=3.0,
        audio=False,
    )


@pytest.fixture(scope="module")
def plain(follower: Runtime, clip: ClipRequest) -> np.ndarray:
    return follower.render_clip(clip).frames


def distance(frames: np.ndarray, frame: int, colour: tuple[int, int, int]) -> float:
    return float(np.abs(frames[frame].astype(float) - np.array(colour, float)).mean())


def group(frame: int) -> list[int]:
    """The pixel frames of the latent group holding `frame` (0 alone, then runs of 8)."""
    frames = torch.arange(FRAMES)
    return frames[latent_frame_of(frames) == latent_frame_of(torch.tensor(frame))].tolist()


@pytest.mark.parametrize("frame", [16, 13, 8, 9, 0, 32])  # on and off the grid, both edges
@pytest.mark.parametrize("colour", [RED, BLUE])
def test_a_keyframe_shows_in_the_decoded_frame(
    follower: Runtime, clip, solid, plain, frame: int, colour
) -> None:
    keyed = follower.render_clip(dataclasses.replace(clip, keyframes=[(frame, solid(colour))]))
    frames = keyed.frames
    assert distance(plain, frame, colour) > ABSENT  # the plain render is not that colour there
    assert distance(frames, frame, colour) < SHOWS
    # ... and shows it only there: the frames just outside its latent group do not.
    span = group(frame)
    for outside in (span[0] - 1, span[-1] + 1):
        if 0 <= outside < clip.frames:
            assert distance(frames, outside, colour) > ABSENT, outside


def test_two_keyframes_each_show_at_their_frame(follower: Runtime, clip, solid, plain) -> None:
    """Keyframe interpolation: the first and the last frame each take their own keyframe."""
    ends = dataclasses.replace(clip, keyframes=[(0, solid(RED)), (32, solid(BLUE))])
    frames = follower.render_clip(ends).frames
    assert distance(frames, 0, RED) < SHOWS and distance(frames, 32, BLUE) < SHOWS
    assert distance(frames, 16, RED) > ABSENT and distance(frames, 16, BLUE) > ABSENT


def test_a_keyframe_in_a_chain_shows_at_its_shot_frame(
    follower: Runtime, tmp_path: Path, solid
) -> None:
    """Through planner, executor and stitch: the planner maps shot frame 45 of a two-clip
    chain to the second clip (local frame 21), and the delivered mp4's frame 45 shows it."""
    image = solid(RED)
    spec = write(
        tmp_path,
        "film.yaml",
        f"""\
version: 1
defaults: {{model: {MODEL}, width: {SIZE}, height: {SIZE}, fps: {FPS:g}, steps: 3, audio: false}}
shots:
  - id: chain
    prompt: a red fox runs through deep snow
    frames: 57
    clip_frames: {FRAMES}
    motion_tail: 9
    keyframes: [{{frame: 45, image: {image}}}]
""",
    )
    plan, _ = render_spec(spec, {MODEL: follower})
    clips = plan.shots[0].clips
    assert [(c.start, c.frames) for c in clips] == [(0, 33), (24, 33)]
    assert [k["frame"] for k in clips[1].keyframes] == [21] and not clips[0].keyframes
    frames, _, _ = read_video(tmp_path / "renders" / "chain.mp4")
    assert frames.shape[0] == 57
    codec = 4.0  # H.264 (yuv420p) of a flat colour
    assert distance(frames, 45, RED) < SHOWS + codec
    # its latent group in the second clip is local 17..24, shot frames 41..48
    assert distance(frames, 40, RED) > ABSENT and distance(frames, 49, RED) > ABSENT
