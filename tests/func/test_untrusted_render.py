"""Rendering a stranger's checkout, and the faults a disk and a database can have: nothing
outside the project (and the folders given on the command line) is read or written, and
every fault ends in one line with what was rendered kept. Renders on the tiny model."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from moldbatch.errors import MoldbatchError
from moldbatch.execute import handlers as handlers_module
from moldbatch.execute.executor import render_plan
from moldbatch.plan.planner import plan_file

from conftest import ASSETS, shot_counts, write

HEAD = """\
version: 1
defaults: {model: ltx-2-tiny:random, width: 64, height: 64, steps: 2, frames: 9,
           format: gif, audio: false}
"""
SPEC = HEAD + "shots:\n  - {id: a, prompt: a red kite over dunes}\n"
TWO = SPEC + "  - {id: b, prompt: a blue kite over the sea}\n"


def moldbatch(*args, cwd: Path):
    env = {**os.environ, "MOLDBATCH_ALLOW_PATHS": ""}
    return subprocess.run(
        [sys.executable, "-m", "moldbatch", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
    )


def snapshot(folder: Path) -> dict:
    """Every entry under `folder` (links not followed) with what it holds and its mtime."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        held = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None
        out[str(p.relative_to(folder))] = (held, st.st_mtime_ns)
    return out


def age_atimes(folder: Path) -> None:
    """Set every file's access time before its modification time: the next read of it moves
    the access time past it (relatime, Linux's default, updates it then)."""
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            os.utime(p, ns=(st.st_mtime_ns - 10**12, st.st_mtime_ns))


def read_since_aged(folder: Path) -> list[str]:
    """The files under `folder` read since `age_atimes` (links not followed)."""
    return sorted(
        p.name
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink() and p.stat().st_atime_ns >= p.stat().st_mtime_ns
    )


def lines(text: str) -> list[str]:
    """The lines a command printed besides its log of stages (`moldbatch: [i/n] …`) and the
    closing `✓` lines."""
    stage = re.compile(r"^moldbatch: (\[\d+/\d+\] )?\S+ (started|rendered|cached|failed|skipped)")
    return [
        line
        for line in text.splitlines()
        if line.strip() and not stage.match(line) and not line.startswith("✓ ")
    ]


@pytest.fixture
def hostile(tmp_path: Path):
    """(project, outside, own): a checkout (a git work tree) whose spec lives in films/, files
    beside it the spec has no business with, and a folder of the user's own."""
    project, outside, own = tmp_path / "project", tmp_path / "outside", tmp_path / "own"
    (project / ".git").mkdir(parents=True)
    shutil.copytree(ASSETS, project / "assets")
    (project / "films").mkdir()
    outside.mkdir()
    own.mkdir()
    for name in ("start.png", "solo.wav", "style.safetensors"):
        shutil.copy(ASSETS / name, outside / name)
    (outside / "precious.gif").write_bytes(b"the user's own file")
    (project / "films" / "linked").symlink_to(outside)  # a link committed in the checkout
    return project, outside, own


