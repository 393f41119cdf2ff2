"""Inspect and decode media files: `probe` for stream facts, `read_video` for the samples.

Only the standard library and (lazily) PyAV are used by `probe`; FFmpeg cannot decode
animated WebP, so its facts come from parsing the RIFF container directly.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from moldbatch.models import FORMATS

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class MediaInfo:
    """Facts about one media file. `duration` is the video's, in seconds."""

    format: str  # "mp4", "gif", "apng", "webp", or FFmpeg's demuxer name
    duration: float
    frames: int
    fps: float
    width: int
    height: int
    has_audio: bool
    sample_rate: int | None
    audio_channels: int | None
    video_codec: str
    audio_codec: str | None = None
    audio_duration: float | None = None  # seconds, as the container states it (edit list applied)


# Timing resolution of the containers without exact frame timing, in seconds: gif delays are
# centiseconds, webp milliseconds, and FFmpeg demuxes apng delays at 1/100000 s per frame.
_TICK = {"gif": Fraction(1, 100), "webp": Fraction(1, 1000)}
_APNG_TICK_PER_FRAME = Fraction(1, 100000)


def _snap_rate(frames: int, duration: Fraction, tolerance: Fraction) -> Fraction:
    """frames/duration, snapped to a whole rate or n*1000/1001 when that rate explains the
    stored duration to within the container's timing resolution `tolerance`."""
    if frames <= 0 or duration <= 0:
        return Fraction(0)
    measured = frames / duration
    candidates = {
        Fraction(round(measured)),
        Fraction(round(measured * Fraction(1001, 1000)) * 1000, 1001),
    }
    best = min(
        (c for c in candidates if c > 0), key=lambda c: abs(frames / c - duration), default=None
    )
    # 1.5 ticks: cumulative timestamp rounding (half a tick) plus the last frame's delay.
    if best is not None and abs(frames / best - duration) <= tolerance * Fraction(3, 2):
        return best
    return measured


def _container_name(demuxer: str) -> str:
    names = demuxer.split(",")
    for short in FORMATS:
        if short in names or demuxer.startswith(short):
            return short
    return demuxer


# --------------------------------------------------------------------------- webp (RIFF)


def _webp_frames(path: Path) -> tuple[int, int, list[int]] | None:
    """(width, height, frame durations in ms) of an animated WebP, or None if the file is
    not one. Layout: 'RIFF' size 'WEBP', then chunks (fourcc, le32 size, payload, pad to
    even); 'VP8X' holds the canvas size, each 'ANMF' one frame with a 24-bit duration."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    width = height = 0
    durations: list[int] = []
    pos, end = 12, min(len(data), 8 + struct.unpack_from("<I", data, 4)[0])
    while pos + 8 <= end:
        fourcc = data[pos : pos + 4]
        size = struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if fourcc == b"VP8X" and size >= 10:
            width = 1 + int.from_bytes(data[body + 4 : body + 7], "little")
            height = 1 + int.from_bytes(data[body + 7 : body + 10], "little")
        elif fourcc == b"ANMF" and size >= 16:
            durations.append(int.from_bytes(data[body + 12 : body + 15], "little"))
        pos = body + size + (size & 1)
    if not durations:
        return None
    return width, height, durations


# --------------------------------------------------------------------------- probe


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """Describe the media file at `path` (mp4, gif, apng, webp, or anything FFmpeg opens).

    `frames` comes from the container's index when it has one (mp4), else from counting
    packets (gif/apng) or WebP animation frames; `fps` is frames / duration.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    webp = _webp_frames(path)
    if webp is not None:
        width, height, durations = webp
        seconds = Fraction(sum(durations), 1000)
        return MediaInfo(
            format="webp",
            duration=float(seconds),
            frames=len(durations),
            fps=float(_snap_rate(len(durations), seconds, _TICK["webp"])),
            width=width,
            height=height,
            has_audio=False,
            sample_rate=None,
            audio_channels=None,
            video_codec="webp",
        )

    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        frames = video.frames or 0
        duration = Fraction(video.duration) * video.time_base if video.duration else None
        if not frames or duration is None:
            # gif/apng carry no frame index: count packets, no decoding needed.
            count, first, last = 0, None, None
            for packet in container.demux(video):
                if packet.size == 0 or packet.pts is None:
                    continue  # the flush packet
                count += 1
                first = packet.pts if first is None else min(first, packet.pts)
                last = max(last or 0, packet.pts + (packet.duration or 0))
            frames = frames or count
            if duration is None and first is not None and last > first:
                duration = Fraction(last - first) * video.time_base
        if not duration and video.average_rate:
            duration = frames / Fraction(video.average_rate)
        duration = duration or Fraction(0)
        fps = frames / duration if duration else Fraction(video.average_rate or 0)
        name = _container_name(container.format.name)
        if name != "mp4" and duration:  # mp4 timing is exact; gif/apng delays are coarse
            fps = _snap_rate(frames, duration, _TICK.get(name, frames * _APNG_TICK_PER_FRAME))
        audio_duration = None
        if audio is not None and audio.duration:
            audio_duration = float(Fraction(audio.duration) * audio.time_base)
        return MediaInfo(
            format=name,
            duration=float(duration),
            frames=frames,
            fps=float(fps),
            width=video.codec_context.width,
            height=video.codec_context.height,
            has_audio=audio is not None,
            sample_rate=audio.codec_context.sample_rate if audio is not None else None,
            audio_channels=audio.codec_context.channels if audio is not None else None,
            video_codec=video.codec_context.name,
            audio_codec=audio.codec_context.name if audio is not None else None,
            audio_duration=audio_duration,
        )


