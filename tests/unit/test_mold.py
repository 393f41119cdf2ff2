"""mold.chain.v1 scripts in and out, and explicit clip lists."""

from __future__ import annotations

import base64
import json
import tempfile
import tomllib
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moldbatch.cli import cli
from moldbatch.plan.planner import plan_file
from moldbatch.plan.types import media_needs
from moldbatch.spec.mold import CannotExport, mold_script

from conftest import write

SCRIPT = """\
schema = "mold.chain.v1"

[chain]
model = "ltx-2-tiny:random"
width = 64
height = 64
fps = 24
seed = 7
steps = 2
guidance = 3.5
strength = 0.8
motion_tail_frames = 4
output_format = "mp4"

[[stage]]
prompt = "a lantern-lit path"
frames = 17
source_image_path = "assets/start.png"

[[stage]]
prompt = "the lake shore"
frames = 25
negative_prompt = "blurry"
seed_offset = 5
transition = "smooth"

[[stage]]
prompt = "fireflies over the water"
frames = 25
transition = "fade"
fade_frames = 6
source_image_b64 = "{b64}"

[[stage]]
prompt = "the road home"
frames = 9
transition = "cut"
"""


def script(folder: Path, name: str = "walk.toml") -> Path:
    b64 = base64.b64encode((folder / "assets" / "end.png").read_bytes()).decode()
    return write(folder, name, SCRIPT.replace("{b64}", b64))


def keys(plan) -> list[str]:
    return [s.key for s in plan.stages]


def encodes(plan) -> list[str]:
    return [s.key for s in plan.stages if s.kind == "encode"]


def test_a_mold_script_plans_as_mold_would_render_it(film_dir: Path):
    plan = plan_file(script(film_dir))
    assert plan.valid, [str(d) for d in plan.diagnostics]
    (shot,) = plan.shots
    assert shot.id == "walk" and shot.model == "ltx-2-tiny:random"
    assert (shot.width, shot.height, shot.fps, shot.format) == (64, 64, 24, "mp4")
    assert shot.audio is False  # mold chains are silent
    assert [c.frames for c in shot.clips] == [17, 25, 25, 9]
    assert shot.seams == [["smooth", 4], ["fade", 6], ["cut", 0]]
    # stitched length: smooth drops 4, fade blends 6, cut keeps all
    assert shot.frames == 17 + 25 + 25 + 9 - 4 - 6
    # mold: every stage on the base seed, XOR its offset when it has one
    assert [c.seed for c in shot.clips] == [7, 7 ^ 5, 7, 7]
    assert [c.prompt for c in shot.clips][1] == "the lake shore"
    assert shot.clips[1].negative_prompt == "blurry"
    clip0, clip1, clip2, clip3 = (plan.stage(f"walk/clip-{i}") for i in range(4))
    assert clip0.params.conditions.image.path.endswith("assets/start.png")
    assert clip0.params.conditions.image_strength == 0.8
    assert (clip0.params.steps, clip0.params.guidance) == (2, 3.5)
    # the base64 image is named in the work folder by its content; planning writes nothing
    # (the executor writes it before a render)
    decoded = Path(clip2.params.conditions.image.path)
    assert decoded.parent == film_dir / ".moldbatch" / "inline"
    assert plan.inline[str(decoded)] == (film_dir / "assets" / "end.png").read_bytes()
    assert not decoded.exists()
    # only the smooth seam carries the previous clip's tail
    assert media_needs(clip1.needs) == ["walk/clip-0"] and clip1.params.conditions.carry_tail == 4
    assert media_needs(clip2.needs) == [] and media_needs(clip3.needs) == []


def test_a_base64_image_and_the_same_file_by_path_give_the_same_keys(film_dir: Path):
    a = plan_file(script(film_dir))
    text = (film_dir / "walk.toml").read_text()
    start = text.index("source_image_b64")
    end = text.index("\n", start)
    (film_dir / "walk.toml").write_text(
        text[:start] + 'source_image_path = "assets/end.png"' + text[end:]
    )
    b = plan_file(film_dir / "walk.toml")
    assert keys(a) == keys(b)


