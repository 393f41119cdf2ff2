"""Motion tails: 0 or 8m+1 (16m+1 with temporal x2), default 17; the shot's image guides the
clips after a smooth seam; mold scripts keep their own tail, with a warning."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w

from moldbatch.plan.keys import KEY_VERSION
from moldbatch.plan.planner import plan_file

from conftest import write

HEAD = "version: 1\ndefaults: {model: ltx-2-tiny:random, width: 64, height: 64}\nshots:\n"


def _plan(folder: Path, shot: str):
    return plan_file(write(folder, "film.yaml", HEAD + f"  - {shot}\n"))


def _errors(plan) -> list[str]:
    return [d.message for d in plan.errors]


def test_the_default_tail_is_17_and_each_continuation_holds_it(tmp_path: Path) -> None:
    plan = plan_file(
        write(tmp_path, "f.yaml", "version: 1\nshots:\n  - {id: s, prompt: x, frames: 400}\n")
    )
    shot = plan.shots[0]
    assert shot.motion_tail == 17 and shot.seams == [["smooth", 17]] * 4
    assert [c.frames for c in shot.clips] == [97, 97, 97, 97, 81]
    assert [c.start for c in shot.clips] == [0, 80, 160, 240, 320]
    assert [c.keep_from for c in shot.clips] == [0, 97, 177, 257, 337]
    assert [plan.stage(f"s/clip-{i}").params.conditions.carry_tail for i in range(5)] == [
        0,
        17,
        17,
        17,
        17,
    ]
    assert KEY_VERSION == "moldbatch-stage-4"


@pytest.mark.parametrize("tail", [0, 1, 9, 17, 25, 33])
def test_tails_on_the_grid_plan(tmp_path: Path, tail: int) -> None:
    plan = _plan(
        tmp_path, f"{{id: s, prompt: x, frames: 200, clip_frames: 49, motion_tail: {tail}}}"
    )
    assert plan.valid, _errors(plan)
    shot = plan.shots[0]
    assert all(seam == ["smooth", tail] for seam in shot.seams)
    # every clip starts T frames before the end of the one before, and keeps from there on
    for before, clip in zip(shot.clips, shot.clips[1:], strict=False):
        assert clip.start == before.start + before.frames - tail
        assert clip.keep_from == clip.start + tail
    assert shot.frames == 200


@pytest.mark.parametrize(
    ("tail", "nearest"), [(4, "1 or 9"), (8, "1 or 9"), (16, "9 or 17"), (20, "17 or 25")]
)
def test_a_tail_off_the_grid_is_an_error_naming_the_nearest(tmp_path, tail, nearest) -> None:
    plan = _plan(tmp_path, f"{{id: s, prompt: x, frames: 200, motion_tail: {tail}}}")
    (message,) = _errors(plan)
    assert f"motion_tail {tail} is off the tail grid" in message
    assert message.endswith(f"nearest valid tails: {nearest}")


def test_with_temporal_x2_the_tail_is_16m_plus_1_and_holds_8m_plus_1_rendered(tmp_path) -> None:
    (message,) = _errors(
        _plan(tmp_path, "{id: s, prompt: x, frames: 200, motion_tail: 9, temporal_upscale: x2}")
    )
    assert "16m+1" in message and message.endswith("nearest valid tails: 1 or 17")
    plan = _plan(
        tmp_path,
        "{id: s, prompt: x, frames: 97, clip_frames: 49, motion_tail: 17, temporal_upscale: x2}",
    )
    assert plan.valid, _errors(plan)
    assert [c.frames for c in plan.shots[0].clips] == [25, 25, 17]
    assert plan.stage("s/clip-1").params.conditions.carry_tail == 9


def test_an_unset_tail_is_the_longest_valid_one_below_short_clips(tmp_path) -> None:
    for clip, tail in ((97, 17), (25, 17), (17, 9), (9, 1)):
        plan = _plan(tmp_path, f"{{id: s, prompt: x, frames: 100, clip_frames: {clip}}}")
        assert plan.valid and plan.shots[0].motion_tail == tail, (clip, _errors(plan))
    # a tail you set is yours: too long is an error
    (message,) = _errors(
        _plan(tmp_path, "{id: s, prompt: x, frames: 100, clip_frames: 17, motion_tail: 17}")
    )
    assert "must be below clip_frames (17)" in message and message.endswith("try 9")


def test_the_shots_image_guides_every_smooth_continuation(film_dir: Path) -> None:
    shot = (
        "{id: s, prompt: x, frames: 200, clip_frames: 49, motion_tail: 17, image: assets/start.png"
    )
    plan = _plan(film_dir, shot + "}")
    clips = plan.shots[0].clips
    image = clips[0].image
    assert image is not None and clips[0].keyframes == []
    for c in clips[1:]:
        assert c.image is None
        assert c.keyframes == [{"frame": 17, "image": image, "strength": 0.4}]
    guide = plan.stage("s/clip-1").params.conditions.keyframes
    assert [(k.frame, k.strength) for k in guide] == [(17, 0.4)]
    # image_guide sets the strength; 0 turns it off
    strong = _plan(film_dir, shot + ", image_guide: 0.7}").shots[0].clips
    assert all(c.keyframes[0]["strength"] == 0.7 for c in strong[1:])
    off = _plan(film_dir, shot + ", image_guide: 0}").shots[0].clips
    assert all(c.keyframes == [] and c.image is None for c in off[1:])
    # a cut starts afresh (no guide), and with temporal x2 the guide is on rendered frame 9
    cut = _plan(film_dir, shot + ", transition: cut}").shots[0].clips
    assert all(c.keyframes == [] for c in cut)
    half = _plan(
        film_dir, shot.replace("clip_frames: 49", "clip_frames: 49, temporal_upscale: x2") + "}"
    )
    assert half.shots[0].clips[1].keyframes[0]["frame"] == 9


def test_a_clips_own_image_guides_its_continuation_even_with_image_guide_0(film_dir) -> None:
    shot = (
        "{id: s, prompt: x, motion_tail: 9, image_guide: 0, image: assets/start.png, "
        "clips: [{frames: 25}, {frames: 25, image: assets/end.png}, {frames: 25}]}"
    )
    clips = _plan(film_dir, shot).shots[0].clips
    (guide,) = clips[1].keyframes
    assert guide["frame"] == 9 and guide["strength"] == 0.4 and guide["image"].endswith("end.png")
    assert clips[2].keyframes == []


def test_a_mold_tail_that_is_not_8m_plus_1_renders_as_mold_does_with_a_warning(film_dir) -> None:
    doc = {
        "schema": "mold.chain.v1",
        "chain": {
            "model": "ltx-2-tiny:random",
            "width": 64,
            "height": 64,
            "fps": 24,
            "steps": 2,
            "guidance": 3.0,
            "strength": 1.0,
            "motion_tail_frames": 4,
            "output_format": "mp4",
        },
        "stage": [{"prompt": "a", "frames": 17}, {"prompt": "b", "frames": 17}],
    }
    path = write(film_dir, "chain.toml", tomli_w.dumps(doc))
    plan = plan_file(path)
    assert plan.valid
    (warning,) = plan.warnings
    assert warning.path == "chain.motion_tail_frames"
    assert "holds them at the start of the next, and drops all 4" in warning.message
    assert warning.message.endswith(
        "set motion_tail_frames = 1 for a seam that drops exactly what it holds"
    )
    assert plan.shots[0].seams == [["smooth", 4]]
    assert plan.stage("chain/clip-1").params.conditions.carry_tail == 4
    doc["chain"]["motion_tail_frames"] = 9
    assert not plan_file(write(film_dir, "chain.toml", tomli_w.dumps(doc))).warnings


def test_the_storyboard_and_the_cost_say_what_a_seam_holds(tmp_path: Path) -> None:
    from moldbatch.review.cost import RATES, estimate, latent_tokens
    from moldbatch.review.storyboard import storyboard_doc

    plan = _plan(tmp_path, "{id: s, prompt: x, frames: 65, clip_frames: 33, motion_tail: 17}")
    cost = estimate(plan)
    doc = storyboard_doc(plan, {}, cost)
    notes = [c.get("carry") for c in doc["shots"][0]["clips"]]
    assert notes[0] is None
    assert notes[1] == (
        "holds the previous clip's last 17 frames, encoded again into 3 latent frames; "
        "the stitch drops these 17 frames"
    )
    # the encode of the carried tail is one step over its tokens
    rate = RATES["ltx-2-tiny:random"].seconds_per_token_step
    first, second = cost.stages["s/clip-0"], cost.stages["s/clip-1"]
    assert second.token_steps - first.token_steps == latent_tokens(17, 64, 64)
    assert second.gpu_seconds == pytest.approx(second.token_steps * rate)
