"""`moldbatch render` end to end on the real tiny LTX-2 pipeline, PyAV and SQLite.

No part of the runtime is mocked: clips come from diffusers' LTX-2 pipeline with tiny random
components, media from PyAV, state from a real SQLite file.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from moldbatch.errors import OutputTaken, StageFailed, WorkdirLocked
from moldbatch.execute.executor import render_plan
from moldbatch.execute.lock import WorkdirLock
from moldbatch.media.probe import probe, read_video
from moldbatch.plan.planner import plan_file

from conftest import TINY_HEAD as HEAD
from conftest import undecodable_png, write

CHAIN = (
    HEAD
    + """\
shots:
  - id: walk
    frames: 40
    clip_frames: 17
    motion_tail: 1
    prompts: [a forest path, a lake shore, fireflies over water]
"""
)


@pytest.fixture(scope="module")
def runtimes():
    """One runtime per model for the whole module, as one render process would hold."""
    return {}


def render(spec: Path, runtimes, **kw):
    plan = plan_file(spec)
    assert plan.valid, [str(d) for d in plan.diagnostics]
    return render_plan(plan, progress=False, runtimes=runtimes, **kw)


def statuses(summary) -> dict[str, str]:
    return {s.id: s.status for s in summary.stages}


def test_mp4_has_video_and_audio_of_the_planned_length(tmp_path, runtimes):
    spec = write(
        tmp_path,
        "film.yaml",
        HEAD
        + """\
output: renders/film.mp4
shots:
  - {id: one, prompt: rain on a neon window, frames: 17}
  - {id: two, prompt: thunder over the bay, duration: 1.0, seed: 3}
""",
    )
    summary = render(spec, runtimes)
    assert summary.ok
    for name, frames in (("one", 17), ("two", 24), ("film", 41)):
        info = probe(tmp_path / "renders" / f"{name}.mp4")
        assert (info.frames, info.width, info.height, info.fps) == (frames, 64, 64, 24)
        assert info.has_audio and info.audio_codec == "aac"
        assert info.duration == pytest.approx(frames / 24, abs=1e-3)
        # AAC works in frames of 1024 samples: the track may not end on the exact sample
        assert info.audio_duration == pytest.approx(frames / 24, abs=0.05)


def test_an_mp4_film_of_mp4_shots_is_their_video_copied_and_one_of_a_webp_is_encoded(
    tmp_path, runtimes
):
    """The film's join copies the shot files' encoded video (no second encode after the last
    shot): its frames are theirs, bit for bit; a shot of another format makes it encode."""
    from moldbatch.execute.store import ArtifactStore

    film = HEAD + (
        "output: renders/film.mp4\nshots:\n"
        "  - {id: one, prompt: rain on a neon window, frames: 17}\n"
        "  - {id: two, prompt: thunder over the bay, frames: 9, format: FORMAT}\n"
    )
    spec = write(tmp_path, "film.yaml", film.replace("FORMAT", "mp4"))
    assert render(spec, runtimes).ok
    renders = tmp_path / "renders"
    frames = read_video(renders / "film.mp4")[0]
    shots = np.concatenate([read_video(renders / f"{n}.mp4")[0] for n in ("one", "two")])
    assert np.array_equal(frames, shots)
    store = ArtifactStore(tmp_path / ".moldbatch")
    join = plan_file(spec).stage("film/join")
    assert join.needs == ["one/stitch", "two/stitch", "one/export", "two/export"]
    assert store.get(join.key).meta["video"] == "copied"

    spec = write(tmp_path, "film.yaml", film.replace("FORMAT", "webp"))
    assert render(spec, runtimes).ok
    join = plan_file(spec).stage("film/join")
    assert join.needs == ["one/stitch", "two/stitch"]
    assert store.get(join.key).meta["video"] == "encoded"
    assert probe(renders / "film.mp4").frames == 26


@pytest.mark.parametrize("fmt", ["gif", "apng", "webp"])
def test_silent_formats_have_no_audio(tmp_path, runtimes, fmt):
    spec = write(
        tmp_path,
        "film.yaml",
        HEAD
        + f"""\
shots:
  - {{id: loop, prompt: a spinning top, frames: 9, format: {fmt}}}
