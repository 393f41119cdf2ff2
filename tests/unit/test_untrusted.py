"""Specs from a stranger (a pull request, a fork): every path stays inside the spec's project
unless the user widens it, sizes and lengths are bounded at plan time, and what a spec writes
cannot be turned against the reader of a page or a CI log. No render here (see
tests/func/test_untrusted_render.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from moldbatch.cli import cli
from moldbatch.errors import printable
from moldbatch.models import MODELS, TINY_MODEL
from moldbatch.plan.planner import plan_file
from moldbatch.review.page import json_script
from moldbatch.review.storyboard import render_storyboard
from moldbatch.spec.schema import MAX_ID_LENGTH

from conftest import ASSETS, write

HEAD = "version: 1\ndefaults: {model: ltx-2-tiny:random, width: 64, height: 64, frames: 9}\n"


def errors(path: Path, **kw) -> list[str]:
    return [str(d) for d in plan_file(path, display=path.name, **kw).errors]


@pytest.fixture
def checkout(tmp_path: Path):
    """(project, outside): a project folder with the corpus assets, and a folder beside it
    with files a spec has no business reading."""
    project, outside = tmp_path / "project", tmp_path / "outside"
    shutil.copytree(ASSETS, project / "assets")
    outside.mkdir()
    for name in ("start.png", "solo.wav", "style.safetensors", "source.mp4"):
        shutil.copy(ASSETS / name, outside / name)
    (outside / "notes.txt").write_text("not an image")
    return project, outside


# --- confinement ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "image: {}/start.png",
        "keyframes: [{{frame: 0, image: {}/start.png}}, {{frame: 8, image: assets/end.png}}]",
        "audio_file: {}/solo.wav",
        "video: {}/source.mp4, pipeline: ic-lora, loras: [{{path: assets/style.safetensors}}]",
        "loras: [{{path: {}/style.safetensors}}]",
    ],
)
@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_a_spec_cannot_name_an_input_outside_its_project(checkout, field, how):
    project, outside = checkout
    if how == "absolute":
        where = str(outside)
    elif how == "dotdot":
        where = "../outside"
    else:
        (project / "linked").symlink_to(outside)  # a link committed in the checkout
        where = "linked"
    spec = write(
        project, "f.yaml", HEAD + f"shots:\n  - {{id: a, prompt: hi, {field.format(where)}}}\n"
    )
    found = errors(spec)
    assert len(found) == 1, found
    assert re.match(r"f\.yaml:4:\d+: shots\[0\]\.\S+: '.*' is outside the spec's project", found[0])
    assert "--allow-path" in found[0]


def test_an_outside_path_says_nothing_about_whether_the_file_exists(checkout):
    project, outside = checkout
    lines = []
    for name in ("start.png", "notes.txt", "missing.png"):  # a PNG, not a PNG, no file
        spec = write(
            project,
            "f.yaml",
            HEAD + f"shots:\n  - {{id: a, prompt: hi, image: {outside / name}}}\n",
        )
        (line,) = errors(spec)
        lines.append(line.replace(name, "NAME"))
    assert lines[0] == lines[1] == lines[2]
    assert "not found" not in lines[0] and "PNG" not in lines[0]


@pytest.mark.parametrize("output", ["/etc/x.mp4", "../outside/film.mp4", "linked/film.mp4"])
def test_the_film_output_cannot_leave_the_project(checkout, output):
    project, outside = checkout
    (project / "linked").symlink_to(outside)
    spec = write(project, "f.yaml", HEAD + f"output: {output}\nshots:\n  - {{id: a, prompt: hi}}\n")
    (line,) = errors(spec)
    assert line.startswith("f.yaml:3:9: output: ") and "is outside the spec's project" in line


def test_a_symlinked_renders_or_work_folder_is_refused_unless_given(checkout):
    project, outside = checkout
    (project / "renders").symlink_to(outside)
    (project / ".moldbatch").symlink_to(outside)
    spec = write(project, "f.yaml", HEAD + "shots:\n  - {id: a, prompt: hi}\n")
    found = errors(spec)
    assert len(found) == 2
    assert "renders/ is outside the spec's project" in found[0] and "--out DIR" in found[0]
    assert "work folder .moldbatch/ is outside" in found[1] and "--workdir DIR" in found[1]
    # the folders given on the command line are the user's own
    assert errors(spec, out_dir=outside / "r", workdir=outside / "w") == []


def test_allow_path_and_the_environment_let_a_named_folder_in(checkout, monkeypatch):
    project, outside = checkout
    spec = write(
        project, "f.yaml", HEAD + f"shots:\n  - {{id: a, prompt: hi, image: {outside}/start.png}}\n"
    )
    assert len(errors(spec)) == 1
    plan = plan_file(spec, allow=[outside])
    assert plan.valid and plan.shots[0].clips[0].image == str(outside / "start.png")
    monkeypatch.setenv("MOLDBATCH_ALLOW_PATHS", f"/nowhere:{outside}")
    assert errors(spec) == []


def test_the_project_is_the_git_work_tree_holding_the_spec(checkout):
    project, _ = checkout
    (project / "films").mkdir()
    spec = write(
        project / "films",
        "f.yaml",
        HEAD + "shots:\n  - {id: a, prompt: hi, image: ../assets/start.png}\n",
    )
    assert len(errors(spec)) == 1  # no work tree: the spec's folder is the project
    (project / ".git").mkdir()
    assert errors(spec) == []


def test_a_mold_scripts_source_image_path_is_confined_too(checkout):
    project, outside = checkout
    spec = write(
        project,
        "walk.toml",
        'schema = "mold.chain.v1"\n[chain]\nmodel = "ltx-2-tiny:random"\nwidth = 64\nheight = 64\n'
        '[[stage]]\nprompt = "hi"\nframes = 9\n'
        f'source_image_path = "{outside}/start.png"\n',
    )
    found = errors(spec)
    assert len(found) == 1 and "source_image_path: " in found[0] and "outside" in found[0]


@pytest.mark.parametrize(
    "command",
    [
        ["validate", "f.yaml"],
        ["plan", "f.yaml"],
        ["status", "f.yaml"],
        ["gc", "--dry-run", "f.yaml"],
        ["export", "mold", "f.yaml"],
        ["diff", "f.yaml", "f.yaml"],
    ],
)
def test_every_command_that_plans_takes_allow_path(checkout, monkeypatch, command):
    project, outside = checkout
    shot = f"{{id: a, prompt: hi, audio: false, image: {outside}/start.png}}"
    write(project, "f.yaml", HEAD + f"shots:\n  - {shot}\n")
    monkeypatch.chdir(project)
    runner = CliRunner()
    refused = runner.invoke(cli, command)
    assert refused.exit_code in (1, 2) and "outside the spec's project" in refused.output
    allowed = runner.invoke(cli, [*command[:-1], "--allow-path", str(outside), command[-1]])
    assert allowed.exit_code == 0, allowed.output


def test_render_takes_allow_path(checkout, monkeypatch):
    project, outside = checkout
    write(
        project, "f.yaml", HEAD + f"shots:\n  - {{id: a, prompt: hi, image: {outside}/start.png}}\n"
    )
    monkeypatch.chdir(project)
    res = CliRunner().invoke(cli, ["render", "f.yaml"])
    assert res.exit_code == 1 and "outside the spec's project" in res.output
    assert "--allow-path" in CliRunner().invoke(cli, ["render", "--help"]).output


# --- limits, at plan time -------------------------------------------------------------------


def test_a_shot_id_longer_than_every_filesystem_takes_is_refused(tmp_path):
    ok = "a" * MAX_ID_LENGTH
    spec = write(tmp_path, "f.yaml", HEAD + f"shots:\n  - {{id: {ok}, prompt: hi}}\n")
    assert errors(spec) == []
    spec = write(tmp_path, "f.yaml", HEAD + f"shots:\n  - {{id: {'a' * 300}, prompt: hi}}\n")
    (line,) = errors(spec)
    assert line.startswith("f.yaml:4:10: shots[0].id: shot id is 300 characters, at most 64")


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_a_prompt_far_past_what_the_text_encoder_reads_is_refused(tmp_path, field):
    extra = "prompt: hi, " if field != "prompt" else ""
    spec = write(
        tmp_path, "f.yaml", HEAD + f"shots:\n  - {{id: a, {extra}{field}: {'word ' * 4000}}}\n"
    )
    (line,) = errors(spec)
    assert f"shots[0].{field}: is 19,999 characters, at most 10,000" in line
    assert "text encoder reads at most its sequence length of tokens" in line


def test_render_sizes_are_bounded_per_model_by_latent_tokens(tmp_path):
    tiny = MODELS[TINY_MODEL]
    ok = write(
        tmp_path, "f.yaml", HEAD + "shots:\n  - {id: a, prompt: hi, width: 2048, height: 2048}\n"
    )
    assert errors(ok) == []  # 9 frames at 2048x2048: measured to render on the tiny model
    spec = write(
        tmp_path,
        "f.yaml",
        HEAD + "shots:\n  - {id: a, prompt: hi, width: 2048, height: 2048, frames: 97}\n",
    )
    (line,) = errors(spec)
    assert line.startswith("f.yaml:4:32: shots[0].width: 2048x2048 with clips of 97")
    assert f"above the {tiny.max_latent_tokens:,} that {TINY_MODEL} can render" in line
    assert "clip_frames to at most 9" in line
    real = write(
        tmp_path,
        "r.yaml",
        "version: 1\nshots:\n  - {id: a, prompt: hi, width: 8192, height: 8192, frames: 97}\n",
    )
    (line,) = errors(real)
    assert "8192x8192 with clips of 97 rendered frames" in line and "lower width/height" in line


@pytest.mark.parametrize(
    "name,text",
    [
        ("f.toml", "version = 1\nx = " + "[" * 500 + "]" * 500 + "\n"),
        ("f.toml", "version = 1\nx = " + "[" * 100 + "]" * 100 + "\n"),
        ("f.yaml", "version: 1\nx: " + "[" * 500 + "]" * 500 + "\n"),
    ],
)
def test_a_document_nested_hundreds_deep_is_one_line(tmp_path, name, text):
    spec = write(tmp_path, name, text)
    (line,) = errors(spec)
    assert "nested more than 32 levels deep" in line


@pytest.mark.slow
def test_a_long_shot_list_without_aliases_is_no_alias_bomb(tmp_path):
    shots = "".join(f"  - {{id: s{i}, prompt: p}}\n" for i in range(50_000))
    spec = write(tmp_path, "f.yaml", HEAD + "shots:\n" + shots)
    plan = plan_file(spec)
    assert plan.valid, [str(d) for d in plan.errors[:3]]
    assert len(plan.shots) == 50_000


# --- output that cannot be turned against its reader ----------------------------------------


def test_embedded_json_escapes_what_could_end_or_comment_the_script():
    doc = {"prompt": "<!--<script>alert(1)</script>--> & ]]>", "x": "\u2028"}
    html = json_script("d", doc)
    body = html.split(">", 1)[1].rsplit("</script>", 1)[0]
    assert not set(body) & set("<>&\u2028")
    assert json.loads(body) == doc


def test_a_storyboard_keeps_a_hostile_prompt_inside_its_json(tmp_path):
    spec = write(
        tmp_path, "f.yaml", HEAD + "shots:\n  - {id: a, prompt: '<!--<script>x</script>'}\n"
    )
    page = render_storyboard(plan_file(spec), {})
    assert "<!--<script>" not in page and page.count("<script") == page.count("</script>")


def test_user_text_is_printed_with_control_characters_escaped(tmp_path, monkeypatch):
    name = "film\\n::error file=x::owned\\e]0;title\\a\\e[31m"
    write(
        tmp_path,
        "f.yaml",
        f'version: 1\nname: "{name}"\n' + HEAD[11:] + "shots:\n  - {id: a, prompt: hi}\n",
    )
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["plan", "f.yaml"])
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\x07" not in res.output
    assert not any(line.startswith("::") for line in res.output.splitlines())
    assert "film\\n::error file=x::owned\\x1b]0;title\\x07\\x1b[31m" in res.output
    assert printable("a\tb\u202ec") == "a\\tb\\u202ec"