def test_export_then_import_is_the_identity_on_the_plan(film_dir: Path):
    original = plan_file(script(film_dir))
    out = film_dir / "out" / "walk.toml"
    out.parent.mkdir()
    out.write_text(mold_script(original, "walk", out))
    # the script in out/ names the film's image as ../a.png: in a checkout both are inside the
    # project (its git work tree); a tmp folder is no work tree, so let the script reach it
    again = plan_file(out, allow=[film_dir])
    assert again.valid, [str(d) for d in again.diagnostics]
    assert keys(again) == keys(original)

    def clips(plan):  # an inline image comes back inline: compare it by its bytes
        out = plan.to_json()["shots"][0]["clips"]
        for c in out:
            if c["image"] in plan.inline:
                c["image"] = plan.inline[c["image"]]
        return out

    assert clips(again) == clips(original)


def test_our_own_clip_lists_export_and_come_back_with_the_same_keys(film_dir: Path):
    spec = write(
        film_dir,
        "film.yaml",
        """\
version: 1
defaults: {model: ltx-2-tiny:random, width: 64, height: 64, audio: false, seed: 11}
shots:
  - id: walk
    negative_prompt: watermark
    clips:
      - {prompt: one, frames: 17, image: assets/start.png}
      - {prompt: two, frames: 17}
      - {prompt: three, frames: 25, transition: fade, fade_frames: 5, seed_offset: 3}
  - id: other
    prompt: an untouched shot
    frames: 9
""",
    )
    original = plan_file(spec)
    assert original.valid, [str(d) for d in original.diagnostics]
    out = film_dir / "walk.toml"
    out.write_text(mold_script(original, "walk", out))
    again = plan_file(out)
    # the walk's stages, and the encodes of its prompts (the other shot's prompt is not in it)
    assert [k for k in keys(again) if k not in encodes(again)] == [
        s.key for s in original.stages if s.shot == "walk"
    ]
    assert set(encodes(again)) < set(encodes(original))


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("    audio: true\n", "audio"),
        ("    keyframes: [{frame: 3, image: assets/end.png}]\n", "keyframes"),
        ("    loras: [{path: assets/style.safetensors}]\n", "loras"),
        ("    spatial_upscale: x2\n    width: 128\n    height: 128\n", "spatial_upscale"),
    ],
)
def test_export_refuses_what_mold_cannot_express_naming_the_field(film_dir, extra, field):
    spec = write(
        film_dir,
        "film.yaml",
        """\
version: 1
defaults: {model: ltx-2-tiny:random, width: 64, height: 64, audio: false}
shots:
  - id: walk
    prompt: a walk
    frames: 17
"""
        + extra,
    )
    plan = plan_file(spec)
    assert plan.valid, [str(d) for d in plan.diagnostics]
    with pytest.raises(CannotExport, match=f"`{field}`"):
        mold_script(plan, "walk")


def test_export_refuses_a_shot_that_needs_a_trim(film_dir: Path):
    spec = write(
        film_dir,
        "film.yaml",
        """\
version: 1
defaults: {model: ltx-2-tiny:random, width: 64, height: 64, audio: false}
shots:
  - {id: walk, prompt: a walk, frames: 31, clip_frames: 17}
""",
    )
    with pytest.raises(CannotExport, match="`frames` trims the stitched"):
        mold_script(plan_file(spec), "walk")


def test_export_command_writes_a_script_and_refuses_cleanly(film_dir: Path):
    src = script(film_dir)
    runner = CliRunner()
    res = runner.invoke(cli, ["export", "mold", str(src), "-o", str(film_dir / "back.toml")])
    assert res.exit_code == 0, res.output
    assert (film_dir / "back.toml").read_text().count("[[stage]]") == 4
    spec = write(
        film_dir,
        "film.yaml",
        """\
version: 1
defaults: {model: ltx-2-tiny:random, width: 64, height: 64}
shots:
  - {id: a, prompt: x, frames: 9}
  - {id: b, prompt: y, frames: 9}
""",
    )
    res = runner.invoke(cli, ["export", "mold", str(spec)])
    assert res.exit_code == 2 and "pick one with --shot (a, b)" in res.output
    res = runner.invoke(cli, ["export", "mold", str(spec), "--shot", "a"])
    assert res.exit_code == 1 and "mold chains are silent" in res.output