""",
    )
    assert render(spec, runtimes).ok
    info = probe(tmp_path / "renders" / f"loop.{fmt}")
    assert not info.has_audio
    assert (info.frames, info.width, info.height) == (9, 64, 64)


def test_chained_shot_is_stitched_as_planned(tmp_path, runtimes):
    spec = write(tmp_path, "film.yaml", CHAIN)
    plan = plan_file(spec)
    clips = plan.shots[0].clips
    assert [c.frames for c in clips] == [17, 17, 9]
    summary = render(spec, runtimes)
    assert summary.ok
    frames, audio, rate = read_video(tmp_path / "renders" / "walk.mp4")
    assert frames.shape == (40, 64, 64, 3)
    assert audio is not None and audio.shape[1] == pytest.approx(40 / 24 * rate, abs=1024)
    # the seams: stitched frames 17..32 come from clip 1 after its first (carried) frame,
    # and frame 33 is clip 2's second frame
    from moldbatch.execute.handlers import load_media
    from moldbatch.execute.store import ArtifactStore

    store = ArtifactStore(tmp_path / ".moldbatch")
    stitched = load_media(store.get(plan.stage("walk/stitch").key))[0]
    c1 = load_media(store.get(plan.stage("walk/clip-1").key))[0]
    c2 = load_media(store.get(plan.stage("walk/clip-2").key))[0]
    np.testing.assert_array_equal(stitched[17:33], c1[1:17])
    np.testing.assert_array_equal(stitched[33:40], c2[1:8])


def test_rerunning_a_finished_film_renders_nothing(tmp_path, runtimes):
    spec = write(tmp_path, "film.yaml", CHAIN)
    render(spec, runtimes)
    again = render(spec, runtimes)
    assert set(statuses(again).values()) == {"cached"}
    assert again.seconds < 2


def test_editing_one_clip_prompt_rerenders_only_what_follows(tmp_path, runtimes):
    spec = write(tmp_path, "film.yaml", CHAIN)
    render(spec, runtimes)
    spec.write_text(CHAIN.replace("fireflies over water", "fireflies at midnight"))
    summary = render(spec, runtimes)
    done = statuses(summary)
    texts = {sid: done.pop(sid) for sid in list(done) if sid.startswith("encode/")}
    assert sorted(texts.values()).count("rendered") == 1  # the new prompt alone is encoded
    assert done == {
        "walk/clip-0": "cached",
        "walk/clip-1": "cached",
        "walk/clip-2": "rendered",
        "walk/stitch": "rendered",
        "walk/export": "rendered",
    }


def test_corrupted_artifact_is_detected_and_rerendered(tmp_path, runtimes):
    spec = write(tmp_path, "film.yaml", CHAIN)
    render(spec, runtimes)
    plan = plan_file(spec)
    from moldbatch.execute.store import ArtifactStore

    store = ArtifactStore(tmp_path / ".moldbatch")
    # flip bytes in the stitch's media: same size, wrong checksum
    media = store.dir_of(plan.stage("walk/stitch").key) / "media.safetensors"
    data = bytearray(media.read_bytes())
    data[-10:] = bytes(255 - b for b in data[-10:])
    media.write_bytes(bytes(data))
    # and drop the export so that the stitch is needed again
    export = store.dir_of(plan.stage("walk/export").key) / "shot.mp4"
    export.write_bytes(export.read_bytes()[:100])
    summary = render(spec, runtimes)
    st = statuses(summary)
    assert st["walk/stitch"] == "rendered" and st["walk/export"] == "rendered"
    assert st["walk/clip-0"] == "cached"


def test_second_render_of_a_locked_work_folder_is_refused(tmp_path, runtimes):
    spec = write(tmp_path, "film.yaml", CHAIN)
    with WorkdirLock(tmp_path / ".moldbatch"):
        with pytest.raises(WorkdirLocked, match="in use by another moldbatch process"):
            render(spec, runtimes)
    # and through the CLI: exit 3 with one clear line
    with WorkdirLock(tmp_path / ".moldbatch"):
        res = subprocess.run(
            [sys.executable, "-m", "moldbatch", "render", str(spec)], capture_output=True, text=True
        )
    assert res.returncode == 3
    assert "in use by another moldbatch process" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_failing_stage_stops_the_run_and_writes_no_output(tmp_path, runtimes):
    # a PNG whose chunks are whole (planning checks them) in a colour type no decoder knows:
    # it fails at render
    undecodable_png(tmp_path / "bad.png")
    spec = write(
        tmp_path,
        "film.yaml",
        HEAD
        + """\
output: renders/film.mp4
shots:
  - {id: good, prompt: a calm sea, frames: 9}
  - id: broken
    prompt: a storm
    frames: 9
    image: bad.png
""",
    )
    with pytest.raises(StageFailed, match="broken/clip-0 failed"):
        render(spec, runtimes)
    assert not (tmp_path / "renders" / "broken.mp4").exists()
    assert not (tmp_path / "renders" / "film.mp4").exists()
    # --keep-going renders the other shots; the film, which needs the broken one, is not made
    summary = render(spec, runtimes, keep_going=True)
    assert not summary.ok
    st = statuses(summary)
    assert st["good/export"] in ("rendered", "cached") and st["broken/clip-0"] == "failed"
    assert st["film/join"] == "skipped"
    assert (tmp_path / "renders" / "good.mp4").exists()
    assert not (tmp_path / "renders" / "film.mp4").exists()
    db = sqlite3.connect(tmp_path / ".moldbatch" / "state.sqlite")
    (error,) = db.execute(
        "SELECT error FROM stages WHERE stage='broken/clip-0' ORDER BY run_id DESC LIMIT 1"
    ).fetchone()
    assert error


@pytest.mark.slow
def test_resume_after_kill_9_mid_chain_matches_an_uninterrupted_render(tmp_path):
    spec_text = (
        HEAD.replace("steps: 2", "steps: 6")
        + """\
