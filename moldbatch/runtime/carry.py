"""Chain carry-over: the previous clip's last frames and sound, encoded again and held at the
start of the next clip.

Time grids (both VAEs are causal: their first latent frame stands for a single frame):

* video: latent frame 0 is pixel frame 0; latent frame j >= 1 is pixel frames 8j-7 .. 8j.
  A clip of F = 8k+1 frames has (F - 1) // 8 + 1 latent frames.
* audio: mel frames come every `hop / sample_rate` seconds (10 ms for LTX-2) and the audio VAE
  compresses them 4x in the same causal way: latent 0 is mel frame 0, latent j >= 1 is mel
  frames 4j-3 .. 4j. So there are `sample_rate / hop / 4` audio latents per second (25 for
  LTX-2) and L latents decode to 4L - 3 mel frames, (4L - 3) / (4 * rate) seconds.

The carry (what mold's code does, and what diffusers' condition pipeline does with a video
condition at latent index 0): the last T DECODED frames of clip N, T = 8m + 1, are VAE-encoded
again into m + 1 latent frames, so that latent 0 is a proper single-frame latent and each later
one a proper 8-frame group in clip N+1's own time axis; they are held clean at the start of
clip N+1 and decode to exactly those T frames, which the stitch drops. The audio likewise: the
decoded sound of clip N from T / fps seconds before its end is encoded by the audio VAE and its
first latents, those that lie wholly inside the T / fps seconds, are held at the start of clip
N+1's audio; the stitch drops exactly T / fps seconds. Carrying latents directly (the last
latent frame of clip N into slot 0) would make the VAE read an 8-frame group as one frame.

A tail that is not 8m + 1 (mold scripts only: moldbatch specs refuse it) is encoded as the
diffusers condition pipeline trims a video condition: its first 8 * ((T - 1) // 8) + 1 frames
are held, the rest of the T frames are generated afresh, and the stitch still drops all T.
"""

from __future__ import annotations

import math
from typing import Any

from moldbatch.models import held_frames
from moldbatch.runtime.requests import Carry

VIDEO_TIME_COMPRESSION = 8
AUDIO_TIME_COMPRESSION = 4
# 16 kHz mel frames every 160 samples, 4x compressed: the rate of every LTX-2 / 2.3 model (and the tiny one).
LTX2_AUDIO_LATENTS_PER_SECOND = 25.0


def video_latent_frames(frames: int) -> int:
    """Latent frames of a clip of `frames` (8k+1) pixel frames."""
    return (frames - 1) // VIDEO_TIME_COMPRESSION + 1


def carried_video_latent_frames(tail_frames: int) -> int:
    """Latent frames the carry of a `tail_frames` tail holds: (T - 1) // 8 + 1."""
    if tail_frames < 1:
        raise ValueError(f"tail_frames must be at least 1, got {tail_frames}")
    return (tail_frames - 1) // VIDEO_TIME_COMPRESSION + 1


def audio_latent_length(
    frames: int, fps: float, rate: float = LTX2_AUDIO_LATENTS_PER_SECOND
) -> int:
    """Audio latents the runtime generates for a clip: the fewest whose decoded audio covers it.

    L latents decode to 4L - 3 mel frames, i.e. (4L - 3) / (4 * rate) seconds, so L is
    ceil(duration * rate + 3/4). diffusers' default and Lightricks' reference (ltx-core
    `types.py:131-147`, AudioLatentShape.from_duration), round(duration * rate), can come up to
    about 50 ms short, which would leave a gap at every seam of a chain: a deliberate
    difference, kept for the seams (docs/reference-parity.md).
    """
    duration = frames / fps
    # The tiny epsilon keeps an exact product (e.g. 1.0 * 25 + 0.75) from rounding up a whole latent.
    return max(1, math.ceil(duration * rate + 0.75 - 1e-9))


def held_audio_latents(seconds: float, rate: float = LTX2_AUDIO_LATENTS_PER_SECOND) -> int:
    """Audio latents that lie wholly inside the first `seconds` of a clip: the most L with
    (4L - 3) / (4 * rate) <= seconds (at least 1)."""
    return max(1, math.floor(seconds * rate + 0.75 + 1e-9))


def tail_start(frames: int, tail_frames: int) -> int:
    """The previous clip's frame where its carried tail starts (the next clip's frame 0)."""
    if not 0 < tail_frames < frames:
        raise ValueError(
            f"tail_frames ({tail_frames}) must be at least 1 and less than the clip's frames "
            f"({frames})"
        )
    return frames - tail_frames


def carry_from(
    runtime: Any,
    frames: Any,
    audio: Any | None = None,
    sample_rate: int | None = None,
    *,
    tail_frames: int,
    fps: float,
) -> Carry | None:
    """The carry for the next clip from the previous clip's DECODED output: `frames` uint8
    [F, H, W, 3] at the next clip's render size and rate, and its `audio` float32 [C, S] at
    `sample_rate` (or None). `runtime` encodes them (`Runtime.encode_video` / `encode_audio`).
    Returns None when tail_frames is 0."""
    if tail_frames == 0:
        return None
    count = int(frames.shape[0])
    start = tail_start(count, tail_frames)
    video = runtime.encode_video(frames[start : start + held_frames(tail_frames)])
    audio_tail = None
    if audio is not None and sample_rate:
        begin = start / fps
        # the sound the previous clip has from `begin` on (a temporal x2 clip's is cut a little
        # short of its rendered length): hold only latents that lie wholly inside it
        have = audio.shape[1] / sample_rate - begin
        seconds = min(tail_frames / fps, have)
        n = held_audio_latents(seconds, runtime.audio_latents_per_second)
        audio_tail = runtime.encode_audio(audio, sample_rate, begin, n)
    return Carry(video=video, audio=audio_tail, tail_frames=tail_frames)


def check_carry_fits(carry: Carry, latent_frames: int, audio_frames: int | None) -> None:
    """Raise ValueError when a carry is longer than the clip it is meant to start."""
    if carry.video.shape[2] >= latent_frames:
        raise ValueError(
            f"the carry holds {carry.video.shape[2]} latent frames but the clip has only {latent_frames}; "
            "tail_frames must be shorter than the clip"
        )
    if (
        carry.audio is not None
        and audio_frames is not None
        and carry.audio.shape[2] >= audio_frames
    ):
        raise ValueError(
            f"the carried audio holds {carry.audio.shape[2]} latents but the clip has only {audio_frames}"
        )
