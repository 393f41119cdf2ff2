"""The operations layer called directly, as the CLI calls it: each refusal is a MoldbatchError
with its exit code, raised before anything is rendered or written."""

from __future__ import annotations

import pytest

from moldbatch import cli, operations
from moldbatch.errors import MoldbatchError, OverBudget, SpecInvalid, UsageError

from conftest import write

REAL = """\
version: 1
defaults: {model: ltx-2-19b-distilled:fp8, width: 1216, height: 704}
shots:
  - {id: a, prompt: waves, frames: 97}
  - {id: b, prompt: rocks, frames: 97}
"""


def test_a_bad_spec_is_a_plan_with_diagnostics_never_an_exception(tmp_path):
    plan = operations.load_plan(write(tmp_path, "film.yaml", "version: 1\nshots: [{id: a}]\n"))
    assert not plan.valid and plan.errors


def test_rendering_an_invalid_plan_is_refused_with_exit_1(tmp_path):
    plan = operations.load_plan(write(tmp_path, "film.yaml", "version: 1\nshots: [{id: a}]\n"))
    with pytest.raises(SpecInvalid) as e:
        operations.render(plan)
    assert e.value.exit_code == 1 and not (tmp_path / ".moldbatch").exists()


def test_a_render_over_its_budget_is_refused_with_exit_4(tmp_path):
    plan = operations.load_plan(write(tmp_path, "film.yaml", REAL))
    with pytest.raises(OverBudget, match="--max-gpu-minutes") as e:
        operations.render(plan, max_gpu_minutes=0.001)
    assert e.value.exit_code == 4 and not (tmp_path / ".moldbatch").exists()


def test_a_render_without_the_model_files_is_refused_with_exit_3(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("MOLDBATCH_MODELS", raising=False)
    plan = operations.load_plan(write(tmp_path, "film.yaml", REAL))
    with pytest.raises(operations.ModelFilesMissing, match="moldbatch pull") as e:
        operations.render(plan)
    assert e.value.exit_code == 3 and not (tmp_path / ".moldbatch").exists()


def test_exporting_a_film_of_several_shots_needs_a_shot_id(tmp_path):
    plan = operations.load_plan(write(tmp_path, "film.yaml", REAL))
    with pytest.raises(UsageError, match="pick one with --shot") as e:
        operations.export_mold(plan, None)
    assert e.value.exit_code == 2


def test_the_clis_exit_code_table_covers_every_error():
    def every(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from every(sub)

    import moldbatch.execute.ray_driver
    import moldbatch.review.diff
    import moldbatch.spec.mold
    import moldbatch.weights.pull  # noqa: F401

    table = {
        int(line.split()[0]) for line in cli.__doc__.splitlines() if line[:3].strip().isdigit()
    }
    assert table == {0, 1, 2, 3, 4, 130}
    codes = {e.__name__: e.exit_code for e in every(MoldbatchError)}
    assert len(codes) >= 15 and set(codes.values()) <= table, codes