shots:
  - id: long
    frames: 57
    clip_frames: 17
    motion_tail: 9
    prompt: a long walk along a windy cliff
"""
    )
    clean = tmp_path / "clean"
    killed = tmp_path / "killed"
    for d in (clean, killed):
        d.mkdir()
        write(d, "film.yaml", spec_text)
    cmd = [sys.executable, "-m", "moldbatch", "render", "film.yaml", "--json"]
    # the reference: one uninterrupted render in its own process
    subprocess.run(cmd, cwd=clean, check=True, capture_output=True)

    plan = plan_file(killed / "film.yaml")
    clip_keys = [s.key for s in plan.stages if s.kind == "clip"]
    assert len(clip_keys) == 6
    proc = subprocess.Popen(cmd, cwd=killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    artifacts = killed / ".moldbatch" / "artifacts"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        done = [k for k in clip_keys if (artifacts / k[:2] / k / "manifest.json").exists()]
        if len(done) >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the render finished before it could be killed"
    done_before = {k for k in clip_keys if (artifacts / k[:2] / k / "manifest.json").exists()}
    assert 2 <= len(done_before) < 6
    assert not (killed / "renders" / "long.mp4").exists()

    res = subprocess.run(cmd, cwd=killed, check=True, capture_output=True, text=True)
    import json

    summary = json.loads(res.stdout)
    rendered = {s["id"] for s in summary["stages"] if s["status"] == "rendered"}
    by_key = {s.key: s.id for s in plan.stages}
    encoded = {s.id for s in plan.stages if s.kind == "encode"}  # done before any clip
    assert rendered == {s.id for s in plan.stages} - {by_key[k] for k in done_before} - encoded

    a_frames, a_audio, _ = read_video(clean / "renders" / "long.mp4")
    b_frames, b_audio, _ = read_video(killed / "renders" / "long.mp4")
    np.testing.assert_array_equal(a_frames, b_frames)
    np.testing.assert_array_equal(a_audio, b_audio)
    # the stored decoded frames and samples are identical too, not only the encodes
    assert (clean / "renders" / "long.mp4").read_bytes() == (
        killed / "renders" / "long.mp4"
    ).read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("transition", ["cut", "fade"])
def test_cut_and_fade_chains_are_stitched_as_planned(tmp_path, runtimes, transition):
    spec = write(
        tmp_path,
        "film.yaml",
        CHAIN.replace("motion_tail: 1", f"transition: {transition}\n    fade_frames: 5"),
    )
    plan = plan_file(spec)
    shot = plan.shots[0]
    assert render(spec, runtimes).ok
    from moldbatch.execute.handlers import load_media
    from moldbatch.execute.store import ArtifactStore

    store = ArtifactStore(tmp_path / ".moldbatch")
    stitched, audio, rate = load_media(store.get(plan.stage("walk/stitch").key))
    clips = [
        load_media(store.get(plan.stage(f"walk/clip-{i}").key))[0] for i in range(len(shot.clips))
    ]
    assert stitched.shape[0] == 40 and audio.shape[1] == round(40 / 24 * rate)
    if transition == "cut":
        assert shot.overlap == 0
        np.testing.assert_array_equal(stitched[17:34], clips[1])
    else:
        # clip 1 starts 5 frames before clip 0 ends; those 5 frames are blends of both
        assert shot.overlap == 5 and shot.clips[1].start == 12
        np.testing.assert_array_equal(stitched[:12], clips[0][:12])
        np.testing.assert_array_equal(stitched[17:24], clips[1][5:12])
        blend = stitched[14].astype(int)
        lo = np.minimum(clips[0][14], clips[1][2]).astype(int) - 1
        hi = np.maximum(clips[0][14], clips[1][2]).astype(int) + 1
        assert ((blend >= lo) & (blend <= hi)).all()


@pytest.mark.slow
def test_a_mold_script_renders_with_its_own_seams(tmp_path, runtimes):
    import base64
    import shutil

    from conftest import ASSETS

    shutil.copytree(ASSETS, tmp_path / "assets")
    b64 = base64.b64encode((ASSETS / "end.png").read_bytes()).decode()
    spec = write(
        tmp_path,
        "walk.toml",
        f"""\
