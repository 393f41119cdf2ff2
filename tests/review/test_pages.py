"""The storyboard and the render report, opened in headless Chromium.

Each page measures what it drew (clip blocks in frames, thumbnails at their frames) or loaded
(videos, images) and writes it into the page; the tests read that back from the DOM. A
screenshot of each goes to tests/artifacts/.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from moldbatch.plan.planner import plan_file

from chromium import start_chromium
from conftest import ASSETS, REPO, write

pytestmark = pytest.mark.slow  # renders through subprocesses, Ray, Chromium or training

FILM = """\
version: 1
name: review
defaults: {model: ltx-2-tiny:random, width: 128, height: 128, fps: 24, steps: 2}
output: renders/film.mp4
shots:
  - id: open
    prompt: waves on a black beach
    frames: 17
    image: assets/start.png
    spatial_upscale: x2
  - id: walk
    frames: 40
    clip_frames: 17
    motion_tail: 1
    prompts: [a forest path, a lake shore, fireflies over water]
    keyframes: [{frame: 30, image: assets/end.png}]
  - {id: loop, prompt: a spinning top, frames: 9, format: gif}
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    return start_chromium(tmp_path_factory)


def moldbatch(*args, cwd: Path):
    res = subprocess.run(
        [sys.executable, "-m", "moldbatch", *args], cwd=cwd, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    return res


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """The film above, rendered once through the CLI (which writes the report)."""
    folder = tmp_path_factory.mktemp("film")
    shutil.copytree(ASSETS, folder / "assets")
    write(folder, "film.yaml", FILM)
    moldbatch("render", "film.yaml", cwd=folder)
    return folder


def clip_span(shot, clip) -> tuple[int, int]:
    factor = 2 if shot.temporal_upscale else 1
    return clip.start, clip.start + (clip.frames - 1) * factor + 1


def check_storyboard(plan, doc: dict) -> None:
    """Every shot has a track, every clip and upscale is drawn at its frame range, and every
    first-frame image and keyframe sits at its frame with its picture."""
    assert {s["shot"] for s in doc["shots"]} == {s.id for s in plan.shots}
    assert all(s["width"] > 500 for s in doc["shots"])
    drawn = {(m["kind"], m["stage"]): m for m in doc["clips"] if m["kind"] in ("clip", "up")}
    thumbs = [m for m in doc["clips"] if m["kind"] == "thumb"]
    px = doc["axis"] / doc["shots"][0]["width"]  # frames per pixel
    tol = max(0.5, 1.5 * px)
    expected_thumbs = []
    for shot in plan.shots:
        factor = 2 if shot.temporal_upscale else 1
        for c in shot.clips:
            start, end = clip_span(shot, c)
            ids = {st.id for st in plan.stages}
            # the upscale bar is the clip's last upscale: the shot's own, else its second stage
            up = next(
                (
                    u
                    for u in (f"{shot.id}/upscale-{c.index}", f"{shot.id}/refine-{c.index}")
                    if u in ids
                ),
                None,
            )
            for kind, sid in (("clip", f"{shot.id}/clip-{c.index}"), ("up", up)):
                if sid is None:
                    continue
                m = drawn.pop((kind, sid))
                assert m["visible"] and m["shot"] == shot.id, sid
                assert m["start"] == pytest.approx(start, abs=tol), sid
                assert m["end"] == pytest.approx(end, abs=tol), sid
            if c.image:
                expected_thumbs.append((shot.id, c.start))
            expected_thumbs += [(shot.id, c.start + k["frame"] * factor) for k in c.keyframes]
    assert not drawn, f"drawn but not planned: {list(drawn)}"
    assert sorted((t["shot"], t["frame"]) for t in thumbs) == sorted(expected_thumbs)
    for t in thumbs:
        assert t["visible"] and t["image"], t
        assert t["at"] == pytest.approx(t["frame"], abs=tol), t


def test_storyboard_of_a_real_film(browser, tmp_path):
    spec = REPO / "examples" / "volcano.yaml"
    out = tmp_path / "storyboard.html"
    moldbatch("plan", str(spec), "--html", str(out), "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    text = out.read_text()
    assert "http://" not in text and "https://" not in text  # nothing fetched
    doc, dom = browser.measured(out.as_uri())
    plan = plan_file(spec)
    check_storyboard(plan, doc)
    assert 'data-ready="1"' in dom
    assert "retake 1.5–3.5 s" in dom
    assert dom.count('class="seam"') == sum(len(s.clips) - 1 for s in plan.shots)
    assert len(re.findall(r'class="clip lane\d render"', dom)) == sum(
        len(s.clips) for s in plan.shots
    )
    browser.screenshot(out.as_uri(), "storyboard-volcano.png", size=(1400, 1000))


def test_storyboard_after_a_render_shows_cached_stages_and_clip_details(browser, rendered):
    out = rendered / "storyboard.html"
    moldbatch("plan", "film.yaml", "--html", "storyboard.html", cwd=rendered)
    plan = plan_file(rendered / "film.yaml")
    url = out.as_uri() + "#stage=walk/clip-1"
    doc, dom = browser.measured(url)
    check_storyboard(plan, doc)
    assert "render" not in re.findall(r'class="clip lane\d (\w+)', dom)
    assert len(re.findall(r'class="clip lane\d cached', dom)) == 5
    details = dom.split('id="details"', 1)[1].split("</div>\n", 1)[0]
    clip = plan.stage("walk/clip-1")
    assert "a lake shore" in details and f"seed {clip.params.conditions.seed}" in details
    assert clip.key in details and "17 frames rendered" in details
    browser.screenshot(url, "storyboard-rendered.png", size=(1400, 700))


def test_report_plays_every_shot_and_has_contact_sheets(browser, rendered):
    renders = rendered / "renders"
    report = renders / "film.report.html"
    assert report.is_file()
    plan = plan_file(rendered / "film.yaml")
    doc, dom = browser.measured(report.as_uri(), budget_ms=5000)
    media = {(m["tag"], m["src"]): m for m in doc["media"]}
    assert all(m["state"] == "loaded" for m in media.values()), doc
    for shot in plan.shots:
        name = Path(shot.output_path).name
        if shot.format == "mp4":
            v = media[("video", name)]
            assert v["duration"] == pytest.approx(shot.frames / shot.fps, abs=0.05)
            assert (v["width"], v["height"]) == (shot.width, shot.height)
        else:
            assert media[("img", name)]["width"] == shot.width
        sheet = renders / f"{shot.id}.contact.png"
        assert ("img", sheet.name) in media
        with Image.open(sheet) as im:
            assert im.width > 300 and im.height > 100 * len(shot.clips)
        assert f"- id: {shot.id}" in dom or f"{{id: {shot.id}," in dom  # the spec excerpt
    assert media[("video", "film.mp4")]["duration"] == pytest.approx(66 / 24, abs=0.05)
    stages = re.findall(r'<td class="(rendered|cached-t)">', dom)
    assert len(stages) == len(plan.stages) - 1  # film/join is shown with the film
    assert "text phase" in dom  # the prompt encodes, in a table of their own
    browser.screenshot(report.as_uri(), "report.png", size=(1400, 2200), budget_ms=5000)

    # a second render renders nothing and rewrites the report with every stage cached
    moldbatch("render", "film.yaml", cwd=rendered)
    dom = report.read_text()
    assert 'class="rendered"' not in dom and dom.count('class="cached-t"') == len(stages)