# --------------------------------------------------------------------------- decode


def _read_webp(path: Path) -> np.ndarray:
    # FFmpeg has no animated-WebP decoder; Pillow (a gpu extra like PyAV) does.
    import numpy as np
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])


def read_video(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    """Decode `path` to (frames uint8 [F, H, W, 3], audio float32 [C, S] or None, sample_rate).

    Audio is the first audio stream at its own rate, with the encoder's priming removed
    (FFmpeg applies the mp4 edit list) and trimmed to the duration the container states,
    so AAC's padding of the last frame does not come back as extra samples.
    """
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    if _webp_frames(path) is not None:
        return _read_webp(path), None, None

    import av
    from av.video.reformatter import Interpolation

    decode_flags = (
        Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
    )
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        video = container.streams.video[0]
        video.thread_type = "AUTO"  # frame-threaded h264 decoding
        streams = [video]
        audio = container.streams.audio[0] if container.streams.audio else None
        if audio is not None:
            streams.append(audio)
        images: list[np.ndarray] = []
        sound = _AudioTrack(audio) if audio is not None else None
        for packet in container.demux(streams):
            for frame in packet.decode():
                if packet.stream is video:
                    # Full-resolution chroma interpolation halves the yuv420p round-trip error
                    # against swscale's default (which is built for speed, not fidelity).
                    images.append(frame.to_ndarray(format="rgb24", interpolation=decode_flags))
                else:
                    sound.add(frame)
        if not images:
            raise ValueError(f"{path} has no decodable video frames")
        frames = np.stack(images)
        if sound is None:
            return frames, None, None
        return frames, sound.samples(), sound.rate


def read_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of `path` (wav, mp3, flac, m4a, an mp4's track, ...) to
    (float32 [C, S], sample_rate), with priming removed and trimmed to the stated duration
    like `read_video`. A file without audio is a ValueError."""

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path} has no audio stream")
        sound = _AudioTrack(container.streams.audio[0])
        for frame in container.decode(sound.stream):
            sound.add(frame)
        samples = sound.samples()
        if not sound.chunks:
            raise ValueError(f"{path} has no decodable audio")
        return samples, sound.rate


class _AudioTrack:
    """A stream's decoded audio as planar float32 [C, S], trimmed to its stated duration (the
    last AAC frame is padded past it)."""

    def __init__(self, stream):
        self.stream = stream
        self.rate = stream.codec_context.sample_rate
        self.chunks: list = []
        self._resampler = None

    def add(self, frame) -> None:
        import av

        if self._resampler is None:
            # Normalise whatever the decoder gives (s16, fltp, ...) to planar float.
            self._resampler = av.AudioResampler(
                format="fltp", layout=frame.layout, rate=frame.sample_rate
            )
        self.chunks.extend(f.to_ndarray() for f in self._resampler.resample(frame))

    def samples(self):
        import numpy as np

        if self._resampler is not None:
            self.chunks.extend(f.to_ndarray() for f in self._resampler.resample(None))
            self._resampler = None
        sound = (
            np.concatenate(self.chunks, axis=1).astype(np.float32, copy=False)
            if self.chunks
            else np.zeros((self.stream.codec_context.channels, 0), np.float32)
        )
        if self.stream.duration:
            stated = round(Fraction(self.stream.duration) * self.stream.time_base * self.rate)
            sound = sound[:, :stated]
        return np.ascontiguousarray(sound)