schema = "mold.chain.v1"
[chain]
model = "ltx-2-tiny:random"
width = 64
height = 64
fps = 24
seed = 3
steps = 2
motion_tail_frames = 4
output_format = "mp4"
[[stage]]
prompt = "a path"
frames = 17
source_image_path = "assets/start.png"
[[stage]]
prompt = "a lake"
frames = 17
[[stage]]
prompt = "fireflies"
frames = 17
transition = "fade"
fade_frames = 5
source_image_b64 = "{b64}"
[[stage]]
prompt = "the road"
frames = 9
transition = "cut"
""",
    )
    summary = render(spec, runtimes)
    assert summary.ok
    info = probe(tmp_path / "renders" / "walk.mp4")
    assert info.frames == 17 + 17 + 17 + 9 - 4 - 5
    assert not info.has_audio  # mold chains are silent


@pytest.mark.slow
def test_a_file_the_user_put_at_an_output_path_is_kept_aside(tmp_path, runtimes):
    spec = write(tmp_path, "film.yaml", HEAD + "shots:\n  - {id: a, prompt: a kite, frames: 9}\n")
    (tmp_path / "renders").mkdir()
    mine = tmp_path / "renders" / "a.mp4"
    mine.write_bytes(b"my own edit, not a moldbatch render")
    assert render(spec, runtimes).ok
    assert (
        tmp_path / "renders" / "a.orig.mp4"
    ).read_bytes() == b"my own edit, not a moldbatch render"
    assert probe(mine).frames == 9
    # a file moldbatch wrote itself is simply replaced when the shot changes
    spec.write_text(spec.read_text().replace("a kite", "two kites"))
    assert render(spec, runtimes).ok
    assert not (tmp_path / "renders" / "a.orig-2.mp4").exists()
    assert sorted(p.name for p in (tmp_path / "renders").iterdir()) == ["a.mp4", "a.orig.mp4"]


def test_two_specs_in_one_folder_never_overwrite_each_others_shots(tmp_path, runtimes):
    first = write(tmp_path, "film.yaml", HEAD + "shots:\n  - {id: a, prompt: a kite, frames: 9}\n")
    other = write(tmp_path, "other.yaml", HEAD + "shots:\n  - {id: a, prompt: a boat, frames: 9}\n")
    assert render(first, runtimes).ok
    before = (tmp_path / "renders" / "a.mp4").read_bytes()
    with pytest.raises(
        OutputTaken, match=r"renders/a.mp4 \(shot 'a'\) was rendered by \S*film.yaml"
    ):
        render(other, runtimes)
    assert (tmp_path / "renders" / "a.mp4").read_bytes() == before
    # the first spec renders again as before (its own file); with --out the other one works
    assert render(first, runtimes).ok
    summary = render_plan(
        plan_file(other, out_dir=tmp_path / "boat"), progress=False, runtimes=runtimes
    )
    assert summary.ok and probe(tmp_path / "boat" / "a.mp4").frames == 9
    # a spec that is gone (renamed away) has given its outputs up
    first.rename(tmp_path / "film.yaml.old")
    assert render(other, runtimes).ok
    assert (tmp_path / "renders" / "a.mp4").read_bytes() != before


def test_the_film_output_may_not_be_a_shot_file(tmp_path):
    spec = write(
        tmp_path,
        "film.yaml",
        HEAD
        + """\
output: renders/a.mp4
shots:
  - {id: a, prompt: a kite, frames: 9}
""",
    )
    plan = plan_file(spec)
    assert not plan.valid
    assert "the film's output is also shot 'a''s file" in str(plan.errors[0])


@pytest.mark.slow
def test_a_shot_encodes_to_the_same_bytes_every_time(tmp_path, runtimes):
    # resumed and distributed renders compare delivered files byte for byte; with its
    # defaults x264 is not repeatable on the tiny model's small noisy frames
    import hashlib

    from moldbatch.execute.handlers import load_media
    from moldbatch.execute.store import ArtifactStore
    from moldbatch.media.encode import write_video

    spec = write(
        tmp_path,
        "film.yaml",
        HEAD.replace("steps: 2", "steps: 4")
        + """\
shots:
  - {id: rain, prompt: rain on a neon window, frames: 40, clip_frames: 17, transition: cut}
""",
    )
    assert render(spec, runtimes).ok
    plan = plan_file(spec)
    art = ArtifactStore(tmp_path / ".moldbatch").get(plan.stage("rain/stitch").key)
    frames, audio, rate = load_media(art)
    digests = {
        hashlib.sha256(
            write_video(
                tmp_path / f"take{i}.mp4", frames, 24, audio=audio, sample_rate=rate
            ).read_bytes()
        ).hexdigest()
        for i in range(8)
    }
    assert len(digests) == 1
