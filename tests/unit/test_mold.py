"""mold.chain.v1 scripts in and out, and explicit clip lists."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moldbatch.cli import cli
from moldbatch.plan.planner import plan_file
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
    assert clip1.needs == ["walk/clip-0"] and clip1.params.conditions.carry_tail == 4
    assert clip2.needs == [] and clip3.needs == []


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
    again = plan_file(out)
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
    assert keys(again) == [s.key for s in original.stages if s.shot == "walk"]


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
    for seam, want in (("smooth", 25 + 17 - 4), ("cut", 25 + 17), ("fade", 25 + 17 - 8)):
        spec = write(
            film_dir,
            "film.yaml",
            f"""\
version: 1
defaults: {{model: ltx-2-tiny:random, width: 64, height: 64, motion_tail: 4, fade_frames: 8}}
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
