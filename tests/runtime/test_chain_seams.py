"""Across a seam the delivered film has every frame and every moment of sound exactly once.

A smooth seam holds the previous clip's last T decoded frames, encoded again, at the start of
the next clip, and the stitch drops exactly those T frames (runtime/carry.py). These tests
render whole chains through planner, executor and stitch on models that can show it:

- video: the keyframe follower with the colour-keeping VAE (tests/keyframe_model.py). Clip 0
  ends on a known sequence (red, then blue, put there by keyframes); the next clip's held head
  must decode to the previous clip's last T frames, and the delivered shot must be each clip's
  kept frames, in order, so the sequence shows once, where clip 0 had it;
- audio: the tiny model with an audio path that round-trips (tests/audio_model.py): the next
  clip's held sound must be the previous clip's last T / fps seconds, to within 1 ms, and the
  delivered sound each clip's kept stretch, as long as the frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from audio_model import round_trip_runtime

from moldbatch.execute.handlers import load_media
from moldbatch.runtime import Runtime
from moldbatch.runtime.carry import held_audio_latents

from conftest import render_spec, write
from keyframe_model import FPS, MODEL, SIZE, follower_runtime

pytestmark = pytest.mark.slow  # the follower trains once (cached); each case renders a chain

RED, BLUE = (255, 0, 0), (0, 0, 255)
SHOWS = 8.0  # mean |difference| (of 255) for "the frame is this colour" (test_keyframes_follow)
HELD = 3  # a held frame decodes within 3/255 of the frame it was encoded from


@pytest.fixture(scope="module")
def follower(request: pytest.FixtureRequest) -> Runtime:
    cache = getattr(request.config, "cache", None)
    return follower_runtime(cache.mkdir("keyframe-follower") if cache is not None else None)


def _media(store, plan, stage_id: str):
    return load_media(store.get(plan.stage(stage_id).key))


def _delivery(clips: list[np.ndarray], seams, total: int, what: str) -> np.ndarray:
    """What the stitch must deliver, written out from the seams: clip 0 whole; after a smooth
    seam of T the next clip without its first T (which must be the held tail of the one
    before, within HELD); after a cut the next clip whole; after a fade of n the n frames
    cross-faded with weights (k + 1) / (n + 1)."""
    out = clips[0].astype(np.float64)
    for i, (kind, n) in enumerate(seams, start=1):
        clip = clips[i].astype(np.float64)
        if kind == "smooth":
            diff = np.abs(clip[:n] - out[-n:]).max()
            assert diff <= HELD, f"{what}: clip {i}'s held head is {diff} from clip {i - 1}'s tail"
            out = np.concatenate([out, clip[n:]])
        elif kind == "cut":
            out = np.concatenate([out, clip])
        else:
            w = (np.arange(1, n + 1) / (n + 1)).reshape(-1, 1, 1, 1)
            mixed = out[-n:] + (clip[:n] - out[-n:]) * w
            out = np.concatenate([out[:-n], mixed, clip[n:]])
    return out[:total]


def _check_delivery(plan, store, step: str, rendered_seams=None) -> np.ndarray:
    shot = plan.shots[0]
    finals = [_media(store, plan, f"{shot.id}/{step}-{c.index}")[0] for c in shot.clips]
    delivered = _media(store, plan, f"{shot.id}/stitch")[0]
    expected = _delivery(finals, shot.seams, shot.frames, step)
    assert delivered.shape[0] == shot.frames == expected.shape[0]
    assert np.abs(delivered.astype(np.float64) - expected).max() <= 1  # (fades round)
    return delivered


def _distance(frame: np.ndarray, colour) -> float:
    return float(np.abs(frame.astype(float) - np.array(colour, float)).mean())


def _spec(folder: Path, tail: int, seam: str, extra: str = "", frames: int = 33) -> Path:
    return write(
        folder,
        "film.yaml",
        f"""\
