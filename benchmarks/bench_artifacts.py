"""What a clip's intermediate artifact costs at the real size (1216x704, 97 frames, 3 s of
audio): bytes on disk, and the seconds to write it (commit: checksum, optional fsync, rename)
and to read it back (verify the checksum, load for the stitch), for each way of storing it.

    python benchmarks/bench_artifacts.py [--repeat 3]

The frames are a moving gradient with noise (a real decode compresses about as well).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from moldbatch.execute.handlers import load_media, save_media
from moldbatch.execute.store import ArtifactStore

FRAMES, HEIGHT, WIDTH, FPS, RATE = 97, 704, 1216, 24.0, 24_000


def clip() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    frames = np.empty((FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    for t in range(FRAMES):
        base = (x + 3 * t) % 256
        frames[t, ..., 0] = base
        frames[t, ..., 1] = (y + t) % 256
        frames[t, ..., 2] = (base // 2 + rng.integers(0, 8, (HEIGHT, WIDTH))).astype(np.uint8)
    audio = rng.standard_normal((2, int(FRAMES / FPS * RATE))).astype(np.float32) * 0.1
    return frames, audio


def once(folder: Path, frames, audio, durable: bool) -> tuple[int, float, float]:
    store = ArtifactStore(folder)
    key = os.urandom(32).hex()
    t = time.perf_counter()
    out = store.writer(key, "bench/clip-0", durable=durable)
    save_media(out, frames, audio, RATE, FPS)
    art = out.commit()
    write = time.perf_counter() - t
    size = sum(p.stat().st_size for p in art.dir.iterdir())
    t = time.perf_counter()
    found = store.get(key, verify=True)
    load_media(found)
    read = time.perf_counter() - t
    return size, write, read


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    frames, audio = clip()
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as d:
        for durable in (True, False):
            runs = [once(Path(d), frames, audio, durable) for _ in range(args.repeat)]
            size = runs[0][0]
            write = min(r[1] for r in runs)
            read = min(r[2] for r in runs)
            what = "fsynced " if durable else "no fsync"
            print(
                f"{what}: {size / 1e6:7.1f} MB, write {write:6.3f} s, read+verify {read:6.3f} s, "
                f"together {write + read:6.3f} s"
            )


if __name__ == "__main__":
    main()