def test_explicit_clips_give_the_stitched_length_of_their_seams(film_dir: Path):
    for seam, want in (("smooth", 25 + 17 - 9), ("cut", 25 + 17), ("fade", 25 + 17 - 8)):
        spec = write(
            film_dir,
            "film.yaml",
            f"""\
version: 1
defaults: {{model: ltx-2-tiny:random, width: 64, height: 64, motion_tail: 9, fade_frames: 8}}
shots:
  - id: s
    prompt: x
    clips: [{{frames: 25}}, {{frames: 17, transition: {seam}}}]
""",
        )
        plan = plan_file(spec)
        assert plan.valid and plan.shots[0].frames == want, seam


FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(
    cuts=st.lists(
        st.tuples(st.integers(0, len(SCRIPT)), st.integers(0, 10), st.text(max_size=5)), max_size=5
    )
)
def test_mangled_mold_scripts_give_clean_errors(cuts):
    text = SCRIPT.replace("{b64}", "aGk=")
    for at, length, insert in cuts:
        text = text[:at] + insert + text[at + length :]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "chain.toml"
        path.write_text(text)
        plan = plan_file(path)
        for diag in plan.diagnostics:
            assert diag.line >= 1 and "\n" not in str(diag)


# --- mold's own values ---------------------------------------------------------------------
# Each case below is built from mold's source (utensils/mold at a34ff7a); the file and the test
# (or function) each expected value comes from is named beside it.

MOLD_CHAIN = {
    "model": "ltx-2-tiny:random",
    "width": 64,
    "height": 64,
    "fps": 24,
    "steps": 2,
    "guidance": 3.0,
    "strength": 1.0,
    "motion_tail_frames": 1,
    "output_format": "mp4",
}


def mold_file(folder: Path, stages: list[dict], name: str = "chain.toml", **chain) -> Path:
    """A mold.chain.v1 script of `stages` ([[stage]] tables) under MOLD_CHAIN + `chain`."""
    doc = {"schema": "mold.chain.v1", "chain": {**MOLD_CHAIN, **chain}, "stage": stages}
    return write(folder, name, tomli_w.dumps(doc))


def planned(path: Path):
    plan = plan_file(path)
    assert plan.valid, [str(d) for d in plan.diagnostics]
    return plan


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_without_a_seed_every_stage_renders_on_seed_0_as_molds_orchestrator_does(film_dir):
    # mold-inference ltx2/chain.rs `Ltx2ChainOrchestrator::run`: `req.seed.unwrap_or(0)`, and
    # `derive_stage_seed`: base ^ seed_offset, else the base
    stages = [{"prompt": "a", "frames": 9}, {"prompt": "b", "frames": 9, "seed_offset": 0xBEEF}]
    plan = planned(mold_file(film_dir, stages))
    assert [c.seed for c in plan.shots[0].clips] == [0, 0 ^ 0xBEEF]
    assert not any("seed" in d.message for d in plan.diagnostics)


def test_a_seed_offset_xors_into_the_base_seed_and_stages_without_one_keep_it(film_dir):
    # ltx2/chain.rs tests `chain_respects_seed_offset_override_when_stage_provides_one`
    # (100, 100 ^ 0xDEADBEEF) and `chain_holds_seed_stable_across_stages_by_default` (42 x 3)
    two = [{"prompt": "a", "frames": 9}, {"prompt": "a", "frames": 9, "seed_offset": 0xDEADBEEF}]
    plan = planned(mold_file(film_dir, two, seed=100))
    assert [c.seed for c in plan.shots[0].clips] == [100, 100 ^ 0xDEADBEEF]
    three = [{"prompt": "a", "frames": 9}] * 3
    plan = planned(mold_file(film_dir, three, seed=42))
    assert [c.seed for c in plan.shots[0].clips] == [42, 42, 42]


def test_source_image_the_key_molds_write_script_emits_is_read_as_the_same_image(film_dir):
    # mold-core chain.rs `ChainStage::source_image` (base64 via types.rs `base64_opt`) is what
    # chain_toml.rs `write_script` emits; `read_script_resolving_paths` takes it, _b64 and _path
    image = film_dir / "assets" / "start.png"
    plans = [
        planned(mold_file(film_dir, [{"prompt": "a", "frames": 9, key: value}], f"{n}.toml"))
        for n, (key, value) in enumerate(
            [
                ("source_image", b64(image)),
                ("source_image_b64", b64(image)),
                ("source_image_path", "assets/start.png"),
            ]
        )
    ]
    clips = [p.stage(f"{n}/clip-0") for n, p in enumerate(plans)]
    assert plans[0].read_input(clips[0].params.conditions.image.path) == image.read_bytes()
    assert len({c.key for c in clips}) == 1


