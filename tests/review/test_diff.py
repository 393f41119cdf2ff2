"""`moldbatch diff`: what a spec change adds, removes and re-renders, and why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moldbatch.plan.planner import plan_file
from moldbatch.review.diff import ADDED, CHANGED, REMOVED, diff_plans, format_markdown

from conftest import write

FILM = """\
version: 1
name: film
defaults: {model: ltx-2-19b-distilled:fp8, width: 1216, height: 704, fps: 24}
output: renders/film.mp4
shots:
  - id: opening
    prompt: cliffs at dawn
    frames: 97
    image: assets/start.png
  - id: walk
    frames: 250
    prompts: [a forest path, a lake shore, fireflies over water]
  - id: crater
    prompt: the crater erupts
    frames: 49
"""


def plan_of(folder: Path, text: str, name: str = "film.yaml"):
    plan = plan_file(write(folder, name, text))
    assert plan.valid, [str(d) for d in plan.diagnostics]
    return plan


def changes(old: str, new: str, folder: Path):
    """The diff, and its changed stages but the prompts' encodes (`encodes` lists those)."""
    d = diff_plans(plan_of(folder, old, "old.yaml"), plan_of(folder, new, "new.yaml"))
    moved = {c.id: c for c in d.stages if c.change != "unchanged"}
    return d, {i: c for i, c in moved.items() if c.kind != "encode"}


def encodes(d) -> dict[str, list[str]]:
    """change -> ids of the encode stages that changed so."""
    out: dict[str, list[str]] = {}
    for c in d.stages:
        if c.kind == "encode" and c.change != "unchanged":
            out.setdefault(c.change, []).append(c.id)
    return out


def test_prompt_of_one_clip_rerenders_that_clip_and_the_later_ones(film_dir):
    d, moved = changes(FILM, FILM.replace("a lake shore", "a misty lake shore"), film_dir)
    assert d.changed
    assert set(moved) == {
        "walk/clip-1",
        "walk/clip-2",
        "walk/refine-1",  # the distilled pipeline's second stage refines with the prompt
        "walk/refine-2",
        "walk/stitch",
        "walk/export",
        "film/join",
    }
    assert moved["walk/clip-1"].reasons == ["prompt"]
    # the new prompt is encoded, the old one's encode leaves the plan
    assert {k: len(v) for k, v in encodes(d).items()} == {ADDED: 1, REMOVED: 1}
    assert moved["walk/clip-2"].reasons == ["needs walk/clip-1"]  # the carried motion tail
    assert moved["walk/refine-1"].reasons == ["refine", "needs walk/clip-1"]
    assert moved["walk/stitch"].reasons == ["needs walk/refine-1", "needs walk/refine-2"]
    assert moved["film/join"].reasons == ["needs walk/stitch", "needs walk/export"]
    assert all(c.change == CHANGED for c in moved.values())
    assert d.gpu_seconds > 0


def test_model_change_rerenders_everything_of_that_shot(film_dir):
    new = FILM.replace(
        "    prompt: the crater erupts\n",
        "    prompt: the crater erupts\n    model: ltx-2.3-22b-distilled:fp8\n",
    )
    d, moved = changes(FILM, new, film_dir)
    crater = {s.id for s in plan_of(film_dir, FILM).stages if s.shot == "crater"}
    assert set(moved) == crater | {"film/join"}
    assert moved["crater/clip-0"].reasons == ["model"]
    assert moved["crater/refine-0"].reasons == ["model", "needs crater/clip-0"]
    assert moved["crater/stitch"].reasons == ["needs crater/refine-0"]


