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
    assert [c["frames"] for c in shot["clips"]] == [97, 97, 97, 97, 33]
    clip = shot["clips"][2]
    assert {"index", "frames", "prompt", "seed", "keyframes"} <= set(clip)
    assert clip["keyframes"][0]["frame"] == 14  # shot frame 200 -> clip 2, local 200 - 186
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
    assert {"id", "kind", "shot", "needs", "key", "cached"} <= set(stage)


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
    assert res.exit_code == 1
    assert res.output.strip().endswith("nope.yaml:1:1: no such file")
    other = write(tmp_path, "film.json", "{}")
    res = run("validate", str(other))
    assert "unknown spec format '.json'" in res.output
