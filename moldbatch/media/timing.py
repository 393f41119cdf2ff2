"""Exact frame-rate and sample-count arithmetic shared by stitching, encoding and probing."""

from __future__ import annotations

import math
from fractions import Fraction

# Frame rates that are conventionally written as decimals but are really n*1000/1001.
_NTSC_BASES = (24, 30, 48, 60, 120, 240)


def fps_fraction(fps: float | Fraction) -> Fraction:
    """Return `fps` as an exact Fraction: 24 -> 24/1, 23.976 -> 24000/1001, 29.97 -> 30000/1001.

    Container time bases need an exact rational rate; a float like 23.976 taken literally
    (2997/125) would drift against players that assume 24000/1001, so the usual NTSC
    rates are snapped to their n*1000/1001 form.
    """
    if isinstance(fps, Fraction):
        rate = fps
    else:
        value = float(fps)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"fps must be a positive finite number, got {fps!r}")
        if abs(value - round(value)) < 1e-6:
            rate = Fraction(round(value))
        else:
            rate = next(
                (
                    Fraction(b * 1000, 1001)
                    for b in _NTSC_BASES
                    if abs(value - b * 1000 / 1001) < 2e-3
                ),
                Fraction(value).limit_denominator(1001),
            )
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return rate


def samples_for_frames(frames: int, fps: float | Fraction, sample_rate: int) -> int:
    """Number of audio samples spanning `frames` video frames: round(frames / fps * sample_rate).

    Rounds half up (not Python's banker's rounding) so every module gets the same count.
    """
    exact = Fraction(frames) * int(sample_rate) / fps_fraction(fps)
    return math.floor(exact + Fraction(1, 2))
