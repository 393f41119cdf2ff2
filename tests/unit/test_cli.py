"""The dry-run CLI: validate, plan, schema and models, as a CI job would call them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from moldbatch.cli import cli
from moldbatch.spec.schema import json_schema

from conftest import REPO, write

CORPUS = REPO / "specs" / "conformance"


def run(*args, cwd: Path | None = None):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_validate_exit_codes_and_line_format():
    ok = run("validate", str(CORPUS / "valid" / "chain-400.yaml"))
    assert ok.exit_code == 0 and ok.output == ""
    bad = run("validate", str(CORPUS / "invalid" / "frames-off-grid.yaml"))
    assert bad.exit_code == 1
    assert bad.output.strip().endswith(
        "frames-off-grid.yaml:6:13: shots[0].frames: 96 frames is off the 8k+1 frame grid: "
        "use 89 or 97 (or give `duration` to have the shot trimmed exactly)"
    )


def test_validate_reports_every_file_and_every_error():
    res = run(
        "validate",
        str(CORPUS / "invalid" / "many-errors.yaml"),
        str(CORPUS / "invalid" / "unknown-key.yaml"),
        str(CORPUS / "valid" / "media.yaml"),
    )
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 7
    assert sum("many-errors.yaml" in line for line in lines) == 5


def test_usage_errors_exit_2():
    assert run("validate").exit_code == 2
    assert run("plan").exit_code == 2
    assert run("frobnicate").exit_code == 2


def test_strict_turns_warnings_into_errors():
    spec = str(CORPUS / "valid" / "warnings.yaml")
    assert run("validate", spec).exit_code == 0
    assert run("validate", "--strict", spec).exit_code == 1
    assert run("plan", "--json", "--strict", spec).exit_code == 1


def test_plan_json_has_the_documented_shape():
    res = run("plan", "--json", str(CORPUS / "valid" / "chain-400.yaml"))
    assert res.exit_code == 0
    doc = json.loads(res.output)
    assert doc["valid"] is True and doc["errors"] == [] and doc["warnings"] == []
    shot = doc["shots"][0]
    for field in (
        "id",
        "model",
        "frames",
        "width",
        "height",
        "fps",
        "format",
        "audio",
        "clips",
        "output",
    ):
        assert field in shot
    assert [c["frames"] for c in shot["clips"]] == [97, 97, 97, 97, 81]
    clip = shot["clips"][2]
    assert {"index", "frames", "prompt", "seed", "keyframes"} <= set(clip)
    assert clip["keyframes"][0]["frame"] == 40  # shot frame 200 -> clip 2, local 200 - 160
    assert shot["output"] == {
        "frames": 400,
        "width": 1216,
        "height": 704,
        "fps": 24.0,
        "path": shot["output"]["path"],
    }
    encodes = [s for s in doc["stages"] if s["kind"] == "encode"]
    assert doc["stages"][: len(encodes)] == encodes  # the text phase first
    assert all(s["id"].startswith("encode/") and s["shot"] is None for s in encodes)
    stage = doc["stages"][len(encodes) + 2]  # after clip 0 and its second stage, refine-0
    assert stage["id"] == "opening/clip-1" and stage["needs"][0] == "opening/clip-0"
    assert all(n.startswith("encode/") for n in stage["needs"][1:])
    assert {"id", "kind", "shot", "needs", "key", "status"} <= set(stage)
    assert stage["status"] == "pending"  # the same word as render's and status's
    assert doc["counts"]["pending"] == len(doc["stages"]) and doc["counts"]["cached"] == 0


def test_plan_json_of_an_invalid_spec_lists_errors_with_positions():
    res = run("plan", "--json", str(CORPUS / "invalid" / "keyframes.yaml"))
    assert res.exit_code == 1
    doc = json.loads(res.output)
    assert doc["valid"] is False and doc["stages"] == []
    first = doc["errors"][0]
    assert (first["line"], first["column"], first["path"]) == (9, 17, "shots[0].keyframes[1].frame")


def test_plan_table_names_every_stage():
    res = run("plan", str(CORPUS / "valid" / "transitions.yaml"))
    assert res.exit_code == 0
    for stage in ("smooth/clip-2", "fade/clip-3", "cut/export"):
        assert stage in res.output
    assert "will render" in res.output


def test_schema_file_is_in_sync_with_the_models():
    published = json.loads((REPO / "schemas" / "moldbatch.schema.json").read_text())
    assert published == json_schema()
    res = run("schema")
    assert json.loads(res.output) == published


def test_models_lists_every_model_with_caps():
    res = run("models", "--json")
    doc = {m["name"]: m for m in json.loads(res.output)}
    assert set(doc) >= {
        "ltx-2-19b-dev:fp8",
        "ltx-2-19b-distilled:fp8",
        "ltx-2.3-22b-dev:fp8",
        "ltx-2.3-22b-distilled:fp8",
        "ltx-2-tiny:random",
    }
    assert doc["ltx-2.3-22b-distilled:fp8"]["spatial_upscales"] == ["x2", "x1.5"]
    assert doc["ltx-2-19b-distilled:fp8"]["camera_control"] is True
    assert all(m["clip_cap"] == 97 for m in doc.values())


def test_dry_run_commands_never_import_the_gpu_stack(tmp_path: Path):
    # a CI job lints shot lists with a light install: no torch, diffusers or transformers
    spec = str(CORPUS / "valid" / "transitions.yaml")  # no retake: probing video imports av
    chain = str(CORPUS / "valid" / "chain-400.yaml")
    code = (
        "import sys\n"
        "from moldbatch.cli import cli\n"
        f"for args in (['validate', {spec!r}], ['plan', '--json', {chain!r}], ['schema'], "
        "['models']):\n"
        "    try:\n"
        "        cli(args, standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = {'torch', 'diffusers', 'transformers', 'av', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_python_dash_m_works():
    res = subprocess.run(
        [sys.executable, "-m", "moldbatch", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0 and "validate" in res.stdout


def test_missing_spec_file_is_one_clean_line(tmp_path: Path):
    res = run("validate", str(tmp_path / "nope.yaml"))
    assert res.exit_code == 6  # a missing file: not "invalid spec"
    assert res.output.strip().endswith("nope.yaml:1:1: no such file")
    other = write(tmp_path, "film.json", "{}")
    res = run("validate", str(other))
    assert "unknown spec format '.json'" in res.output


def test_did_you_mean_knows_the_names_of_mold_comfyui_and_diffusers(tmp_path: Path):
    spec = write(
        tmp_path,
        "film.yaml",
        "version: 1\nshots:\n  - {id: a, prompt: x, length: 9, frame_rate: 24, cfg: 3,"
        " denoise: 0.5, source_image_path: a.png, num_inference_steps: 8}\n",
    )
    res = run("validate", str(spec))
    assert res.exit_code == 1
    said = {line.split(": unknown key ")[1] for line in res.output.strip().splitlines()}
    assert said == {
        "'length'; did you mean 'frames'? (ComfyUI's `length` is moldbatch's `frames`)",
        "'frame_rate'; did you mean 'fps'? (ComfyUI's `frame_rate` is moldbatch's `fps`)",
        "'cfg'; did you mean 'guidance'? (ComfyUI's `cfg` is moldbatch's `guidance`)",
        "'source_image_path'; did you mean 'image'? (mold's `source_image_path` is "
        "moldbatch's `image`)",
        "'num_inference_steps'; did you mean 'steps'? (diffusers's `num_inference_steps` is "
        "moldbatch's `steps`)",
        "'denoise'; moldbatch always denoises fully (ComfyUI's `denoise`): to hold a start "
        "image more or less firmly use 'image_strength', to re-render part of a video use "
        "'retake'",
    }


def test_a_mis_indented_yaml_line_gets_a_hint_about_indentation(tmp_path: Path):
    cases = {
        # a shot's key one column left of its siblings: a YAML error
        "version: 1\nshots:\n  - id: a\n    prompt: x\n   frames: 9\n": ":5:4: invalid YAML",
        # a shot's key at the film's level
        "version: 1\nshots:\n  - id: a\n    prompt: x\nframes: 9\n": ":5:1: frames: unknown key",
        # a tab
        "version: 1\nshots:\n\t- id: a\n": ":3:1: invalid YAML",
    }
    for text, where in cases.items():
        res = run("validate", str(write(tmp_path, "film.yaml", text)))
        assert res.exit_code == 1 and where in res.output, res.output
        assert "indent" in res.output.lower(), res.output
        assert "did you mean 'name'" not in res.output  # not the nearest film key


def test_every_commands_help_has_an_example_and_its_exit_codes():
    def commands(group, prefix=()):
        for name, cmd in group.commands.items():
            yield (*prefix, name), cmd
            if hasattr(cmd, "commands"):
                yield from commands(cmd, (*prefix, name))

    seen = 0
    for path, _cmd in commands(cli):
        res = run(*path, "--help")
        assert res.exit_code == 0, path
        assert "  Examples:\n    moldbatch " in res.output, (path, res.output)
        assert "Exit codes: 0" in res.output, (path, res.output)
        seen += 1
    assert seen >= 11


def test_the_readme_lists_the_exit_codes_of_the_cli():
    from moldbatch import cli as cli_module

    table = {
        int(line.split()[0])
        for line in cli_module.__doc__.splitlines()
        if line[:3].strip().isdigit()
    }
    readme = (REPO / "README.md").read_text()
    section = readme.split("The exit codes, everywhere:")[1].split("\n\n")[1]
    listed = {int(row.split("|")[1]) for row in section.splitlines()[2:]}
    assert listed == table