@pytest.mark.slow
def test_a_hostile_checkout_reads_and_writes_nothing_outside_the_project(hostile):
    project, outside, own = hostile
    films = project / "films"
    before = snapshot(outside)
    control = own / "control"  # does this filesystem record reads at all?
    control.write_bytes(b"x")
    age_atimes(own)
    control.read_bytes()
    records_reads = read_since_aged(own) == ["control"]
    age_atimes(outside)
    write(
        films,
        "attack.yaml",
        HEAD
        + f"""\
output: ../../outside/film.gif
shots:
  - {{id: a, prompt: hi, image: {outside}/start.png}}
  - {{id: b, prompt: hi, audio_file: ../../outside/solo.wav, format: mp4, audio: true}}
  - {{id: c, prompt: hi, loras: [{{path: linked/style.safetensors}}]}}
  - {{id: d, prompt: hi, keyframes: [{{frame: 0, image: linked/start.png}},
                                    {{frame: 8, image: ../assets/end.png}}]}}
""",
    )
    res = moldbatch("render", "attack.yaml", cwd=films)
    assert res.returncode == 1
    found = lines(res.stderr)
    assert len(found) == 5 and all("is outside the spec's project" in x for x in found), found
    write(films, "abs.yaml", SPEC + "output: /etc/moldbatch-x.gif\n")
    res = moldbatch("render", "abs.yaml", cwd=films)
    assert res.returncode == 1 and "output: '/etc/moldbatch-x.gif' is outside" in res.stderr
    assert not Path("/etc/moldbatch-x.gif").exists()
    assert not (films / "renders").exists() and not (films / ".moldbatch").exists()

    # symlinked outputs inside the project: replaced, never written through
    (films / "renders").mkdir()
    (films / "renders" / "a.gif").symlink_to(outside / "precious.gif")
    (films / "film.gif").symlink_to(outside / "precious.gif")
    write(films, "film.yaml", SPEC + "output: film.gif\n")
    res = moldbatch("render", "film.yaml", cwd=films)  # the spec names film.gif: followed
    assert res.returncode == 1 and "output: 'film.gif' is outside" in res.stderr
    write(films, "film.yaml", SPEC)
    res = moldbatch("render", "film.yaml", cwd=films)  # renders/a.gif it does not name
    assert res.returncode == 0, res.stderr
    shot = films / "renders" / "a.gif"
    assert shot.is_file() and not shot.is_symlink() and shot.read_bytes()[:6] == b"GIF89a"
    kept = films / "renders" / "a.orig.gif"
    assert kept.is_symlink() and os.readlink(kept) == str(outside / "precious.gif")

    # a symlinked out folder is refused; --out and --workdir are the user's own
    shutil.rmtree(films / "renders")
    (films / "renders").symlink_to(outside)
    res = moldbatch("render", "film.yaml", cwd=films)
    assert res.returncode == 1 and "renders/ is outside the spec's project" in res.stderr
    res = moldbatch(
        "render", "film.yaml", "--out", own / "r", "--workdir", own / "w", "--json", cwd=films
    )
    assert res.returncode == 0, res.stderr
    assert (own / "r" / "a.gif").is_file() and (own / "w" / "state.sqlite").is_file()
    if records_reads:  # nothing outside was read (a noatime mount cannot tell)
        assert read_since_aged(outside) == []
    assert snapshot(outside) == before  # reads them: age them again
    age_atimes(outside)

    # --allow-path lets a named folder in
    write(
        films,
        "allowed.yaml",
        HEAD + f"shots:\n  - {{id: e, prompt: hi, image: {outside}/start.png}}\n",
    )
    assert moldbatch("render", "allowed.yaml", cwd=films).returncode == 1
    res = moldbatch(
        "render", "allowed.yaml", "--allow-path", outside, "--out", own / "r", cwd=films
    )
    assert res.returncode == 0, res.stderr
    if records_reads:
        assert read_since_aged(outside) == ["start.png"]
    assert snapshot(outside) == before


@pytest.mark.slow
def test_stale_temporaries_go_and_two_specs_keep_their_own_report(tmp_path: Path):
    write(tmp_path, "one.yaml", SPEC)
    write(tmp_path, "two.yaml", SPEC.replace("id: a,", "id: z,"))
    assert moldbatch("render", "one.yaml", cwd=tmp_path).returncode == 0
    renders = tmp_path / "renders"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = renders / f".a.gif.tmp-{dead.pid}"  # a render killed -9 mid-delivery
    live = renders / f".a.gif.tmp-{os.getpid()}"  # a process still writing it
    someone = renders / f".notes.txt.tmp-{dead.pid}"  # not a name this spec writes
    for path in (stale, live, someone):
        path.write_bytes(b"half")
    res = moldbatch("render", "one.yaml", "--json", cwd=tmp_path)  # all cached: no copy
    assert json.loads(res.stdout)["counts"]["rendered"] == 0
    assert not stale.exists() and live.exists() and someone.exists()
    assert moldbatch("render", "two.yaml", cwd=tmp_path).returncode == 0
    assert (renders / "one.report.html").is_file() and (renders / "two.report.html").is_file()
    assert "z.gif" in (renders / "two.report.html").read_text()
    assert "z.gif" not in (renders / "one.report.html").read_text()