def test_two_image_keys_on_one_stage_are_refused_as_mold_refuses_them(film_dir):
    # chain_toml.rs `resolve_stage_source_image`, test `read_rejects_conflicting_source_image_fields`
    image = b64(film_dir / "assets" / "start.png")
    stage = {"prompt": "a", "frames": 9, "source_image": image, "source_image_b64": image}
    plan = plan_file(mold_file(film_dir, [stage]))
    (diag,) = [d for d in plan.diagnostics if d.severity == "error"]
    assert diag.path == "stage[0].source_image_b64" and "at most one of" in diag.message


def test_enable_audio_is_not_a_mold_field_and_the_chain_renders_silent(film_dir):
    # ltx2/chain.rs `build_stage_generate_request`: `enable_audio: Some(false)` for every
    # stage; chain.rs `ChainScriptChain` has no such field (serde ignores unknown keys)
    plan = planned(mold_file(film_dir, [{"prompt": "a", "frames": 9}], enable_audio=True))
    assert plan.shots[0].audio is False
    assert plan.stage("chain/clip-0").params.audio is False
    (warning,) = plan.warnings
    assert warning.path == "chain.enable_audio" and "mold ignores it" in warning.message


def test_an_image_on_stage_0_holds_with_strength_and_later_ones_as_mold_applies_them(film_dir):
    # ltx2/chain.rs `build_stage_generate_request`: `strength: if idx == 0 { chain.strength }
    # else { 1.0 }`; ltx2/pipeline.rs `render_chain_stage`: on a smooth continuation (a carry)
    # the image moves to frame `motion_tail_pixel_frames` with CHAIN_SOFT_ANCHOR_STRENGTH 0.4
    image = b64(film_dir / "assets" / "start.png")
    stages = [
        {"prompt": "a", "frames": 25, "source_image": image},
        {"prompt": "b", "frames": 25, "source_image": image},
        {"prompt": "c", "frames": 25, "source_image": image, "transition": "cut"},
        {"prompt": "d", "frames": 25, "source_image": image, "transition": "fade"},
    ]
    for tail in (4, 17):
        plan = planned(mold_file(film_dir, stages, strength=0.6, motion_tail_frames=tail))
        clips = plan.shots[0].clips
        assert clips[1].image is None
        assert clips[1].keyframes == [{"frame": tail, "image": clips[0].image, "strength": 0.4}]
        assert all(c.image is not None and c.keyframes == [] for c in (clips[0], *clips[2:]))
        first, smooth, cut, fade = (
            plan.stage(f"chain/clip-{i}").params.conditions for i in range(4)
        )
        assert first.image and first.image_strength == 0.6 and first.keyframes == ()
        assert smooth.image is None and smooth.image_strength is None
        (guide,) = smooth.keyframes
        assert (guide.frame, guide.strength) == (tail, 0.4)
        assert guide.image.path == first.image.path
        for fresh in (cut, fade):
            assert fresh.image and fresh.image_strength == 1.0 and fresh.keyframes == ()


def test_a_keyframe_of_a_spec_holds_at_full_strength(film_dir):
    spec = write(
        film_dir,
        "film.yaml",
        """\
version: 1
defaults: {model: ltx-2-tiny:random, width: 64, height: 64}
shots:
  - {id: s, prompt: x, frames: 17, keyframes: [{frame: 8, image: assets/end.png}]}
""",
    )
    (plain,) = planned(spec).stage("s/clip-0").params.conditions.keyframes
    assert (plain.frame, plain.strength) == (8, 1.0)


