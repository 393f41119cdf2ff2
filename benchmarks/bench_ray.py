"""The Ray executor: the same tiny film with 1 and 2 workers, and its overhead per stage.

    python benchmarks/bench_ray.py [--cpus N]

Starts a local Ray instance with N CPUs (default: this machine's), renders a 4-shot film on
`ltx-2-tiny:random` (CPU workers) into fresh work folders with the local executor, then with 1
and 2 Ray workers, and prints for each: the wall time of the render (worker start-up, which
imports torch and loads the model, included), the wall time after the workers' first stages
(start-up excluded), and the scheduling overhead per worker stage: the time from dispatch on
the driver to the artifact committed in its store, less the time the worker spent in the stage
handler (the Ray calls, moving the bytes through the object store, the commit, and the wait for
a driver busy with stitching and encoding).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from moldbatch.execute.executor import render_plan
from moldbatch.plan.planner import plan_file

FILM = """\
version: 1
name: bench
defaults: {model: ltx-2-tiny:random, width: 128, height: 96, fps: 24, steps: 8}
output: renders/film.mp4
shots:
  - id: walk
    frames: 89
    clip_frames: 25
    motion_tail: 9
    prompts: [a forest path, a lake shore, fireflies over water, a campfire, dawn]
  - id: rain
    frames: 73
    clip_frames: 25
    transition: cut
    prompt: rain on a neon window
  - {id: harbour, prompt: a harbour at dawn, frames: 49, clip_frames: 25}
  - {id: top, prompt: a spinning top, frames: 25, format: webp}
"""


def render(folder: Path, executor: str, workers: int | None) -> tuple[float, list[dict]]:
    spec = folder / "film.yaml"
    spec.write_text(FILM)
    plan = plan_file(spec)
    assert plan.valid, [str(d) for d in plan.diagnostics]
    timings: list[dict] = []
    options = {"workers": workers, "timings": timings} if executor == "ray" else None
    t = time.perf_counter()
    summary = render_plan(plan, progress=False, executor=executor, ray_options=options, runtimes={})
    wall = time.perf_counter() - t
    assert summary.ok and all(s.status == "rendered" for s in summary.stages)
    return wall, timings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    args = ap.parse_args()
    import ray

    t = time.perf_counter()
    ray.init(
        num_cpus=args.cpus,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=200 * 1024 * 1024,
        logging_level=logging.WARNING,
    )
    print(f"ray.init (local instance, {args.cpus} CPUs): {time.perf_counter() - t:.2f} s")
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "local").mkdir()
        wall, _ = render(root / "local", "local", None)
        spec = plan_file(root / "local" / "film.yaml")
        clips = sum(s.kind == "clip" for s in spec.stages)
        print(
            f"film: {len(spec.shots)} shots, {clips} clips, {len(spec.stages)} stages "
            f"(ltx-2-tiny:random, 128x96, 8 steps)"
        )
        print(f"local executor (this process, model load included): {wall:6.2f} s")
        for workers in (1, 2):
            folder = root / f"ray{workers}"
            folder.mkdir()
            wall, timings = render(folder, "ray", workers)
            firsts = {}
            for t in timings:
                firsts.setdefault(t["worker"], t)
            startup = max(t["wall"] for t in firsts.values())
            rest = [t for t in timings if t not in firsts.values()]
            overhead = [t["wall"] - t["worker_seconds"] for t in rest]
            busy = sum(t["worker_seconds"] for t in rest)
            print(
                f"ray, {workers} worker{'s' if workers > 1 else ' '}: wall {wall:6.2f} s, "
                f"after start-up {wall - startup:6.2f} s (first stages {startup:5.2f} s), "
                f"{busy:5.2f} s inside stages"
            )
            print(
                f"    scheduling overhead per stage: median "
                f"{statistics.median(overhead) * 1000:6.1f} ms, mean "
                f"{statistics.mean(overhead) * 1000:6.1f} ms, max {max(overhead) * 1000:6.1f} ms "
                f"({len(overhead)} stages)"
            )
    ray.shutdown()


if __name__ == "__main__":
    main()
