"""Pure numpy stitching: clips of a chain into one shot, and shots into a film.

Frames are uint8 [F, H, W, 3]; audio is float32 [channels, samples]. Nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from moldbatch.media.timing import fps_fraction, samples_for_frames
from moldbatch.models import TRANSITIONS

# --------------------------------------------------------------------------- helpers


def _check_transition(transition: str, tail: int, fade_frames: int) -> None:
    if transition not in TRANSITIONS:
        raise ValueError(f"transition must be one of {TRANSITIONS}, got {transition!r}")
    if tail < 0:
        raise ValueError(f"tail must be >= 0, got {tail}")
    if fade_frames < 0:
        raise ValueError(f"fade_frames must be >= 0, got {fade_frames}")


def _fade_weights(n: int) -> np.ndarray:
    """Weights of the incoming clip over an n-long overlap: (k+1)/(n+1), k = 0..n-1.

    Neither end of the overlap is a pure copy of one clip (the pure frames sit just outside
    it), and for odd n the middle overlap frame is exactly the 50/50 mix.
    """
    return (np.arange(1, n + 1, dtype=np.float64) / (n + 1)).astype(np.float32)


Seam = tuple[str, int]  # the boundary before a clip: (transition, overlap in frames)


def uniform_seams(count: int, transition: str, tail: int, fade_frames: int) -> list[Seam]:
    """The seams of a chain whose clips all meet the same way."""
    overlap = {"smooth": tail, "fade": fade_frames, "cut": 0}[transition]
    return [(transition, overlap)] * max(0, count - 1)


def _segments(
    lengths: Sequence[int], seams: Sequence[tuple[str, int]], what: str
) -> list[tuple[int, int, int]]:
    """Per clip (start, stop, blend_next): the clip's own slice [start:stop] that is copied
    as-is, followed by `blend_next` items cross-faded with the next clip's head.

    `seams[i]` is the boundary between clip i and clip i + 1: ("smooth", items the later
    clip drops), ("fade", items cross-faded) or ("cut", 0), in the unit of `lengths`.
    """
    if len(seams) != len(lengths) - 1:
        raise ValueError(f"{len(lengths)} clips need {len(lengths) - 1} seams, got {len(seams)}")
    for kind, amount in seams:
        _check_transition(kind, amount, amount)
    segs: list[tuple[int, int, int]] = []
    for i, n in enumerate(lengths):
        before = seams[i - 1] if i > 0 else ("cut", 0)
        after = seams[i] if i < len(seams) else ("cut", 0)
        head = before[1] if before[0] != "cut" else 0  # dropped (smooth) or already blended
        tail = after[1] if after[0] == "fade" else 0  # blended with the next clip's head
        if before[0] == "smooth" and head >= n:
            raise ValueError(
                f"smooth: clip {i} has {n} {what}, not more than the {head} overlapping "
                f"tail {what} it drops"
            )
        if head + tail > n:
            raise ValueError(
                f"fade: clip {i} has {n} {what}, fewer than the {head + tail} {what} its seams need"
            )
        segs.append((head, n - tail, tail))
    return segs


def _stitch(
    clips: Sequence[np.ndarray], segs: list[tuple[int, int, int]], total: int, axis: int
) -> np.ndarray:
    """Assemble `total` items along `axis` following `segs`; writes straight into the
    output so a long chain is never concatenated in full and then trimmed."""
    first = clips[0]
    shape = list(first.shape)
    shape[axis] = total
    out = np.empty(shape, dtype=first.dtype)

    def take(a: np.ndarray, start: int, stop: int) -> np.ndarray:
        return a[start:stop] if axis == 0 else a[:, start:stop]

    pos = 0
    for i, (start, stop, blend) in enumerate(segs):
        if pos >= total:
            break
        n = min(stop - start, total - pos)
        if axis == 0:
            out[pos : pos + n] = clips[i][start : start + n]
        else:
            out[:, pos : pos + n] = clips[i][:, start : start + n]
        pos += n
        if blend and pos < total:
            a = take(clips[i], stop, stop + blend).astype(np.float32)
            b = take(clips[i + 1], 0, blend).astype(np.float32)
            w = _fade_weights(blend)
            w = w.reshape((-1,) + (1,) * (a.ndim - 1)) if axis == 0 else w[None, :]
            mixed = a + (b - a) * w
            if out.dtype == np.uint8:
                mixed = np.clip(np.rint(mixed), 0, 255)
            mixed = mixed.astype(out.dtype)
            n = min(blend, total - pos)
            if axis == 0:
                out[pos : pos + n] = mixed[:n]
            else:
                out[:, pos : pos + n] = mixed[:, :n]
            pos += n
    assert pos == total, (pos, total)
    return out


def _stitched_length(segs: list[tuple[int, int, int]]) -> int:
    return sum(stop - start + blend for start, stop, blend in segs)


def fit_audio(audio: np.ndarray, samples: int, *, pad_tolerance: int | None = None) -> np.ndarray:
    """Trim `audio` [C, S] from the end, or pad it with trailing silence, to exactly `samples`.

    With `pad_tolerance` set, padding more than that many samples is a ValueError (a gap
    that large means the audio does not belong to these frames).
    """
    have = audio.shape[1]
    if have >= samples:
        return audio[:, :samples]
    short = samples - have
    if pad_tolerance is not None and short > pad_tolerance:
        raise ValueError(
            f"audio has {have} samples, {short} short of the {samples} needed "
            f"(at most {pad_tolerance} may be padded with silence)"
        )
    out = np.zeros((audio.shape[0], samples), dtype=audio.dtype)
    out[:, :have] = audio
    return out


# --------------------------------------------------------------------------- video


def stitch_frames(
    clips: Sequence[np.ndarray],
    transition: str,
    tail: int,
    fade_frames: int,
    total: int,
    *,
    seams: Sequence[Seam] | None = None,
) -> np.ndarray:
    """Stitch the clips of one chain into exactly `total` frames (uint8 [total, H, W, 3]).

    Clip i has F_i frames. The transitions are:

    - ``"smooth"``: clip 0 whole, then each later clip without its first `tail` frames,
      which re-render the previous clip's last `tail` frames (the chain's carried tail).
      Length: sum(F_i) - tail * (n - 1).
    - ``"cut"``: plain concatenation. Length: sum(F_i). `tail` and `fade_frames` are unused.
    - ``"fade"``: with n = fade_frames, the last n frames of clip i and the first n frames
      of clip i+1 occupy the same n output frames; overlap frame k (0-based) is
      ``round(a + (b - a) * (k + 1) / (n + 1))`` where a is clip i and b clip i+1, so for odd
      n the middle overlap frame is the exact 50/50 mix. Length: sum(F_i) - n * (n_clips - 1).
      Every clip needs at least n frames, and inner clips at least 2n (their two fades may
      not overlap). fade_frames=0 is the same as ``"cut"``.

    The stitched sequence is then trimmed from the END to `total` frames; it is a
    ValueError if it is shorter than `total`.

    `seams` (one (transition, overlap frames) per boundary, e.g. from an explicit clip list)
    replaces `transition`, `tail` and `fade_frames` when clips meet in different ways.
    """
    if seams is None:
        _check_transition(transition, tail, fade_frames)
    if not clips:
        raise ValueError("stitch_frames needs at least one clip")
    if total < 1:
        raise ValueError(f"total must be >= 1, got {total}")
    h, w = None, None
    for i, c in enumerate(clips):
        if not isinstance(c, np.ndarray) or c.dtype != np.uint8 or c.ndim != 4 or c.shape[-1] != 3:
            got = getattr(c, "shape", type(c)), getattr(c, "dtype", None)
            raise ValueError(f"clip {i} must be uint8 [F, H, W, 3], got {got}")
        if h is None:
            h, w = c.shape[1], c.shape[2]
        elif c.shape[1:3] != (h, w):
            raise ValueError(f"clip {i} is {c.shape[2]}x{c.shape[1]}, clip 0 is {w}x{h}")
        if c.shape[0] == 0:
            raise ValueError(f"clip {i} has no frames")
    if seams is None:
        seams = uniform_seams(len(clips), transition, tail, fade_frames)
    segs = _segments([c.shape[0] for c in clips], seams, "frames")
    length = _stitched_length(segs)
    if length < total:
        raise ValueError(
            f"stitched {transition} chain has {length} frames, fewer than total={total}"
        )
    return _stitch(clips, segs, total, axis=0)


# --------------------------------------------------------------------------- audio


def stitch_audio(
    clips: Sequence[np.ndarray | None],
    transition: str,
    tail: int,
    fade_frames: int,
    fps: float | Fraction,
    sample_rate: int,
    total_frames: int,
    *,
    clip_frames: Sequence[int] | None = None,
    pad_tolerance: int | None = None,
    seams: Sequence[Seam] | None = None,
) -> np.ndarray | None:
    """Stitch the audio of one chain to exactly round(total_frames / fps * sample_rate) samples.

    Audio clips are float32 [C, S]. The rules mirror `stitch_frames`, in time:

    - ``"smooth"``: each later clip drops its first round(tail / fps * sample_rate) samples.
    - ``"cut"``: plain concatenation.
    - ``"fade"``: consecutive clips overlap by round(fade_frames / fps * sample_rate)
      samples, linearly cross-faded with the same (k+1)/(n+1) weights as the frames.

    The result is trimmed from the end, or padded with trailing silence when it is short by
    at most `pad_tolerance` samples (default: one video frame's worth); shorter is a
    ValueError. Returns None when every clip is silent.

    `clip_frames` (the frame count of each clip) is optional but recommended: each clip's
    audio is then first fitted to exactly its clip's duration, so a vocoder that returns a
    few samples too many or too few cannot drift the audio of later clips out of sync, and
    silent clips (None) among voiced ones become silence of the right length. Without it a
    None among voiced clips is a ValueError, since its length is unknown.
    """
    if seams is None:
        _check_transition(transition, tail, fade_frames)
    if not clips:
        raise ValueError("stitch_audio needs at least one clip")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if clip_frames is not None and len(clip_frames) != len(clips):
        raise ValueError(f"clip_frames has {len(clip_frames)} entries for {len(clips)} clips")
    voiced = [a for a in clips if a is not None]
    if not voiced:
        return None
    channels = voiced[0].shape[0] if voiced[0].ndim == 2 else -1
    for i, a in enumerate(clips):
        if a is None:
            continue
        if not isinstance(a, np.ndarray) or a.ndim != 2 or a.shape[0] != channels:
            raise ValueError(
                f"audio clip {i} must be [{channels}, samples] like the first voiced clip, "
                f"got {getattr(a, 'shape', type(a))}"
            )

    fitted: list[np.ndarray] = []
    for i, a in enumerate(clips):
        if clip_frames is not None:
            n = samples_for_frames(clip_frames[i], fps, sample_rate)
            a = np.zeros((channels, n), np.float32) if a is None else fit_audio(a, n)
        elif a is None:
            raise ValueError(
                f"audio clip {i} is silent among voiced clips; pass clip_frames so it can be "
                "filled with silence of the right length"
            )
        fitted.append(np.asarray(a, dtype=np.float32))

    if seams is None:
        seams = uniform_seams(len(clips), transition, tail, fade_frames)
    in_samples = [(kind, samples_for_frames(n, fps, sample_rate)) for kind, n in seams]
    segs = _segments([a.shape[1] for a in fitted], in_samples, "samples")
    length = _stitched_length(segs)
    want = samples_for_frames(total_frames, fps, sample_rate)
    if pad_tolerance is None:
        pad_tolerance = math.ceil(Fraction(sample_rate) / fps_fraction(fps))  # one video frame
    if length < want - pad_tolerance:
        raise ValueError(
            f"stitched {transition} audio has {length} samples, {want - length} short of the "
            f"{want} for {total_frames} frames (at most {pad_tolerance} may be padded)"
        )
    out = _stitch(fitted, segs, min(length, want), axis=1)
    return fit_audio(out, want)


# --------------------------------------------------------------------------- film


def join(
    shots: Sequence[tuple[np.ndarray, np.ndarray | None]],
    fps: float | Fraction,
    sample_rate: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Join shots (frames uint8 [F_i, H, W, 3], audio float32 [C, S] or None) into a film.

    Frames are concatenated; all shots must share H and W (ValueError otherwise) and, being
    passed one `fps`, are taken to share the frame rate. The audio is `film_audio`'s.
    Returns (frames, audio or None)."""
    if not shots:
        raise ValueError("join needs at least one shot")
    h = w = None
    total = 0
    for i, (frames, _) in enumerate(shots):
        if (
            not isinstance(frames, np.ndarray)
            or frames.dtype != np.uint8
            or frames.ndim != 4
            or frames.shape[-1] != 3
        ):
            raise ValueError(
                f"shot {i} frames must be uint8 [F, H, W, 3], got {getattr(frames, 'shape', type(frames))}"
            )
        if h is None:
            h, w = frames.shape[1], frames.shape[2]
        elif frames.shape[1:3] != (h, w):
            raise ValueError(
                f"shot {i} is {frames.shape[2]}x{frames.shape[1]}, shot 0 is {w}x{h}; all shots must share one size"
            )
        total += frames.shape[0]
    out = np.empty((total, h, w, 3), np.uint8)
    pos = 0
    for frames, _ in shots:
        out[pos : pos + frames.shape[0]] = frames
        pos += frames.shape[0]
    sound = film_audio([f.shape[0] for f, _ in shots], [a for _, a in shots], fps, sample_rate)
    return out, sound


def film_audio(
    counts: Sequence[int],
    audios: Sequence[np.ndarray | None],
    fps: float | Fraction,
    sample_rate: int | None,
) -> np.ndarray | None:
    """A film's sound from its shots' (`counts` frames each, audio float32 [C, S] or None), laid
    out on the frame grid: shot k's audio is trimmed or padded with silence to the samples
    between round(start_k / fps * sr) and round(end_k / fps * sr), where start_k/end_k are its
    first and one-past-last frame in the film, so no rounding drift accumulates and every cut
    is in sync. Silent shots get silence when any shot has audio; mono shots are duplicated to
    stereo when others are stereo. None when no shot has audio.

    All audio must already be at `sample_rate` (see `moldbatch.media.encode.resample_audio`).
    """
    channels = 0
    for i, audio in enumerate(audios):
        if audio is None:
            continue
        if not isinstance(audio, np.ndarray) or audio.ndim != 2 or audio.shape[0] < 1:
            raise ValueError(
                f"shot {i} audio must be [channels, samples], got {getattr(audio, 'shape', type(audio))}"
            )
        c = audio.shape[0]
        if channels and c != channels and 1 not in (c, channels):
            raise ValueError(f"shot {i} audio has {c} channels, another shot has {channels}")
        channels = max(channels, c)
    if not channels:
        return None
    if sample_rate is None or sample_rate <= 0:
        raise ValueError("join needs a positive sample_rate when any shot has audio")
    total = sum(counts)
    sound = np.zeros((channels, samples_for_frames(total, fps, sample_rate)), np.float32)
    start_frame = 0
    for count, audio in zip(counts, audios, strict=True):
        end_frame = start_frame + count
        s0 = samples_for_frames(start_frame, fps, sample_rate)
        s1 = samples_for_frames(end_frame, fps, sample_rate)
        if audio is not None:
            piece = fit_audio(np.asarray(audio, np.float32), s1 - s0)
            sound[:, s0:s1] = piece  # broadcasts a mono shot over all channels
        start_frame = end_frame
    return sound
