"""Inputs a fuzzer or a hurried user produces: each gets one clean line, or the right plan."""

from __future__ import annotations

from pathlib import Path

from moldbatch.plan.planner import plan_file

from conftest import write

HEAD = "version: 1\ndefaults: {model: ltx-2-tiny:random, width: 64, height: 64}\n"


def errors(path: Path) -> list[str]:
    return [str(d) for d in plan_file(path, display=path.name).errors]


def test_a_shot_without_frames_is_one_clip_of_clip_frames(tmp_path):
    spec = write(tmp_path, "f.yaml", HEAD + "output: film.mp4\nshots:\n  - {id: a, prompt: hi}\n")
    plan = plan_file(spec)
    assert plan.valid and plan.shots[0].frames == 97
    assert [c.frames for c in plan.shots[0].clips] == [97]


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    spec = write(
        tmp_path,
        "f.yaml",
        HEAD
        + """\
shots:
  - &s {id: a, prompt: hi, frames: 17}
  - <<: *s
    id: b
""",
    )
    plan = plan_file(spec)
    assert plan.valid, errors(spec)
    assert [s.id for s in plan.shots] == ["a", "b"]


def test_explicit_yaml_tags_that_do_not_fit_are_one_line(tmp_path):
    for value in ("!!int abc", "!!float x", "!!bool maybe", "!!timestamp x", "9" * 5000):
        spec = write(
            tmp_path, "f.yaml", HEAD + f"shots:\n  - {{id: a, prompt: hi, frames: {value}}}\n"
        )
        (line,) = errors(spec)
        assert line.startswith("f.yaml:4:33: shots[0].frames: cannot read")


def test_a_huge_toml_integer_is_one_line(tmp_path):
    spec = write(tmp_path, "f.toml", 'version = 1\n[[shots]]\nid = "a"\nframes = ' + "9" * 5000)
    (line,) = errors(spec)
    assert "a number is far too long" in line


def test_alias_bombs_stop_with_one_line(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = chr(96 + i)
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{prev}"] * 9) + "]")
    spec = write(tmp_path, "f.yaml", "\n".join(lines) + "\n")
    (line,) = errors(spec)
    assert "expands to too many values" in line


def test_yaml_exponent_numbers_are_numbers(tmp_path):
    spec = write(
        tmp_path,
        "f.yaml",
        HEAD.replace("height: 64}", "height: 64, fps: 1e2}")
        + "shots:\n  - {id: a, prompt: hi, duration: 5e-1}\n",
    )
    plan = plan_file(spec)
    assert plan.valid, errors(spec)
    assert (plan.shots[0].fps, plan.shots[0].frames) == (100.0, 50)


def test_a_relative_out_dir_cannot_make_the_film_overwrite_a_shot(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write(
        tmp_path,
        "f.yaml",
        HEAD
        + """\
output: a.mp4
shots: [{id: a, prompt: x, frames: 9}, {id: b, prompt: y, frames: 9}]
""",
    )
    plan = plan_file(spec, out_dir=Path("."))
    assert not plan.valid
    assert "the film's output is also shot 'a''s file" in str(plan.errors[0])


def test_a_shot_never_disappears_without_an_error(tmp_path):
    # whatever the spec, a valid plan has every shot it names
    spec = write(tmp_path, "f.yaml", HEAD + "shots:\n  - {id: a, prompt: hi, frames: !!null x}\n")
    plan = plan_file(spec)
    assert plan.valid and [s.id for s in plan.shots] == ["a"]


def test_too_many_clips_is_an_error_not_a_stall(tmp_path):
    spec = write(
        tmp_path,
        "f.yaml",
        HEAD
        + """\
shots: [{id: a, prompt: x, frames: 172800, clip_frames: 9, motion_tail: 1}]
""",
    )
    (line,) = errors(spec)
    assert "would need 21600 clips; at most 1000 per shot" in line
