"""The operations layer called directly, as the CLI calls it: each refusal is a MoldbatchError
with its exit code, raised before anything is rendered or written."""

from __future__ import annotations

import pytest

from moldbatch import cli, operations
from moldbatch.errors import (
    InputsMissing,
    MoldbatchError,
    OutputCollision,
    OverBudget,
    SpecInvalid,
    UsageError,
)

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
    assert table == {0, 1, 2, 3, 4, 5, 6, 130}
    codes = {e.__name__: e.exit_code for e in every(MoldbatchError)}
    assert len(codes) >= 15 and set(codes.values()) <= table, codes


TINY_FILM = """\
version: 1
defaults: {model: ltx-2-tiny:random, width: 64, height: 64, steps: 2}
shots:
  - {id: a, prompt: a red kite, frames: 9, image: assets/start.png}
"""


def test_a_missing_input_file_has_its_own_exit_code_not_invalid_spec(film_dir):
    plan = operations.load_plan(write(film_dir, "film.yaml", TINY_FILM.replace("start", "gone")))
    with pytest.raises(InputsMissing, match="file 'assets/gone.png' not found") as e:
        operations.render(plan)
    assert e.value.exit_code == 6
    # a missing file and another error: the spec must be fixed anyway, exit 1
    both = TINY_FILM.replace("start", "gone").replace("frames: 9", "frames: 10")
    plan = operations.load_plan(write(film_dir, "film.yaml", both))
    with pytest.raises(SpecInvalid) as e:
        operations.render(plan)
    assert e.value.exit_code == 1


def test_a_truncated_image_is_caught_when_the_spec_is_checked(film_dir):
    png = (film_dir / "assets" / "start.png").read_bytes()
    (film_dir / "assets" / "cut.png").write_bytes(png[: len(png) // 2])
    (film_dir / "assets" / "cut.jpg").write_bytes(
        (film_dir / "assets" / "middle.jpg").read_bytes()[:-300]
    )
    for name, why in (("cut.png", "the PNG is truncated"), ("cut.jpg", "the JPEG is truncated")):
        plan = operations.load_plan(
            write(film_dir, "film.yaml", TINY_FILM.replace("start.png", name))
        )
        (err,) = plan.errors
        assert err.path == "shots[0].image"
        assert err.message.startswith(f"'assets/{name}' cannot be decoded: {why}"), err.message
    assert operations.load_plan(write(film_dir, "film.yaml", TINY_FILM)).valid  # the whole one


def test_validate_catches_an_output_two_specs_of_one_folder_write(film_dir):
    a = write(film_dir, "a.yaml", TINY_FILM)
    b = write(film_dir, "b.yaml", TINY_FILM.replace("a red kite", "a blue kite"))
    first, second = operations.load_plans([a, b])
    assert first.valid and not second.valid
    (err,) = second.errors
    assert err.path == "shots[0].id" and "renders/a.mp4" in err.message
    assert "writes it too" in err.message and "--out DIR" in err.message
    with pytest.raises(OutputCollision) as e:
        operations.refuse_invalid(second)
    assert e.value.exit_code == 5
    # with each spec rendered into its own folder there is nothing to collide
    assert all(p.valid for p in operations.load_plans([a], out=film_dir / "one"))


def test_out_moves_the_joined_film_too(film_dir):
    spec = write(film_dir, "film.yaml", TINY_FILM + "output: cut/film.mp4\n")
    plan = operations.load_plan(spec, out=film_dir / "deliver")
    assert plan.valid, [str(d) for d in plan.diagnostics]
    assert plan.output == str(film_dir / "deliver" / "film.mp4")
    assert operations.load_plan(spec).output == str(film_dir / "cut" / "film.mp4")


def test_every_command_says_a_missing_spec_with_exit_6(tmp_path):
    from click.testing import CliRunner

    gone = str(tmp_path / "gone.yaml")
    for args in (
        ["validate", gone],
        ["plan", gone],
        ["plan", "--json", gone],
        ["render", gone],
        ["render", "--json", gone],
        ["status", gone],
        ["gc", gone],
        ["export", "mold", gone],
    ):
        res = CliRunner().invoke(cli.cli, args)
        assert res.exit_code == 6, (args, res.output)
        said = "no such file" if "--json" in args else "gone.yaml:1:1: no such file"
        assert said in res.output, (args, res.output)


def test_pull_for_a_spec_names_what_its_stages_need(tmp_path):
    spec = write(tmp_path, "film.yaml", REAL)
    ((model, chosen),) = operations.pull_targets(None, (), (str(spec),))
    assert model == "ltx-2-19b-distilled:fp8"
    assert chosen == operations.pull_choices(model, ("spatial-x2",))[1]  # its second stage
    tiny = write(tmp_path, "tiny.yaml", TINY_FILM.replace(", image: assets/start.png", ""))
    assert operations.pull_targets(None, (), (str(tiny),)) == []  # built in: nothing to fetch
    with pytest.raises(UsageError, match="--for SPEC"):
        operations.pull_targets(None, (), ())
    with pytest.raises(UsageError, match="not both"):
        operations.pull_targets(model, (), (str(spec),))