def test_added_and_removed_shots(film_dir):
    added = FILM + "  - {id: coda, prompt: ash falls, frames: 33}\n"
    d, moved = changes(FILM, added, film_dir)
    assert {i for i, c in moved.items() if c.change == ADDED} == {
        "coda/clip-0",
        "coda/refine-0",
        "coda/stitch",
        "coda/export",
    }
    assert moved["film/join"].change == CHANGED
    assert "shots" in moved["film/join"].reasons

    d, moved = changes(added, FILM, film_dir)
    assert {i for i, c in moved.items() if c.change == REMOVED} == {
        "coda/clip-0",
        "coda/refine-0",
        "coda/stitch",
        "coda/export",
    }
    assert [i for i, c in moved.items() if c.change == CHANGED] == ["film/join"]
    assert d.to_json()["shots"]["coda"]["removed"] == [
        "coda/clip-0",
        "coda/refine-0",
        "coda/stitch",
        "coda/export",
    ]


def test_reordered_shots_rerender_only_the_film_join(film_dir):
    head, rest = FILM.split("shots:\n")
    opening, walk, crater = ("  - id:" + s for s in rest.split("  - id:")[1:])
    d, moved = changes(FILM, head + "shots:\n" + crater + opening + walk, film_dir)
    assert list(moved) == ["film/join"]
    assert moved["film/join"].reasons[0] == "shots"


def test_whitespace_and_comment_changes_rerender_nothing(film_dir):
    noisy = "# a comment at the top\n" + FILM.replace(
        "shots:\n", "shots:   # the shot list\n\n"
    ).replace("frames: 97", "frames:    97   # one clip").replace(
        "{model: ltx-2-19b-distilled:fp8, width: 1216",
        "{ width: 1216, model: ltx-2-19b-distilled:fp8",
    )
    d, moved = changes(FILM, noisy, film_dir)
    assert not d.changed and moved == {}
    assert "Nothing re-renders" in format_markdown(d)


def test_changed_image_bytes_are_a_reason(film_dir):
    d, moved = changes(FILM, FILM.replace("assets/start.png", "assets/end.png"), film_dir)
    assert moved["opening/clip-0"].reasons == ["image"]


def moldbatch(*args, cwd: Path):
    return subprocess.run(
        [sys.executable, "-m", "moldbatch", *args], cwd=cwd, capture_output=True, text=True
    )


def test_cli_exit_codes_json_and_markdown(film_dir):
    write(film_dir, "a.yaml", FILM)
    write(film_dir, "b.yaml", FILM.replace("cliffs at dawn", "cliffs at dusk"))
    same = moldbatch("diff", "a.yaml", "a.yaml", cwd=film_dir)
    assert same.returncode == 0, same.stderr
    assert "nothing changes" in same.stdout

    res = moldbatch("diff", "a.yaml", "b.yaml", cwd=film_dir)
    assert res.returncode == 1, res.stderr
    assert "opening/clip-0" in res.stdout and "prompt" in res.stdout
    assert "estimated GPU time" in res.stdout

    doc = json.loads(moldbatch("diff", "--json", "a.yaml", "b.yaml", cwd=film_dir).stdout)
    assert doc["rerenders"] is True
    assert doc["shots"]["opening"]["changed"] == [
        "opening/clip-0",
        "opening/refine-0",
        "opening/stitch",
        "opening/export",
    ]
    assert doc["counts"]["changed"] == 5  # and film/join
    md = moldbatch("diff", "--markdown", "a.yaml", "b.yaml", cwd=film_dir).stdout
    assert "| opening | `opening/clip-0` | re-render | prompt |" in md

    bad = moldbatch("diff", "a.yaml", "missing.yaml", cwd=film_dir)
    assert bad.returncode == 2 and "missing.yaml" in bad.stderr