def test_the_runtime_conditions_a_continuation_on_the_guide_at_its_strength(film_dir):
    pytest.importorskip("diffusers")
    from types import SimpleNamespace

    from moldbatch.runtime.ltx2 import Runtime
    from moldbatch.runtime.requests import ClipRequest

    image = film_dir / "assets" / "start.png"
    req = ClipRequest(
        model="ltx-2-tiny:random",
        prompt="x",
        width=64,
        height=64,
        frames=17,
        fps=24,
        seed=0,
        steps=2,
        guidance=1.0,
        keyframes=[(4, image, 0.4), (12, image)],
        carry=SimpleNamespace(tail_frames=4),  # the carried tail owns latent frame 0
    )
    conditions, frames = Runtime._conditions(None, req)  # uses nothing of the runtime
    assert [(c.index, c.strength) for c in conditions] == [(1, 0.4), (2, 1.0)]
    assert frames == [4, 12]


def test_a_fade_longer_than_the_clip_before_it_names_that_short_clip(film_dir):
    # ltx2/stitch.rs `StitchPlan::assemble` refuses a fade when `prior.len() < fade_len`
    stages = [
        {"prompt": "a", "frames": 9},
        {"prompt": "b", "frames": 97, "transition": "fade", "fade_frames": 12},
    ]
    plan = plan_file(mold_file(film_dir, stages))
    (diag,) = [d for d in plan.diagnostics if d.severity == "error"]
    assert diag.path == "stage[0].frames"
    assert diag.message.startswith("clip 0 has 9 frames, fewer than the 12")


def test_a_tail_longer_than_the_clip_it_comes_from_names_that_short_clip(film_dir):
    # mold-core chain.rs `normalise` refuses a tail not below stage 0's frames; moldbatch
    # cannot carry 17 frames out of a 9-frame clip either
    stages = [{"prompt": "a", "frames": 9}, {"prompt": "b", "frames": 97}]
    plan = plan_file(mold_file(film_dir, stages, motion_tail_frames=17))
    (diag,) = plan.diagnostics
    assert diag.severity == "error" and diag.path == "stage[0].frames"
    assert diag.message.startswith("clip 0 has 9 frames, fewer than the 17")


def test_mold_arithmetic_matches_molds_own_totals(film_dir):
    # mold-core chain.rs tests `estimated_total_all_smooth` (241), `estimated_total_with_cut`
    # (266), `estimated_total_with_fade` (283), all on a motion tail of 25; ltx2/chain.rs
    # `mixed_transitions_end_to_end` (smooth, smooth, cut, fade 8 at tail 25: 355)
    cases = [
        ([("smooth", None)] * 3, 241),
        ([("smooth", None), ("cut", None), ("smooth", None)], 266),
        ([("smooth", None), ("cut", None), ("fade", 8)], 283),
        ([("smooth", None), ("smooth", None), ("cut", None), ("fade", 8)], 355),
    ]
    for n, (seams, total) in enumerate(cases):
        stages = []
        for kind, fade in seams:
            stages.append({"prompt": "x", "frames": 97, "transition": kind})
            if fade:
                stages[-1]["fade_frames"] = fade
        path = mold_file(film_dir, stages, f"c{n}.toml", motion_tail_frames=25)
        assert planned(path).shots[0].frames == total, seams


def test_the_first_stages_transition_is_ignored_as_mold_coerces_it_to_smooth(film_dir):
    # mold-core chain.rs test `normalise_coerces_stage_0_transition_to_smooth`
    stages = [{"prompt": "a", "frames": 9, "transition": "cut"}, {"prompt": "b", "frames": 9}]
    assert planned(mold_file(film_dir, stages)).shots[0].seams == [["smooth", 1]]


