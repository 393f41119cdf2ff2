"""Latent-space chain carry-over: which latents a clip hands to the next, and where they land.

Time grids (both VAEs are causal: their first latent frame stands for a single frame):

* video: latent frame 0 is pixel frame 0; latent frame j >= 1 is pixel frames 8j-7 .. 8j.
  A clip of F = 8k+1 frames has (F - 1) // 8 + 1 latent frames.
* audio: mel frames come every `hop / sample_rate` seconds (10 ms for LTX-2) and the audio VAE
  compresses them 4x in the same causal way: latent 0 is mel frame 0, latent j >= 1 is mel
  frames 4j-3 .. 4j. So there are `sample_rate / hop / 4` audio latents per second (25 for
  LTX-2) and L latents decode to 4L - 3 mel frames.

A carry puts the previous clip's last video latent frames, and its audio latents from the
moment `tail_frames / fps` seconds before its end, at the start of the next clip, where they are
held fixed while the rest is denoised. When the executor then drops the first `tail_frames`
frames (and `tail_frames / fps` seconds of audio) of the new clip, audio continues where the
previous clip stopped to within half an audio latent (20 ms for LTX-2); video lines up exactly
when tail_frames is 8m+1 (1, 9, 17, ...), otherwise the carried latent frames decode to
1 + 8(k - 1) frames for k = (tail_frames - 1) // 8 + 1 and the cut is off by the difference.
"""

from __future__ import annotations

import math
from typing import Any

from moldbatch.runtime.requests import Carry, ClipResult

VIDEO_TIME_COMPRESSION = 8
AUDIO_TIME_COMPRESSION = 4
# 16 kHz mel frames every 160 samples, 4x compressed: the rate of every LTX-2 / 2.3 model (and the tiny one).
LTX2_AUDIO_LATENTS_PER_SECOND = 25.0


def video_latent_frames(frames: int) -> int:
    """Latent frames of a clip of `frames` (8k+1) pixel frames."""
    return (frames - 1) // VIDEO_TIME_COMPRESSION + 1


def carried_video_latent_frames(tail_frames: int) -> int:
    """Latent frames that hold the last `tail_frames` pixel frames of a clip: (T - 1) // 8 + 1."""
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


def audio_carry_start(
    frames: int, fps: float, tail_frames: int, rate: float = LTX2_AUDIO_LATENTS_PER_SECOND
) -> int:
    """Index of the first audio latent carried from a clip of `frames` frames.

    Latent s begins (for s >= 1) at mel frame 4s - 3, about s / rate seconds in; the carry
    starts at the latent nearest to `tail_frames / fps` seconds before the clip's end.
    """
    start_time = (frames - tail_frames) / fps
    return max(0, min(round(start_time * rate), audio_latent_length(frames, fps, rate) - 1))


def carry_from(
    previous: ClipResult | Any,
    audio_latents: Any | None = None,
    *,
    tail_frames: int,
    frames: int,
    fps: float,
    audio_latents_per_second: float = LTX2_AUDIO_LATENTS_PER_SECOND,
) -> Carry | None:
    """Cut the carry for the next clip from the previous clip's final latents.

    `previous` is the previous clip's `ClipResult`, or its video latents [1, C, F', H', W']
    (e.g. loaded from safetensors), with its audio latents [1, C, L, M] (or None) as the second
    argument. `frames` and `fps` are the PREVIOUS clip's. Returns None when tail_frames is 0.
    """
    if tail_frames == 0:
        return None
    if isinstance(previous, ClipResult):
        video, audio = previous.video_latents, previous.audio_latents
    else:
        video, audio = previous, audio_latents
    if tail_frames >= frames:
        raise ValueError(
            f"tail_frames ({tail_frames}) must be less than the clip's frames ({frames})"
        )
    if video.ndim != 5 or video.shape[2] != video_latent_frames(frames):
        raise ValueError(
            f"video latents of shape {tuple(video.shape)} do not belong to a {frames}-frame clip "
            f"(expected [1, C, {video_latent_frames(frames)}, H', W'])"
        )
    k = carried_video_latent_frames(tail_frames)
    video_tail = video[:, :, -k:].detach().clone()

    audio_tail = None
    if audio is not None:
        expected = audio_latent_length(frames, fps, audio_latents_per_second)
        if audio.ndim != 4 or audio.shape[2] != expected:
            raise ValueError(
                f"audio latents of shape {tuple(audio.shape)} do not belong to a {frames}-frame clip at "
                f"{fps} fps (expected [1, C, {expected}, M])"
            )
        start = audio_carry_start(frames, fps, tail_frames, audio_latents_per_second)
        audio_tail = audio[:, :, start:].detach().clone()
    return Carry(video=video_tail, audio=audio_tail, tail_frames=tail_frames)


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
