"""examples/ci/films.yml as written: its review and render jobs' steps, parsed from the YAML
and run with bash as GitHub Actions runs them, in a simulated films repository on the tiny
model. The `uses:` steps are simulated (checkout: the repository is there; cache: a folder per
key; upload-artifact: the paths must exist); the pip installs are skipped (moldbatch is this
checkout); everything else runs word for word."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ASSETS, REPO, undecodable_png

pytestmark = pytest.mark.slow  # renders through subprocesses

WORKFLOW = REPO / "examples" / "ci" / "films.yml"

OPENING = """\
version: 1
defaults: {model: ltx-2-tiny:random, width: 64, height: 64, steps: 2}
output: film.mp4
shots:
  - {id: dawn, prompt: cliffs at dawn, frames: 9, image: assets/start.png}
  - {id: noon, prompt: the sea at noon, frames: 9}
"""
FINALE = """\
version: 1
defaults: {model: ltx-2-tiny:random, width: 64, height: 64, steps: 2}
shots:
  - {id: dusk, prompt: a harbour at dusk, frames: 9}
"""


def git(repo: Path, *args: str) -> str:
    res = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    )
    return res.stdout.strip()


class Runner:
    """One simulated GitHub Actions runner for a job of the workflow."""

    def __init__(self, repo: Path, tmp: Path, caches: dict[str, Path], context: dict):
        self.repo, self.tmp, self.caches, self.context = repo, tmp, caches, context
        self.workflow = yaml.safe_load(WORKFLOW.read_text())
        bin_dir = tmp / "bin"
        bin_dir.mkdir(exist_ok=True)
        shim = bin_dir / "moldbatch"
        shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m moldbatch "$@"\n')
        shim.chmod(0o755)
        self.path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
        self.outputs: dict[str, dict[str, str]] = {}
        self.uploaded: dict[str, list[Path]] = {}
        self.saved: list[str] = []

    def expr(self, text: str) -> str:
        def value(m):
            name = m.group(1).strip()
            if name.startswith("steps."):
                _, step, _, key = name.split(".", 3)
                return self.outputs.get(step, {}).get(key, "")
            if name.startswith("secrets."):
                return ""
            return str(self.context[name])

        return re.sub(r"\$\{\{(.*?)\}\}", value, str(text))

    def run_job(self, job: str) -> dict[str, int]:
        """Each step's exit status (skipped steps absent), as the runner's `if:` rules say."""
        spec = self.workflow["jobs"][job]
        env = {**os.environ, "PATH": self.path, "CI": "true", "GITHUB_ACTIONS": "true"}
        env.update({k: self.expr(v) for k, v in self.workflow.get("env", {}).items()})
        env["GITHUB_STEP_SUMMARY"] = str(self.tmp / f"{job}-summary.md")
        results: dict[str, int] = {}
        failed = False
        for i, step in enumerate(spec["steps"]):
            name = step.get("name") or step.get("uses") or f"step {i}"
            cond = step.get("if", "success()")
            if failed and "always()" not in cond:
                continue
            if "run" in step and step["run"].lstrip().startswith("pip install"):
                continue  # the installs: moldbatch is this checkout
            if "run" in step:
                script = self.tmp / f"{job}-{i}.sh"
                script.write_text(self.expr(step["run"]))
                step_env = {**env, **{k: self.expr(v) for k, v in step.get("env", {}).items()}}
                res = subprocess.run(
                    ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                    cwd=self.repo,
                    env=step_env,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                (self.tmp / f"{job}-{i}.log").write_text(res.stdout + res.stderr)
                rc = res.returncode
            else:
                rc = self.uses(step)
            results[name] = rc
            failed = failed or rc != 0
        return results

    def uses(self, step: dict) -> int:
        action, args = step["uses"].split("@")[0], step.get("with", {})
        if action in ("actions/checkout", "actions/setup-python"):
            return 0
        if action == "actions/cache/restore":
            key = self.expr(args["key"])
            self.outputs[step["id"]] = {"cache-primary-key": key}
            prefixes = [self.expr(args.get("restore-keys", ""))]
            hit = self.caches.get(key) or next(
                (self.caches[k] for k in reversed(list(self.caches)) if k.startswith(prefixes[0])),
                None,
            )
            if hit is not None:
                shutil.copytree(hit, self.repo / args["path"], dirs_exist_ok=True)
            return 0
        if action == "actions/cache/save":
            key = self.expr(args["key"])
            assert key and key not in self.caches, f"cache key {key!r} empty or reused"
            src = self.repo / args["path"]
            if src.is_dir():
                self.caches[key] = self.tmp / f"cache-{len(self.caches)}"
                shutil.copytree(src, self.caches[key])
                self.saved.append(key)
            return 0
        if action == "actions/upload-artifact":
            paths = [p for p in str(args["path"]).split("\n") if p.strip()]
            found = [f for p in paths for f in self.repo.glob(p.strip().rstrip("/"))]
            files = [
                f for d in found for f in ([d] if d.is_file() else d.rglob("*")) if f.is_file()
            ]
            if not files and args.get("if-no-files-found") != "ignore":
                return 1
            self.uploaded[args["name"]] = files
            return 0
        raise AssertionError(f"the test does not simulate {action}")


def films_repo(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "films-repo"
    (repo / "films").mkdir(parents=True)
    shutil.copytree(ASSETS, repo / "films" / "assets")
    (repo / "films" / "opening.yaml").write_text(OPENING)
    (repo / "films" / "finale.yaml").write_text(FINALE)
    (repo / ".gitignore").write_text(".moldbatch-work/\nrenders/\nstoryboards/\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the films")
    return repo, git(repo, "rev-parse", "HEAD")


def rendered(doc: dict) -> int:
    """The shots' stages a render document says rendered (its text phase aside)."""
    return sum(s["status"] == "rendered" and s["kind"] != "encode" for s in doc["stages"])