version: 1
defaults: {{model: {MODEL}, width: {SIZE}, height: {SIZE}, fps: {FPS:g}, steps: 3, audio: false}}
shots:
  - id: walk
    prompt: a red fox runs through deep snow
    motion_tail: {tail}
    fade_frames: 8
{extra}    clips:
      - {{frames: {frames}}}
      - {{frames: {frames}, prompt: the fox stops}}
      - {{frames: {frames}, prompt: the fox looks back, transition: {seam}}}
""",
    )


@pytest.mark.parametrize("seam", ["smooth", "cut", "fade"])
@pytest.mark.parametrize("tail", [9, 17, 25])
def test_a_known_ending_crosses_the_seam_once_in_order(
    follower: Runtime, tmp_path: Path, solid, tail: int, seam: str
) -> None:
    # clip 0's last two latent groups are red (frames 17..24) and blue (25..32)
    keys = f"    keyframes: [{{frame: 20, image: {solid(RED)}}}, {{frame: 28, image: {solid(BLUE)}}}]\n"
    plan, store = render_spec(_spec(tmp_path, tail, seam, keys), {MODEL: follower})
    shot = plan.shots[0]
    assert shot.seams == [["smooth", tail], [seam, {"smooth": tail, "cut": 0, "fade": 8}[seam]]]
    assert plan.stage("walk/clip-1").params.conditions.carry_tail == tail
    clip0 = _media(store, plan, "walk/clip-0")[0]
    assert all(_distance(clip0[f], RED) < SHOWS for f in range(17, 25))
    assert all(_distance(clip0[f], BLUE) < SHOWS for f in range(25, 33))
    delivered = _check_delivery(plan, store, "clip")
    # the sequence shows once, in order, where clip 0 had it: no frame of it repeated after the
    # seam and none missing before it
    red = [f for f in range(len(delivered)) if _distance(delivered[f], RED) < SHOWS]
    blue = [f for f in range(len(delivered)) if _distance(delivered[f], BLUE) < SHOWS]
    assert red == list(range(17, 25)) and blue == list(range(25, 33))


@pytest.mark.parametrize("tail", [9, 17, 25])
def test_a_two_stage_chain_holds_the_refined_tail(follower: Runtime, tmp_path: Path, tail) -> None:
    size = 2 * SIZE  # the first pass renders at half size
    spec = _spec(tmp_path, tail, "smooth", "    pipeline: two-stage\n")
    spec.write_text(
        spec.read_text().replace(f"width: {SIZE}, height: {SIZE}", f"width: {size}, height: {size}")
    )
    plan, store = render_spec(spec, {MODEL: follower})
    needs = [n for n in plan.stage("walk/refine-1").needs if not n.startswith("encode/")]
    assert needs == ["walk/clip-1", "walk/refine-0"]
    assert plan.stage("walk/refine-1").params.refine.carry_tail == tail
    # the first pass holds the rendered tail; the refine the refined one; the shot is refined
    for i in (1, 2):
        first = _media(store, plan, f"walk/clip-{i}")[0]
        before = _media(store, plan, f"walk/clip-{i - 1}")[0]
        assert np.abs(first[:tail].astype(int) - before[-tail:].astype(int)).max() <= HELD
    delivered = _check_delivery(plan, store, "refine")
    assert delivered.shape[1:3] == (size, size)


class RepeatInTime(torch.nn.Module):
    """A temporal x2 latent upsampler that keeps colours: latent 0 stays (frame 0), every
    later one (8 frames) becomes two (16 frames), so 8k+1 frames become 16k+1."""

    dtype = torch.float32

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.cat([latents[:, :, :1], latents[:, :, 1:].repeat_interleave(2, dim=2)], 2)


@pytest.mark.parametrize(("tail", "spatial"), [(17, False), (33, False), (17, True)])
def test_a_temporal_x2_chain_holds_half_the_tail_and_delivers_it_whole(
    follower: Runtime, tmp_path: Path, tail: int, spatial: bool
) -> None:
    """With `spatial` the upscale refines at twice the size before the x2: its carry is the
    previous clip's refined frames (decoded from the latents the stage keeps)."""
    kept = follower._upsamplers.get("temporal-x2")
    follower._upsamplers["temporal-x2"] = RepeatInTime()
    extra = "    temporal_upscale: x2\n" + ("    spatial_upscale: x2\n" if spatial else "")
    try:
        spec = _spec(tmp_path, tail, "smooth", extra, frames=49)
        if spatial:
            size = f"width: {SIZE}, height: {SIZE}"
            spec.write_text(spec.read_text().replace(size, size.replace(str(SIZE), str(2 * SIZE))))
        plan, store = render_spec(spec, {MODEL: follower})
    finally:
        if kept is None:
            follower._upsamplers.pop("temporal-x2")
        else:
            follower._upsamplers["temporal-x2"] = kept
    shot = plan.shots[0]
    # a tail of 16m + 1 output frames is 8m + 1 rendered: 17 -> 9, 33 -> 17
    rendered = (tail - 1) // 2 + 1
    assert [c.frames for c in shot.clips] == [25, 25, 25]
    assert plan.stage("walk/clip-1").params.conditions.carry_tail == rendered
    for i in (1, 2):
        clip = _media(store, plan, f"walk/clip-{i}")[0]
        before = _media(store, plan, f"walk/clip-{i - 1}")[0]
        assert np.abs(clip[:rendered].astype(int) - before[-rendered:].astype(int)).max() <= HELD
    if spatial:
        assert plan.stage("walk/upscale-1").params.refine.carry_tail == rendered
    # the x2 of the held rendered tail is exactly the T output frames the stitch drops
    _check_delivery(plan, store, "upscale")


