"""Plan a generated 5,000-shot film and compare with a plain YAML parse of the same file;
then time every view of a plan against `plan --json` at several film lengths.

    python benchmarks/bench_plan.py [--shots 5000] [--views 1000,10000,100000]

Prints the seconds of each and the ratio (planning / parsing). Planning includes reading the
file with positions, validation, chain arithmetic, digesting input files and content keys.
The views (the terminal tables, the JSON document, the storyboard page, a one-shot diff, the
status document and the render report) print their seconds and their ratio to the JSON view,
which should stay within 2x at every length (each scales linearly with the film).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from moldbatch.plan.planner import plan_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encode import best_of_alternating

ASSETS = Path(__file__).resolve().parents[1] / "specs" / "conformance" / "assets"


def film_text(shots: int) -> str:
    lines = [
        "version: 1",
        "name: bench",
        "defaults:",
        "  model: ltx-2-19b-distilled:fp8",
        "  width: 1216",
        "  height: 704",
        "shots:",
    ]
    for i in range(shots):
        lines.append(f"  - id: shot-{i}")
        kind = i % 4
        if kind != 2:
            lines.append(f"    prompt: shot {i}, a drone over cliffs")
        if kind == 0:
            lines.append("    frames: 97")
        elif kind == 1:
            lines += [
                "    frames: 400",
                "    image: assets/start.png",
                "    keyframes: [{frame: 0, image: assets/start.png}, "
                "{frame: 399, image: assets/end.png}]",
            ]
        elif kind == 2:
            lines += ["    duration: 9.5", "    transition: fade", "    prompts: [a, b, c]"]
        else:
            lines += [
                "    frames: 161",
                "    spatial_upscale: x2",
                "    width: 1280",
                "    height: 768",
            ]
    return "\n".join(lines) + "\n"


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shots", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--views", default="1000,10000,100000", help="film lengths for the views")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        shutil.copytree(ASSETS, folder / "assets")
        spec = folder / "film.yaml"
        spec.write_text(film_text(args.shots))
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        plan = plan_file(spec)
        assert plan.valid, plan.diagnostics[:3]
        del plan
        # alternated, best of each: a drift of the machine's speed falls on both alike
        parse, planning = best_of_alternating(
            args.repeat, lambda: yaml.load(spec.read_text(), Loader=loader), lambda: plan_file(spec)
        )
        parse_py = best_of(lambda: yaml.safe_load(spec.read_text()), args.repeat)
        plan = plan_file(spec)
        print(
            f"shots: {args.shots}, stages: {len(plan.stages)}, "
            f"spec: {spec.stat().st_size / 1e6:.2f} MB"
        )
        print(f"yaml parse (C loader):      {parse:7.3f} s")
        print(f"yaml parse (pure Python):   {parse_py:7.3f} s")
        print(f"moldbatch plan:             {planning:7.3f} s")
        print(f"ratio plan / C parse:       {planning / parse:7.1f}x")
        print(f"ratio plan / Python parse:  {planning / parse_py:7.1f}x")
        for n in [int(x) for x in args.views.split(",") if x]:
            views(folder, n)


def views(folder: Path, shots: int) -> None:
    import contextlib
    import io
    import json

    from moldbatch import operations
    from moldbatch.execute.session import StageOutcome, Summary
    from moldbatch.review.diff import diff_plans
    from moldbatch.review.report import render_report
    from moldbatch.review.storyboard import render_storyboard
    from moldbatch.views import print_plan

    spec = folder / f"film-{shots}.yaml"
    spec.write_text(film_text(shots))
    edited = folder / f"film-{shots}-edited.yaml"
    edited.write_text(film_text(shots).replace("shot 7, a drone", "shot 7, a kite", 1))
    t = time.perf_counter()
    plan = plan_file(spec)
    planned = time.perf_counter() - t
    other = plan_file(edited)
    view = operations.dry_run(plan, folder / ".none")
    summary = Summary(
        plan.file, folder, [StageOutcome(s.id, s.kind, "cached") for s in plan.stages]
    )

    def terminal():
        with contextlib.redirect_stdout(io.StringIO()):
            print_plan(plan, view.cached, view.cost)

    timed = {
        "json": lambda: json.dumps(operations.dry_run(plan, folder / ".none").to_json()),
        "terminal": terminal,
        "html": lambda: render_storyboard(plan, view.cached, view.cost),
        "diff": lambda: diff_plans(plan, other).to_json(),
        "status": lambda: operations.status(plan, folder / ".none"),
        "report": lambda: render_report(plan, summary, folder, {}),
    }
    # best of 3 where a view takes well under a second (a single run is mostly noise there)
    repeat = 3 if shots <= 10_000 else 1
    seconds = {name: best_of(fn, repeat) for name, fn in timed.items()}
    print(f"\n{shots} shots ({len(plan.stages)} stages), planned in {planned:.2f} s:")
    for name, secs in seconds.items():
        print(f"  {name:9} {secs:8.3f} s   {secs / seconds['json']:5.2f}x json")


if __name__ == "__main__":
    main()