def test_the_workflows_review_job_passes_and_sees_asset_changes(tmp_path: Path):
    repo, base = films_repo(tmp_path)
    # the pull request: a new start frame only, and a new film
    start = repo / "films" / "assets" / "start.png"
    start.write_bytes((repo / "films" / "assets" / "end.png").read_bytes())
    (repo / "films" / "extra.yaml").write_text(FINALE.replace("dusk", "night"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a new start frame, a new film")
    runner = Runner(repo, tmp_path, {}, {"github.event.pull_request.base.sha": base})

    results = runner.run_job("review")
    logs = "".join(p.read_text() for p in sorted(tmp_path.glob("review-*.log")))
    assert results and set(results.values()) == {0}, (results, logs)
    summary = (tmp_path / "review-summary.md").read_text()
    assert "| dawn | `dawn/clip-0` | re-render | image |" in summary, summary
    assert "noon" not in summary  # it does not use the image
    added = re.search(r"0 to re-render, (\d+) to add", summary)  # the new film: all added
    assert "extra.yaml" in summary and added and int(added[1]) >= 3, summary
    names = sorted(f.name for f in runner.uploaded["storyboards"])
    assert names == ["extra.html", "finale.html", "opening.html"]


def test_the_workflows_review_job_passes_in_a_repository_without_specs(tmp_path: Path):
    repo = tmp_path / "empty"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("films to come\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "nothing yet")
    base = git(repo, "rev-parse", "HEAD")
    results = Runner(repo, tmp_path, {}, {"github.event.pull_request.base.sha": base}).run_job(
        "review"
    )
    assert results and set(results.values()) == {0}, results
    assert "Usage:" not in "".join(p.read_text() for p in tmp_path.glob("review-*.log"))


def result(repo: Path, name: str) -> dict:
    return json.loads((repo / "renders" / f"{name}.json").read_text())


def test_the_workflows_render_job_renders_uploads_and_keeps_its_work(tmp_path: Path):
    repo, _ = films_repo(tmp_path)
    caches: dict[str, Path] = {}

    def push(n: int) -> Runner:
        for folder in ("renders", ".moldbatch-work"):  # a fresh runner: only the cache is kept
            shutil.rmtree(repo / folder, ignore_errors=True)
        runner = Runner(repo, tmp_path, caches, {"github.run_id": n, "github.run_attempt": 1})
        runner.results = runner.run_job("render")
        return runner

    first = push(1)
    assert set(first.results.values()) == {0}, first.results
    uploaded = {str(f.relative_to(repo)) for f in first.uploaded["renders"]}
    for path in (
        "renders/opening/dawn.mp4",
        "renders/opening/noon.mp4",
        "renders/opening/film.mp4",  # the joined film, moved by --out with its shots
        "renders/opening/opening.report.html",  # <spec>.report.html
        "renders/finale/dusk.mp4",
        "renders/opening.json",
    ):
        assert path in uploaded, sorted(uploaded)
    assert result(repo, "opening")["ok"] and rendered(result(repo, "opening")) == 7
    assert first.saved == ["moldbatch-work-1-1"]
    # gc --lean: the raw frames of finished shots are not cached, their files are
    kept = [
        m
        for m in (repo / ".moldbatch-work").rglob("manifest.json")
        if not json.loads(m.read_text())["stage"].startswith("encode/")  # stored prompts stay
    ]
    assert len(kept) == 4, kept  # the three exports and the join

    second = push(2)  # the next push: restored from the cache, nothing renders
    assert set(second.results.values()) == {0}, second.results
    assert result(repo, "opening")["counts"]["rendered"] == 0
    assert result(repo, "finale")["counts"]["rendered"] == 0
    assert (repo / "renders" / "opening" / "film.mp4").is_file()

    # a film whose stage fails does not stop the others; what is done is saved and uploaded
    undecodable_png(repo / "films" / "assets" / "bad.png")
    (repo / "films" / "broken.yaml").write_text(
        FINALE.replace("dusk, prompt", "storm, image: assets/bad.png, prompt")
    )
    (repo / "films" / "finale.yaml").write_text(FINALE.replace("a harbour", "a lighthouse"))
    third = push(3)
    render_step = next(k for k in third.results if k.startswith("Render"))
    assert third.results[render_step] == 3, third.results
    assert result(repo, "broken")["reason"] == "stage-failed"
    assert result(repo, "finale")["ok"] and rendered(result(repo, "finale")) == 3
    assert third.saved == ["moldbatch-work-3-1"]  # saved although the job failed
    uploaded = {str(f.relative_to(repo)) for f in third.uploaded["renders"]}
    assert "renders/finale/dusk.mp4" in uploaded and "renders/broken.json" in uploaded
    assert any(p.endswith("logs/failures.log") for p in uploaded), sorted(uploaded)


def test_ci_sh_review_exits_as_its_header_promises(tmp_path: Path):
    repo, base = films_repo(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "moldbatch").write_text(f'#!/bin/sh\nexec {sys.executable} -m moldbatch "$@"\n')
    (bin_dir / "moldbatch").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    ci = [str(REPO / "examples" / "ci" / "ci.sh"), "review", base]

    def review() -> int:
        return subprocess.run(ci, cwd=repo, env=env, capture_output=True).returncode

    assert review() == 0  # nothing re-renders
    (repo / "films" / "finale.yaml").write_text(FINALE.replace("dusk", "midnight"))
    assert review() == 1  # something does
    (repo / "films" / "finale.yaml").write_text(FINALE.replace("frames: 9", "frames: 10"))
    assert review() == 2  # an invalid spec
    (repo / "films" / "finale.yaml").write_text(
        FINALE.replace("frames: 9", "frames: 9, image: x.png")
    )
    assert review() == 2  # a missing file