def test_scripts_mold_refuses_but_moldbatch_renders_plan_with_a_warning_naming_mold(film_dir):
    # chain.rs MAX_CHAIN_STAGES = 16 (`normalise_rejects_too_many_stages`; the CLI corpus's
    # adversarial/seventeen_stages.toml); ltx2/pipeline.rs `render_chain_stage_rejects_zero_
    # motion_tail` and `render_chain_stage_rejects_non_distilled_pipeline`; chain.rs
    # `normalise` checks the tail against every stage (`chain_rejects_motion_tail_ge_stage_
    # frames_before_running`)
    cases = [
        ([{"prompt": "x", "frames": 9}] * 17, {}, "stage", "at most 16"),
        (
            [{"prompt": "x", "frames": 9}] * 2,
            {"motion_tail_frames": 0},
            "chain.motion_tail_frames",
            "0",
        ),
        (
            [{"prompt": "x", "frames": 17}, {"prompt": "y", "frames": 9, "transition": "cut"}],
            {"motion_tail_frames": 9},
            "chain.motion_tail_frames",
            "stage 1's 9 frames",
        ),
        (
            [{"prompt": "x", "frames": 9}],
            {"model": "ltx-2-19b-dev:fp8", "width": 1216, "height": 704, "steps": 30},
            "chain.model",
            "distilled pipeline only",
        ),
    ]
    for n, (stages, chain, path, words) in enumerate(cases):
        plan = planned(mold_file(film_dir, stages, f"w{n}.toml", **chain))
        (warning,) = plan.warnings
        assert warning.path == path and words in warning.message and "mold" in warning.message
    assert len(planned(film_dir / "w0.toml").shots[0].clips) == 17  # a superset of mold


@pytest.mark.parametrize(
    ("stage", "chain", "path", "words"),
    [
        (
            {"frames": 105},
            {"model": "ltx-2-19b-distilled:fp8", "width": 1216, "height": 704, "steps": 8},
            "stage[0].frames",
            "mold does not cap",
        ),
        ({"frames": 9, "surprise": 1}, {}, "stage[0].surprise", "mold ignores unknown keys"),
        (
            {"frames": 9, "source_image": "aGk="},
            {},
            "stage[0].source_image",
            "mold accepts any bytes",
        ),
    ],
)
def test_where_moldbatch_is_stricter_than_mold_the_error_is_one_line_naming_mold(
    film_dir, stage, chain, path, words
):
    plan = plan_file(mold_file(film_dir, [{"prompt": "x", **stage}], **chain))
    (diag,) = [d for d in plan.diagnostics if d.severity == "error"]
    assert diag.path == path and words in diag.message and "\n" not in str(diag)


def test_a_fade_reaching_past_a_short_clip_is_refused_naming_what_mold_does(film_dir):
    # ltx2/stitch.rs checks a fade against the clip before it alone (`prior.len() < fade_len`),
    # so mold blends into the clip before that; moldbatch refuses
    stages = [
        {"prompt": "a", "frames": 97},
        {"prompt": "b", "frames": 17},
        {"prompt": "c", "frames": 97, "transition": "fade", "fade_frames": 16},
    ]
    plan = plan_file(mold_file(film_dir, stages, motion_tail_frames=9))
    (diag,) = [d for d in plan.diagnostics if d.severity == "error"]
    assert diag.path == "stage[1].frames" and "mold would let the fade reach" in diag.message


def _spec(folder: Path, shot: str, defaults: str = "") -> Path:
    return write(
        folder,
        "film.yaml",
        "version: 1\n"
        f"defaults: {{model: ltx-2-tiny:random, width: 64, height: 64, audio: false{defaults}}}\n"
        f"shots:\n  - {shot}\n",
    )


@pytest.mark.parametrize(
    ("shot", "defaults", "field", "why"),
    [
        # chain.rs MAX_CHAIN_STAGES = 16 (`normalise_rejects_too_many_stages`)
        (
            "{id: s, prompt: x, clips: [" + ", ".join(["{frames: 9}"] * 17) + "]}",
            "",
            "clips",
            "at most 16",
        ),
        # chain.rs `normalise`: the tail against every stage, a cut one too
        (
            "{id: s, prompt: x, clips: [{frames: 17}, {frames: 9, transition: cut}]}",
            ", motion_tail: 9",
            "motion_tail",
            "whatever its transition",
        ),
        # ltx2/pipeline.rs `render_chain_stage_rejects_zero_motion_tail`
        (
            "{id: s, prompt: x, clips: [{frames: 9}, {frames: 9}]}",
            ", motion_tail: 0",
            "motion_tail",
            "refuses a motion tail of 0",
        ),
        # ltx2/pipeline.rs `render_chain_stage_rejects_non_distilled_pipeline`
        (
            "{id: s, prompt: x, frames: 9, model: ltx-2-19b-dev:fp8, width: 1216, height: 704}",
            "",
            "model",
            "distilled pipeline only",
        ),
        (
            "{id: s, prompt: x, frames: 9, pipeline: two-stage, width: 128, height: 128}",
            "",
            "pipeline",
            "distilled pipeline only",
        ),
        # a TOML integer is i64: mold's u64 seed_offset cannot travel past 2**63 - 1
        (
            "{id: s, prompt: x, seed: 9223372036854775807, clips: [{frames: 9}, {frames: 9}]}",
            "",
            "seed",
            "TOML's integer range",
        ),
    ],
)
def test_export_refuses_what_mold_cannot_read_or_render_naming_field_and_reason(
    film_dir, shot, defaults, field, why
):
    plan = planned(_spec(film_dir, shot, defaults))
    with pytest.raises(CannotExport, match=f"`{field}`") as e:
        mold_script(plan, "s")
    assert why in str(e.value) and "\n" not in str(e.value)