def test_git_revisions(film_dir):
    def git(*args):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=film_dir,
            check=True,
            capture_output=True,
        )

    git("init", "-q")
    write(film_dir, "film.yaml", FILM)
    git("add", "-A")
    git("commit", "-qm", "one")
    write(film_dir, "film.yaml", FILM.replace("the crater erupts", "the crater sleeps"))
    git("commit", "-qam", "two")

    res = moldbatch("diff", "--json", "HEAD~1:film.yaml", "film.yaml", cwd=film_dir)
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert doc["old"] == "HEAD~1:film.yaml"
    assert doc["shots"]["crater"]["changed"] == [
        "crater/clip-0",
        "crater/refine-0",
        "crater/stitch",
        "crater/export",
    ]
    assert moldbatch("diff", "HEAD:film.yaml", "film.yaml", cwd=film_dir).returncode == 0
    # from a subfolder, ./ paths are relative to it
    (film_dir / "sub").mkdir()
    res = moldbatch("diff", "HEAD~1:../film.yaml", "../film.yaml", cwd=film_dir / "sub")
    assert res.returncode in (1, 2)  # git may refuse ../ paths; it must not crash
    assert not list(film_dir.glob(".moldbatch-diff-*")), "temporary spec left behind"
    bad = moldbatch("diff", "HEAD~5:film.yaml", "film.yaml", cwd=film_dir)
    assert bad.returncode == 2 and "HEAD~5" in bad.stderr


@pytest.mark.parametrize("ref", ["nope.yaml", "nope:film.yaml"])
def test_unreadable_sides_exit_2(film_dir, ref):
    write(film_dir, "film.yaml", FILM)
    assert moldbatch("diff", ref, "film.yaml", cwd=film_dir).returncode == 2


def test_plan_html_diff_and_cost_need_no_torch(film_dir):
    """The light install: click, pydantic, pyyaml and rich only."""
    write(film_dir, "a.yaml", FILM)
    write(film_dir, "b.yaml", FILM.replace("cliffs at dawn", "cliffs at dusk"))
    blocked = ("torch", "numpy", "PIL", "av", "safetensors", "diffusers")
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
        + "from moldbatch.cli import cli\n"
        "for args in (['plan', 'a.yaml', '--json', '--html', 'sb.html'], ['diff', 'a.yaml', 'b.yaml']):\n"
        "    try:\n"
        "        cli(args, standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print('ok', sorted(m for m in sys.modules if m.split('.')[0] in {blocked!r} "
        "and sys.modules[m]))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=film_dir, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("ok []"), res.stdout[-500:]
    assert (film_dir / "sb.html").stat().st_size > 5000


def _git(folder: Path, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=folder,
        check=True,
        capture_output=True,
    )


def test_a_revision_side_reads_its_assets_from_that_revision(film_dir):
    # a pull request that changes only assets/start.png: the spec's text is the same
    write(film_dir, "film.yaml", FILM)
    _git(film_dir, "init", "-q")
    _git(film_dir, "add", "-A")
    _git(film_dir, "commit", "-qm", "one")
    (film_dir / "assets" / "start.png").write_bytes((film_dir / "assets" / "end.png").read_bytes())
    _git(film_dir, "commit", "-qam", "a new start frame")

    res = moldbatch("diff", "--json", "HEAD~1:film.yaml", "HEAD:film.yaml", cwd=film_dir)
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    moved = {s["id"]: s for s in doc["stages"] if s["status"] != "unchanged"}
    assert moved["opening/clip-0"]["reasons"] == ["image"]
    assert doc["shots"]["walk"]["changed"] == []  # the other shots do not use it
    # the working tree against its own revision: nothing
    assert moldbatch("diff", "HEAD:film.yaml", "film.yaml", cwd=film_dir).returncode == 0


def test_a_spec_new_in_the_revision_is_all_added(film_dir):
    _git(film_dir, "init", "-q")
    _git(film_dir, "add", "-A")
    _git(film_dir, "commit", "-qm", "assets only")
    write(film_dir, "film.yaml", FILM)

    res = moldbatch("diff", "--json", "HEAD:film.yaml", "film.yaml", cwd=film_dir)
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert doc["counts"]["added"] == len(doc["stages"]) > 0
    assert doc["counts"]["removed"] == doc["counts"]["changed"] == 0
