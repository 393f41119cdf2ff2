"""Host memory of a render in each memory tier, measured: a child process's max RSS.

    python benchmarks/bench_memory.py                  # 400 MB text encoder, 800 MB transformer
    python benchmarks/bench_memory.py --mb 800 --json out.json

Each tier renders the same small film (2 prompts, 3 clips, 64x64) in a fresh child process
and a fresh work folder, with the tiny model scaled up (MOLDBATCH_TINY_SCALE_MB: a text
encoder of about that many MB and a transformer of twice that, random weights: the real
models' proportions, ~24 GB of Gemma and ~40 GB of 19B transformer in bf16). The child reports its
peak resident set (VmHWM, not ru_maxrss: see `_peak_rss_kb`) and the text encoder's parameter bytes
(read by a forward hook on it). In `resident` the text encoder stays loaded beside the
transformer; in `sequential` it is released before the transformer loads, so the peak should
drop by about the text encoder's size (tests/runtime/test_memory_tiers.py asserts >= 80%).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

FILM = """\
version: 1
defaults: {model: ltx-2-tiny:random, width: 64, height: 64, guidance: 1.0, audio: false}
shots:
  - {id: one, prompt: a quiet harbour, frames: 9}
  - id: two
    frames: 30
    clip_frames: 17
    motion_tail: 1
    prompts: [a quiet harbour, boats at dusk]
"""
TIERS = ("resident", "sequential", "streamed")


def child(tier: str, folder: str) -> None:
    """Render the film in `tier`; print {"max_rss_mb", "text_encoder_mb"} as one JSON line."""

    import torch
    from transformers.models.gemma3.modeling_gemma3 import Gemma3Model

    from moldbatch.execute.executor import render_plan
    from moldbatch.plan.planner import plan_file

    seen: dict[str, float] = {}

    def hook(module, args):
        if isinstance(module, Gemma3Model) and "text" not in seen:
            seen["text"] = sum(p.numel() * p.element_size() for p in module.parameters()) / 1e6

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    spec = Path(folder) / "film.yaml"
    spec.write_text(FILM)
    plan = plan_file(spec)
    assert plan.valid, [str(d) for d in plan.diagnostics]
    summary = render_plan(plan, progress=False, device="cpu", memory=tier)
    handle.remove()
    assert summary.ok, summary
    rss = _peak_rss_kb() / 1024
    print(json.dumps({"max_rss_mb": round(rss, 1), "text_encoder_mb": round(seen["text"], 1)}))


def _peak_rss_kb() -> float:
    """This process's peak resident set since it was exec'd: VmHWM (the address space's high
    water mark). Not getrusage's ru_maxrss: Linux carries the pre-exec high water into it, so a
    child started from a large parent (a test run) reports at least the parent's peak."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux (elsewhere: no /proc)


def measure(tier: str, mb: int) -> dict:
    """One tier's render in a child process: its max RSS and the text encoder's MB."""
    env = {**os.environ, "MOLDBATCH_TINY_SCALE_MB": str(mb)}
    with tempfile.TemporaryDirectory() as d:
        res = subprocess.run(
            [sys.executable, __file__, "--child", tier, d],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    if res.returncode != 0:
        raise RuntimeError(f"{tier} render failed:\n{res.stderr[-3000:]}")
    return {"tier": tier, **json.loads(res.stdout.strip().splitlines()[-1])}


def run(mb: int, tiers=TIERS) -> list[dict]:
    return [measure(tier, mb) for tier in tiers]


def stored_prompt_sizes(tokens=(32, 64, 128, 256, 512, 1024)) -> list[dict]:
    """The size of an encode stage's artifact file (execute/handlers.run_encode's safetensors)
    at the real models' shapes: Gemma 3 12B, 49 hidden states x 3840, bf16, per prompt length."""
    import torch
    from safetensors.torch import save_file

    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in tokens:
            path = Path(d) / "text.safetensors"
            save_file({"embeds": torch.zeros((n, 49 * 3840), dtype=torch.bfloat16)}, str(path))
            rows.append({"tokens": n, "mb": round(path.stat().st_size / 1e6, 2)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--mb", type=int, default=400, help="MB of text encoder (twice that of transformer)"
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--child", nargs=2, metavar=("TIER", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    for r in stored_prompt_sizes():
        print(f"stored prompt of {r['tokens']:>4} tokens (Gemma 3 12B, bf16): {r['mb']:7.2f} MB")
    rows = run(args.mb)
    base = rows[0]["max_rss_mb"]
    for r in rows:
        saved = base - r["max_rss_mb"]
        print(
            f"{r['tier']:>10}: peak RSS {r['max_rss_mb']:8.1f} MB  (text encoder "
            f"{r['text_encoder_mb']:.1f} MB; {saved:+.1f} MB below resident = "
            f"{100 * saved / r['text_encoder_mb']:.0f}% of it)"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
