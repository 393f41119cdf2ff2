"""Chain arithmetic: how a shot of F frames is split into clips, and where each clip sits.

With total F, clip length C and overlap O (the motion tail for `smooth`, the fade length for
`fade`, 0 for `cut`): clips = 1 + ceil((F - C) / (C - O)); every clip but the last renders C
frames; the last renders the smallest grid count >= O + the fresh frames still needed
(`tight`) or C (`full`). Clip i > 0 starts O frames before the end of clip i - 1, and the
stitched shot is trimmed from the tail to F.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from moldbatch.models import FRAME_GRID, grid_ceil


@dataclass(frozen=True)
class ClipSpan:
    index: int
    frames: int  # frames this clip renders
    start: int  # shot frame of its first rendered frame
    keep_from: int  # shot frame of its first frame that survives the stitch

    @property
    def end(self) -> int:  # one past its last rendered shot frame
        return self.start + self.frames


def chain_clips(
    total: int, clip: int, overlap: int, last_clip: str = "tight", grid: int = FRAME_GRID
) -> list[ClipSpan]:
    """Split `total` frames into clips of `clip` frames that overlap by `overlap` frames."""
    if total <= clip:
        return [ClipSpan(0, grid_ceil(total, grid), 0, 0)]
    if not 0 <= overlap < clip:
        raise ValueError(f"overlap {overlap} must be in [0, {clip})")
    count = 1 + ceil((total - clip) / (clip - overlap))
    spans, start, covered = [], 0, 0
    for i in range(count):
        if i < count - 1 or last_clip == "full":
            frames = clip
        else:
            frames = min(clip, grid_ceil(overlap + (total - covered), grid))
        keep_from = start if i == 0 else start + overlap
        spans.append(ClipSpan(i, frames, start, keep_from))
        covered = start + frames
        start = covered - overlap
    return spans


def locate_frame(spans: list[ClipSpan], frame: int) -> tuple[int, int]:
    """The clip whose kept frames hold shot frame `frame`, and the frame's index in that clip."""
    for span in spans:
        if span.keep_from <= frame < span.end:
            return span.index, frame - span.start
    last = spans[-1]
    return last.index, frame - last.start