def test_export_writes_no_enable_audio_and_strength_from_the_first_clip(film_dir):
    spec = _spec(
        film_dir,
        "{id: s, prompt: x, image_strength: 0.7, clips: [{frames: 9, image: assets/start.png}, {frames: 9}]}",
    )
    doc = tomllib.loads(mold_script(planned(spec), "s"))
    assert "enable_audio" not in doc["chain"] and doc["chain"]["strength"] == 0.7


FRAMES = st.sampled_from([9, 17, 25, 33, 97])
CLIP = st.fixed_dictionaries(
    {"frames": FRAMES},
    optional={
        "transition": st.sampled_from(["smooth", "cut", "fade"]),
        "fade_frames": st.integers(1, 12),
        "seed_offset": st.integers(0, 2**63 - 1),
        "image": st.just("assets/start.png"),
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    clips=st.lists(CLIP, min_size=1, max_size=17),
    tail=st.one_of(st.just(4), st.integers(0, 20)),
    seed=st.one_of(st.integers(0, 1000), st.integers(2**63 - 20, 2**63 - 1)),
)
def test_whatever_export_writes_replans_to_the_same_clips_seams_and_seeds(clips, tail, seed):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "assets").mkdir()
        (folder / "assets" / "start.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(16))
        spec = {
            "version": 1,
            "defaults": {"model": "ltx-2-tiny:random", "width": 64, "height": 64},
            "shots": [
                {
                    "id": "s",
                    "prompt": "x",
                    "audio": False,
                    "seed": seed,
                    "motion_tail": tail,
                    "clips": clips,
                }
            ],
        }
        path = write(folder, "film.yaml", json.dumps(spec))
        plan = plan_file(path)
        if not plan.valid:
            return
        out = folder / "s.toml"
        try:
            out.write_text(mold_script(plan, "s", out))
        except CannotExport:
            return
        doc = tomllib.loads(out.read_text())
        # what mold reads: at most 16 stages, a tail in 1..every stage's frames - 1, i64 seeds
        assert len(doc["stage"]) <= 16
        assert all(0 < doc["chain"]["motion_tail_frames"] < s["frames"] for s in doc["stage"])
        assert all(0 <= s["seed_offset"] <= 2**63 - 1 for s in doc["stage"])
        again = planned(out)
        a, b = plan.shots[0], again.shots[0]
        assert [c.frames for c in a.clips] == [c.frames for c in b.clips]
        assert a.seams == b.seams and [c.seed for c in a.clips] == [c.seed for c in b.clips]
        assert a.frames == b.frames
        assert [(c.image, c.keyframes) for c in a.clips] == [
            (c.image, c.keyframes) for c in b.clips
        ]
        assert [s.key for s in plan.stages] == [s.key for s in again.stages]


def test_readme_renders_fewer_frames_than_mold_for_400_frames_at_tails_9_and_17(film_dir):
    # mold-core chain.rs `build_auto_expand_stages` and test `build_stages_math_matches_
    # stitch_budget` (400 frames, clip 97, tail 4: 5 stages, each 97 frames = 485 rendered);
    # tail 17 is the CLI's default (mold-cli main.rs `run_motion_tail_defaults_to_seventeen`):
    # 1 + ceil((400 - 97) / (97 - 17)) = 5 stages, 485 frames rendered too; so is tail 9
    # (moldbatch specs take tails of 8m+1 only)
    for tail, ours in ((9, 437), (17, 469)):
        stages_mold = 1 + -(-(400 - 97) // (97 - tail))
        assert stages_mold * 97 == 485
        spec = write(
            film_dir,
            "film.yaml",
            f"version: 1\nshots:\n  - {{id: s, prompt: x, frames: 400, motion_tail: {tail}}}\n",
        )
        shot = planned(spec).shots[0]
        assert shot.frames == 400 and sum(c.frames for c in shot.clips) == ours


REAL = {"model": "ltx-2-19b-distilled:fp8", "width": 1216, "height": 704, "steps": 8}


@pytest.mark.parametrize(
    ("doc", "path", "words"),
    [
        # the cases of mold-cli tests/chain_validate_corpus.rs (its tests/adversarial/ scripts)
        ({"schema": "mold.chain.v99"}, "schema", "mold.chain.v99"),  # rejects_unknown_schema
        ({"stage": [{"prompt": "a", "frames": 96}]}, "stage[0].frames", "8k+1"),  # non_8kplus1
        (  # rejects_reserved_loras: mold refuses a stage's reserved `loras`, and so do we
            {"stage": [{"prompt": "a", "frames": 97, "loras": [{"path": "x", "scale": 0.8}]}]},
            "stage[0].loras",
            "mold reserves it",
        ),
    ],
)
def test_molds_adversarial_scripts_are_refused_naming_the_field(film_dir, doc, path, words):
    doc = {"schema": "mold.chain.v1", "chain": dict(MOLD_CHAIN, **REAL), **doc}
    doc.setdefault("stage", [{"prompt": "a", "frames": 97}])
    plan = plan_file(write(film_dir, "bad.toml", tomli_w.dumps(doc)))
    errors = [d for d in plan.diagnostics if d.severity == "error"]
    assert [d.path for d in errors] == [path] and words in errors[0].message


def test_a_prompt_across_lines_is_accepted_as_mold_accepts_it(film_dir):
    # mold-cli tests/chain_validate_corpus.rs `accepts_newline_prompt`
    prompt = "first line\nsecond line\n"
    plan = planned(mold_file(film_dir, [{"prompt": prompt, "frames": 97}], **REAL))
    assert plan.shots[0].clips[0].prompt == prompt


def test_a_script_as_molds_write_script_emits_it_plans_with_its_images(film_dir):
    # mold-core chain_toml.rs `write_script` serialises `ChainScript`: schema first, every
    # [chain] field, and per stage `transition` always (stage 0's too) and the image as
    # base64 `source_image`; mold-core tests/chain_toml.rs `write_then_read_is_identity`
    # uses stages of 97, 49, 97 (cut) and 97 (fade 12) at tail 25
    image = b64(film_dir / "assets" / "start.png")
    stages = [
        {"prompt": "a", "frames": 97, "source_image": image, "transition": "smooth"},
        {"prompt": "b", "frames": 49, "transition": "smooth"},
        {"prompt": "c", "frames": 97, "transition": "cut", "source_image": image},
        {"prompt": "d", "frames": 97, "transition": "fade", "fade_frames": 12},
    ]
    plan = planned(mold_file(film_dir, stages, motion_tail_frames=25, seed=42, **REAL))
    shot = plan.shots[0]
    assert shot.seams == [["smooth", 25], ["cut", 0], ["fade", 12]]
    assert shot.frames == 97 + 49 - 25 + 97 + 97 - 12
    assert [c.image is not None for c in shot.clips] == [True, False, True, False]


def test_a_script_without_a_schema_line_is_read_as_mold_chain_v1(film_dir):
    # mold-core chain_toml.rs test `read_accepts_missing_schema_header`
    doc = {"chain": MOLD_CHAIN, "stage": [{"prompt": "hello", "frames": 9}]}
    plan = planned(write(film_dir, "bare.toml", tomli_w.dumps(doc)))
    assert [c.prompt for c in plan.shots[0].clips] == ["hello"]


def test_a_missing_source_image_path_is_named(film_dir):
    # mold-core chain_toml.rs test `read_reports_missing_source_image_file`
    stage = {"prompt": "x", "frames": 9, "source_image_path": "missing.png"}
    plan = plan_file(mold_file(film_dir, [stage]))
    (diag,) = plan.diagnostics
    assert diag.path == "stage[0].source_image_path" and "missing.png" in diag.message