def damage(db: Path, how: str) -> None:
    data = db.read_bytes()
    if how == "random":
        db.write_bytes(os.urandom(len(data)))
    elif how == "truncated":
        db.write_bytes(data[: len(data) // 3])
    else:  # the header smashed
        db.write_bytes(b"\xff" * 100 + data[100:])


@pytest.mark.slow
@pytest.mark.parametrize("how", ["random", "truncated", "header"])
def test_a_damaged_state_database_is_moved_aside_and_the_render_resumes(tmp_path, how):
    write(tmp_path, "film.yaml", SPEC)
    write(tmp_path, "other.yaml", SPEC.replace("id: a,", "id: o,"))
    assert moldbatch("render", "film.yaml", cwd=tmp_path).returncode == 0
    assert moldbatch("render", "other.yaml", cwd=tmp_path).returncode == 0
    db = tmp_path / ".moldbatch" / "state.sqlite"
    damage(db, how)
    gc = moldbatch("gc", "film.yaml", cwd=tmp_path)  # whose artifacts? it cannot tell
    assert gc.returncode == 3 and len(lines(gc.stderr)) == 1 and "removes nothing" in gc.stderr

    status = moldbatch("status", "film.yaml", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    (warning,) = lines(status.stderr)
    assert warning.startswith("moldbatch: warning: the state database") and "damaged" in warning
    assert re.search(r"\b(\d+) of \1 stages cached", status.stdout), status.stdout

    res = moldbatch("render", "film.yaml", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    (warning,) = lines(res.stderr)
    assert "was damaged" in warning and "moved it aside as state.sqlite.corrupt-" in warning
    summary = json.loads(res.stdout)
    assert (
        summary["ok"] and summary["counts"]["rendered"] == 0 and shot_counts(summary)["cached"] == 3
    )
    assert list((tmp_path / ".moldbatch").glob("state.sqlite.corrupt-*"))
    after = json.loads(moldbatch("status", "--json", "film.yaml", cwd=tmp_path).stdout)
    assert after["last_run"]["status"] == "done" and "warning" not in after
    # the new database knows only film.yaml; other.yaml beside it keeps its artifacts
    gc = moldbatch("gc", "film.yaml", cwd=tmp_path)
    assert gc.returncode == 0 and "removed 0 artifacts" in gc.stdout, gc.stderr
    again = json.loads(moldbatch("render", "other.yaml", "--json", cwd=tmp_path).stdout)
    assert again["counts"]["rendered"] == 0


@contextlib.contextmanager
def tmpfs(where: Path, size: str):
    """A small tmpfs at `where` (root only); skip the test where the machine allows none."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", f"mb-{uuid.uuid4().hex[:6]}", where],
            capture_output=True,
            text=True,
        )
    except OSError as e:
        pytest.skip(f"no mount here ({e}): a full disk needs a small tmpfs")
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}): needs root in a VM")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", where], capture_output=True)


def fill(folder: Path) -> Path:
    """Fill the filesystem of `folder` to the last byte; the filler's path."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0")
                f.flush()
    return filler


@pytest.mark.slow
def test_a_full_disk_is_one_line_exit_3_and_the_next_render_resumes(tmp_path: Path):
    with tmpfs(tmp_path / "disk", "16m") as disk:
        work, out = disk / "work", disk / "out"
        write(tmp_path, "film.yaml", SPEC)
        args = ("--workdir", work, "--out", out)
        assert moldbatch("render", "film.yaml", *args, cwd=tmp_path).returncode == 0
        write(tmp_path, "film.yaml", TWO)
        filler = fill(disk)
        res = moldbatch("render", "film.yaml", *args, "--json", cwd=tmp_path)
        assert res.returncode == 3, res.stderr
        (line,) = lines(res.stderr)
        assert line.startswith("moldbatch: cannot write the work folder"), line
        assert "No space left on device" in line or "disk is full" in line
        assert "Traceback" not in res.stderr

        filler.unlink()
        res = moldbatch("render", "film.yaml", *args, "--json", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        summary = json.loads(res.stdout)
        assert (
            shot_counts(summary)["cached"] == 3 and shot_counts(summary)["rendered"] == 3
        )  # shot a was kept


@pytest.mark.slow
def test_a_full_out_folder_never_says_saved_for_what_it_did_not_write(tmp_path: Path):
    write(tmp_path, "film.yaml", SPEC)
    with tmpfs(tmp_path / "disk", "1m") as disk:
        filler = fill(disk)
        res = moldbatch("render", "film.yaml", "--out", disk / "out", cwd=tmp_path)
        assert res.returncode == 3
        assert "Saved" not in res.stderr and "No space left on device" in res.stderr
        assert "Traceback" not in res.stderr
        filler.unlink()
        res = moldbatch("render", "film.yaml", "--out", disk / "out", cwd=tmp_path)
        assert res.returncode == 0 and "Saved" in res.stderr
        assert re.search(r"0 stages rendered, \d+ cached", res.stderr), res.stderr


@pytest.mark.slow
def test_status_reads_a_read_only_work_folder(tmp_path: Path):
    write(tmp_path, "film.yaml", SPEC)
    with tmpfs(tmp_path / "disk", "16m") as disk:
        work = disk / "work"
        assert moldbatch("render", "film.yaml", "--workdir", work, cwd=tmp_path).returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", disk], check=True)
        res = moldbatch("status", "film.yaml", "--workdir", work, "--json", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["last_run"]["status"] == "done"
        res = moldbatch("render", "film.yaml", "--workdir", work, cwd=tmp_path)
        assert res.returncode == 3 and len(lines(res.stderr)) == 1, res.stderr


@pytest.mark.slow
def test_deleting_the_work_folder_mid_render_is_one_line(tmp_path: Path, monkeypatch):
    spec = write(tmp_path, "film.yaml", SPEC)
    real = handlers_module.HANDLERS["clip"]

    def clip_then_gone(stage, ctx, out):
        shutil.rmtree(tmp_path / ".moldbatch")
        return real(stage, ctx, out)

    monkeypatch.setitem(handlers_module.HANDLERS, "clip", clip_then_gone)
    with pytest.raises(MoldbatchError) as e:
        render_plan(plan_file(spec), progress=False, runtimes={})
    assert len(str(e.value).splitlines()) == 1
    assert "deleted during the render" in str(e.value) and e.value.exit_code == 3