@pytest.fixture(scope="module")
def sound() -> Runtime:
    return round_trip_runtime()


def _lag(head: np.ndarray, source: np.ndarray, at: int, search: int) -> tuple[int, float]:
    """The shift (in samples, around `at`) at which `head` best matches `source`, and the mean
    |difference| there."""
    best = None
    for lag in range(-search, search + 1):
        start = at + lag
        if start < 0 or start + head.shape[0] > source.shape[0]:
            continue
        d = float(np.abs(source[start : start + head.shape[0]] - head).mean())
        if best is None or d < best[1]:
            best = (lag, d)
    return best


@pytest.mark.parametrize("tail", [9, 17, 25])
def test_the_sound_runs_on_across_every_seam(sound: Runtime, tmp_path: Path, tail: int) -> None:
    fps = 25  # a seam starts 8k frames (320k ms) into the clip before: on the audio's grid
    frames = 33 + 2 * (33 - tail)
    spec = write(
        tmp_path,
        "film.yaml",
        f"""\
version: 1
defaults: {{model: {MODEL}, width: 64, height: 64, fps: {fps}, steps: 2}}
shots:
  - id: walk
    frames: {frames}
    clip_frames: 33
    motion_tail: {tail}
    prompts: [waves on a beach, the tide comes in, gulls over the water]
""",
    )
    plan, store = render_spec(spec, {MODEL: sound})
    rate = sound.sample_rate
    clips = [_media(store, plan, f"walk/clip-{i}")[1][0] for i in range(3)]
    stitched = _media(store, plan, "walk/stitch")[1]
    assert stitched.shape[1] == round(frames / fps * rate)  # as long as the frames
    drop = round(tail / fps * rate)
    held = held_audio_latents(tail / fps)
    # the held sound: the points of the held latents, all but the last 2.5 ms stretch (which
    # leads into the first generated latent)
    span = round(((4 * held - 3) / 100 - 0.0025) * rate)
    for i in (1, 2):
        previous, clip = clips[i - 1], clips[i]
        start = previous.shape[0] - drop
        lag, diff = _lag(clip[:span], previous, start, round(0.01 * rate))
        # no gap and no doubled stretch: the next clip's sound is the previous clip's from
        # exactly T / fps seconds before its end, to within 1 ms
        assert abs(lag) <= rate // 1000 and diff < 1e-4, (i, lag, diff)
        assert np.abs(previous).mean() > 0.1  # (there is sound to follow)
    # the delivery: clip 0 whole, then each later clip's sound after its first T / fps seconds
    expected = np.concatenate([clips[0], clips[1][drop:], clips[2][drop:]])
    np.testing.assert_allclose(stitched[0], expected[: stitched.shape[1]], atol=1e-6)
