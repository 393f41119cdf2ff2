"""`render --json`: one document, of one schema, however the render ends: done, a stage
failed, an invalid spec, a budget refusal, an output collision, a missing file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict, Field

from moldbatch.cli import cli

from conftest import undecodable_png, write

STATUS = Literal["rendered", "cached", "failed", "skipped", "pending"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StageDoc(Strict):
    id: str
    kind: Literal["encode", "clip", "refine", "upscale", "stitch", "export", "join"]
    shot: str | None
    status: STATUS
    seconds: float
    error: str | None


class DiagnosticDoc(Strict):
    file: str
    line: int
    column: int
    path: str
    message: str
    severity: Literal["error", "warning"]
    code: str


class RenderDoc(Strict):
    """The schema of `render --json` (operations.render_result)."""

    schema_: Literal["moldbatch.render/1"] = Field(alias="schema")
    ok: bool
    exit_code: int
    reason: str
    message: str | None
    spec: str
    workdir: str | None
    seconds: float
    counts: dict[STATUS, int]
    stages: list[StageDoc]
    outputs: dict[str, str]  # shot id (or "film") -> the file delivered
    report: str | None
    errors: list[DiagnosticDoc]
    warnings: list[DiagnosticDoc]


SPEC = """\
version: 1
defaults: {model: ltx-2-tiny:random, width: 64, height: 64, steps: 2}
shots:
  - {id: a, prompt: a red kite over dunes, frames: 9}
"""


def render_json(folder: Path, *args: str) -> tuple[int, RenderDoc]:
    res = CliRunner().invoke(cli, ["render", "--json", *args], catch_exceptions=False)
    doc = RenderDoc.model_validate(json.loads(res.stdout))  # stdout holds the JSON only
    assert doc.exit_code == res.exit_code
    assert set(doc.counts) == set(STATUS.__args__)
    assert sum(doc.counts.values()) == len(doc.stages)
    return res.exit_code, doc


def test_refusals_print_the_render_document(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "film.yaml", SPEC.replace("frames: 9", "frames: 10"))
    code, doc = render_json(tmp_path, "film.yaml")
    assert (code, doc.reason, doc.ok) == (1, "invalid-spec", False)
    assert doc.errors[0].path == "shots[0].frames" and doc.stages == []

    write(tmp_path, "film.yaml", SPEC)
    code, doc = render_json(tmp_path, "film.yaml", "--max-gpu-minutes", "0")
    assert (code, doc.reason) == (4, "over-budget") and "--max-gpu-minutes" in doc.message
    assert {s.status for s in doc.stages} == {"pending"} and doc.outputs == {}
    assert [s.kind for s in doc.stages if s.kind != "encode"] == ["clip", "stitch", "export"]

    write(tmp_path, "film.yaml", SPEC.replace("frames: 9}", "frames: 9, image: gone.png}"))
    code, doc = render_json(tmp_path, "film.yaml")
    assert (code, doc.reason) == (6, "missing-file")
    assert not (tmp_path / ".moldbatch").exists()  # nothing was rendered


def moldbatch(*args, cwd: Path):
    return subprocess.run(
        [sys.executable, "-m", "moldbatch", *args], cwd=cwd, capture_output=True, text=True
    )


@pytest.mark.slow
def test_success_stage_failure_and_collision_print_the_same_document(tmp_path):
    write(tmp_path, "film.yaml", SPEC)
    res = moldbatch("render", "film.yaml", "--json", cwd=tmp_path)
    doc = RenderDoc.model_validate(json.loads(res.stdout))
    assert (res.returncode, doc.exit_code, doc.reason, doc.ok) == (0, 0, "done", True)
    assert doc.counts["rendered"] == len(doc.stages) and doc.message is None
    assert [s.kind for s in doc.stages if s.kind != "encode"] == ["clip", "stitch", "export"]
    assert doc.outputs == {"a": str(tmp_path / "renders" / "a.mp4")}
    assert doc.report == str(tmp_path / "renders" / "film.report.html")
    assert Path(doc.report).is_file()

    # another spec of the folder with a shot `a`: its output is taken (exit 5)
    write(tmp_path, "other.yaml", SPEC.replace("a red kite", "a blue kite"))
    res = moldbatch("render", "other.yaml", "--json", cwd=tmp_path)
    doc = RenderDoc.model_validate(json.loads(res.stdout))
    assert (res.returncode, doc.exit_code, doc.reason) == (5, 5, "output-collision")
    assert "--out DIR" in doc.message and doc.counts["rendered"] == 0
    # validate and plan say so before a render is tried
    assert moldbatch("validate", "other.yaml", cwd=tmp_path).returncode == 5
    assert moldbatch("plan", "other.yaml", cwd=tmp_path).returncode == 5

    # a stage that fails: the others are done and kept, the report says which
    undecodable_png(tmp_path / "bad.png")
    spec = SPEC + "  - {id: b, prompt: a storm, frames: 9, image: bad.png}\n"
    write(tmp_path, "film.yaml", spec)
    res = moldbatch("render", "film.yaml", "--json", "--keep-going", cwd=tmp_path)
    doc = RenderDoc.model_validate(json.loads(res.stdout))
    assert (res.returncode, doc.exit_code, doc.reason, doc.ok) == (3, 3, "stage-failed", False)
    by_id = {s.id: s for s in doc.stages}
    assert by_id["b/clip-0"].status == "failed" and by_id["b/clip-0"].error
    assert by_id["b/export"].status == "skipped" and by_id["a/export"].status == "cached"
    assert set(doc.outputs) == {"a"} and doc.report is not None

    res = moldbatch("render", "film.yaml", "--json", cwd=tmp_path)  # without --keep-going
    doc = RenderDoc.model_validate(json.loads(res.stdout))
    assert (res.returncode, doc.reason) == (3, "stage-failed")
    assert "b/clip-0 failed" in doc.message
