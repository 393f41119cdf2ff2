"""What a clip's intermediate artifact costs at the real size (1216x704, 97 frames, 3 s of
audio): bytes on disk, and the seconds to write it (commit: checksum, optional fsync, rename)
and to read it back (verify the checksum, load for the stitch), for each way of storing it;
then what of that the GPU lane pays per clip: inline (its commit, and the next clip's read of
the carried frames) against write-behind (lanes.WriteBehind: the hand-off, and the next clip's
read from memory; the commit runs on its own thread meanwhile), as a share of a clip's GPU
time; and the work folder of a 400-frame shot.

    python benchmarks/bench_artifacts.py [--repeat 3] [--clip-seconds 10]

The frames are a moving gradient with noise (a real decode compresses about as well).
`--clip-seconds`: a clip's GPU time to compare with (an H100 renders 768x512x121 at 8 steps in
~7.5-9.5 s, sglang's published figure; 1216x704x97 has 1.8x its tokens).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from moldbatch.execute.handlers import load_media, save_media
from moldbatch.execute.store import ArtifactStore, Pending
from moldbatch.plan.planner import plan_file

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


def gpu_lane(folder: Path, frames, audio, behind: bool) -> float:
    """Seconds the GPU lane spends on one clip's artifact: the commit inline and the next clip
    reading the carry back, or with write-behind the hand-off and the read from memory."""
    store = ArtifactStore(folder)
    key = os.urandom(32).hex()
    t = time.perf_counter()
    out = store.writer(key, "bench/clip-0", durable=False)
    save_media(out, frames, audio, RATE, FPS)
    if behind:
        view = Pending(out)
    else:
        out.commit()
        view = store.get(key, verify=False)  # as the session's books hold it
    tail = load_media(view)[0][-17:]
    tail.sum()  # touched, as the carry's encode touches it
    lane = time.perf_counter() - t
    if behind:
        out.commit()  # (the write-behind thread's work, not timed here)
    return lane


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--clip-seconds", type=float, default=10.0)
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
        print(f"\nthe GPU lane's seconds per clip (against a {args.clip_seconds:g} s clip):")
        for behind, what in ((False, "inline commit"), (True, "write-behind ")):
            lane = min(gpu_lane(Path(d), frames, audio, behind) for _ in range(args.repeat))
            print(f"  {what}: {lane:7.4f} s   {100 * lane / args.clip_seconds:6.2f}% of the clip")
    shot_size(size, frames)


SHOT = """\
version: 1
defaults: {model: ltx-2-19b-distilled:fp8, width: 1216, height: 704}
shots:
  - {id: long, prompt: a drone over cliffs, frames: 400}
"""


def shot_size(clip_bytes: int, frames) -> None:
    """The work folder of a 400-frame shot as the planner chains it (97-frame clips, the
    default tail): its clips' media and latents, and the stitched shot (its mp4: a few MB)."""
    with tempfile.TemporaryDirectory() as d:
        spec = Path(d) / "shot.yaml"
        spec.write_text(SHOT)
        plan = plan_file(spec)
        assert plan.valid, plan.diagnostics
    frame, sound = frames[0].nbytes, (clip_bytes - frames.nbytes) / FRAMES  # per frame
    total = 0.0
    clips = [s.params for s in plan.stages if s.kind == "clip"]
    for p in clips:
        latents = 128 * ((p.frames - 1) // 8 + 1) * (p.height // 32) * (p.width // 32) * 4
        total += p.frames * (frame + sound) + latents
    shot = plan.shots[0].frames
    stitch = shot * (frame + sound)
    print(
        f"\na {shot}-frame shot at {WIDTH}x{HEIGHT}: {len(clips)} clips "
        f"({', '.join(str(p.frames) for p in clips)} frames) {total / 1e9:.2f} GB, "
        f"stitch {stitch / 1e9:.2f} GB: {(total + stitch) / 1e9:.2f} GB in the work folder "
        "(`gc --lean` keeps the shot file alone)"
    )


if __name__ == "__main__":
    main()
