"""What `render --compile` costs and saves: seconds per clip of the plain transformer against
the compiled one (the first clip of a shape compiles, later ones reuse it, a new shape
compiles again), in one process.

    python benchmarks/bench_compile.py [--model ltx-2-tiny:random] [--backend inductor]

On the tiny model on a CPU this measures the compile's cost, not its gain: the gain is on a
GPU with the real transformer (benchmarks/gpu.py), where the default stays off until it shows.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from moldbatch.runtime import ClipRequest, Runtime
from moldbatch.runtime.ltx2 import COMPILE_BACKEND_ENV


def clip(rt: Runtime, frames: int, seed: int) -> float:
    req = ClipRequest(
        model=rt.model, prompt="a harbour at dawn", width=64, height=64, frames=frames,
        fps=24.0, seed=seed, steps=4, guidance=1.0,
    )  # fmt: skip
    t = time.perf_counter()
    rt.render_clip(req)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ltx-2-tiny:random")
    ap.add_argument("--backend", default="inductor")
    args = ap.parse_args()
    os.environ[COMPILE_BACKEND_ENV] = args.backend
    plain = Runtime(args.model)
    clip(plain, 17, 0)  # warm
    base = min(clip(plain, 17, s) for s in (1, 2))
    compiled = Runtime(args.model, compile=True)
    first = clip(compiled, 17, 1)
    again = min(clip(compiled, 17, s) for s in (2, 3))
    shape = clip(compiled, 25, 1)
    print(f"{args.model}, backend {args.backend}, 17 frames at 64x64, 4 steps:")
    print(f"  plain clip:                   {base:7.2f} s")
    print(f"  compiled, first of its shape: {first:7.2f} s  (compile {first - base:+.2f} s)")
    print(f"  compiled, the same shape:     {again:7.2f} s  ({again / base:.2f}x plain)")
    print(f"  compiled, a new shape (25):   {shape:7.2f} s")


if __name__ == "__main__":
    main()
