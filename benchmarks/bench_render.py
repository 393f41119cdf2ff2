"""Executor overhead, no-op re-run and mux/encode throughput on a multi-shot tiny film.

    python benchmarks/bench_render.py

Prints: wall time of a full render against the time spent inside the runtime (model load
and clip rendering), so the difference is the executor's overhead (planning, artifact
writes with fsync and checksums, SQLite, stitching, encoding, delivery); the executor's two
lanes (the GPU lane's busy seconds, the CPU lane's, the wall, and wall / (GPU lane) and
wall / (both lanes), against one thread, MOLDBATCH_LANES=1, in the same process: torch and
x264 on one thread each, so that the two lanes have a core each); the time of a no-op
re-run in-process and through the CLI; and the film's encode through `write_video` against the
`ffmpeg` command line (imageio-ffmpeg's binary) encoding the same frames and audio.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MOLDBATCH_X264_THREADS", "1")  # before the encoder is imported
from moldbatch.execute.executor import LANES_ENV, render_plan
from moldbatch.execute.handlers import load_media
from moldbatch.execute.store import ArtifactStore
from moldbatch.media.encode import write_video
from moldbatch.plan.planner import plan_file

from bench_encode import best_of_alternating, ffmpeg_encode

FILM = """\
version: 1
name: bench
defaults: {model: ltx-2-tiny:random, width: 128, height: 96, fps: 24, steps: 12}
output: renders/film.mp4
shots:
  - {id: one, prompt: rain on a neon window, frames: 49}
  - {id: two, prompt: a harbour at dawn, frames: 97}
  - id: chain
    frames: 240
    clip_frames: 49
    motion_tail: 9
    prompts: [a forest path, a lake, fireflies, a campfire, dawn, the road home]
  - {id: loop, prompt: a spinning top, frames: 33}
"""


class Timed:
    """Wraps a runtime and adds up the seconds spent inside it."""

    def __init__(self, runtime):
        self.runtime, self.seconds = runtime, 0.0

    def render_clip(self, *a, **kw):
        t = time.perf_counter()
        try:
            return self.runtime.render_clip(*a, **kw)
        finally:
            self.seconds += time.perf_counter() - t

    def __getattr__(self, name):
        return getattr(self.runtime, name)


def main() -> None:
    from moldbatch.runtime import Runtime

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        spec = folder / "film.yaml"
        spec.write_text(FILM)
        plan = plan_file(spec)
        assert plan.valid

        import torch

        torch.set_num_threads(1)
        t = time.perf_counter()
        runtime = Timed(Runtime("ltx-2-tiny:random"))
        load = time.perf_counter() - t
        lanes = {}
        for mode in ("1", "2"):  # one thread, then two lanes, each into an empty work folder
            os.environ[LANES_ENV] = mode
            workdir = folder / f"work-{mode}"
            s = render_plan(
                plan, workdir=workdir, progress=False, runtimes={"ltx-2-tiny:random": runtime}
            )
            assert s.ok
            lanes[mode] = s
        os.environ.pop(LANES_ENV)
        for mode, s in lanes.items():
            name = "one thread" if mode == "1" else "two lanes "
            print(
                f"{name}: wall {s.seconds:6.2f} s, GPU lane {s.runtime_seconds:6.2f} s, "
                f"CPU lane {s.cpu_seconds:6.2f} s; wall / GPU lane "
                f"{s.seconds / s.runtime_seconds:4.2f}, wall / both lanes "
                f"{s.seconds / (s.runtime_seconds + s.cpu_seconds):4.2f}"
            )
        join = next(o.seconds for o in lanes["2"].stages if o.id == "film/join")
        print(f"the film's join (its shots' video copied, the sound encoded): {join:.2f} s")
        runtime.seconds = 0.0
        summary = render_plan(plan, progress=False, runtimes={"ltx-2-tiny:random": runtime})
        wall = summary.seconds
        clips = sum(1 for s in plan.stages if s.kind == "clip")
        frames = sum(s.frames for s in plan.shots)
        print(
            f"film: {len(plan.shots)} shots, {clips} clips, {len(plan.stages)} stages, "
            f"{frames} frames at 128x96"
        )
        print(f"runtime load:                 {load:7.3f} s")
        print(f"render wall (executor):       {wall:7.3f} s")
        print(
            f"  inside runtime.render_clip: {runtime.seconds:7.3f} s "
            f"({runtime.seconds / wall:.0%} of wall)"
        )
        print(
            f"  executor overhead:          {wall - runtime.seconds:7.3f} s "
            f"({(wall - runtime.seconds) / wall:.0%}; stitch, encode, store, state)"
        )

        t = time.perf_counter()
        again = render_plan(plan_file(spec), progress=False, runtimes={})
        noop = time.perf_counter() - t
        assert again.ok and all(s.status == "cached" for s in again.stages)
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "moldbatch", "render", str(spec), "--json"],
            check=True,
            capture_output=True,
        )
        noop_cli = time.perf_counter() - t
        print(f"no-op re-run (in process):    {noop:7.3f} s  ({noop / wall:.1%} of the render)")
        print(f"no-op re-run (CLI process):   {noop_cli:7.3f} s")

        store = ArtifactStore(folder / ".moldbatch")
        video, audio, rate = load_media(store.get(plan.stage("chain/stitch").key))
        out = folder / "enc"
        out.mkdir()
        exe = imageio_ffmpeg.get_ffmpeg_exe()
        ours, theirs = best_of_alternating(
            3,
            lambda: write_video(out / "a.mp4", video, 24, audio=audio, sample_rate=rate),
            lambda: ffmpeg_encode(exe, out / "b.mp4", video, audio, 24, rate, 18, "medium"),
        )
        n = video.shape[0]
        print(
            f"encode {n} frames + audio:     write_video {n / ours:7.1f} frames/s, "
            f"ffmpeg CLI {n / theirs:7.1f} frames/s, ratio {theirs / ours:.2f}x"
        )


if __name__ == "__main__":
    main()
