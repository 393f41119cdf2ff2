"""Write frames (and audio) to mp4 / gif / apng / webp with PyAV, atomically.

PyAV is imported lazily so that importing moldbatch.media works without the gpu extras.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moldbatch.fsio import fsync_dir, fsync_file
from moldbatch.media.timing import fps_fraction, samples_for_frames
from moldbatch.models import FORMATS, SUFFIXES, format_of

if TYPE_CHECKING:
    import av.container

_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 8: "7.1"}
# x264's threads: the bytes depend on the count, so it is fixed (MOLDBATCH_X264_THREADS only for
# benchmarks that share the cores out by hand)
X264_THREADS = int(os.environ.get("MOLDBATCH_X264_THREADS", "4"))
_MBTREE_MIN_SIZE = 256
_AAC_FRAME = 1024  # AAC-LC always codes 1024 samples per frame
_WEBP_QUALITY = 90

FramesLike = np.ndarray | Sequence[np.ndarray]


def _format_for(path: Path, format: str | None) -> str:
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        return format
    fmt = format_of(path.name)
    if fmt is None:
        raise ValueError(
            f"cannot tell the format of {path.name!r} from its suffix; use one of "
            f"{sorted(SUFFIXES)} or pass format= one of {FORMATS}"
        )
    return fmt


def _frame_count_and_size(frames: FramesLike) -> tuple[int, int, int]:
    """(count, height, width) from an array [F, H, W, 3] or the first of a list of [H, W, 3]."""
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}"
            )
        count, h, w = frames.shape[:3]
    else:
        count = len(frames)
        if count:
            first = np.asarray(frames[0])
            if first.ndim != 3:
                raise ValueError(f"frame 0 must be [H, W, 3], got {first.shape}")
            h, w = first.shape[:2]
    if count == 0:
        raise ValueError("no frames to write")
    if h < 1 or w < 1:
        raise ValueError(f"frames have an empty size {w}x{h}")
    return count, h, w


def _frames(frames: FramesLike, h: int, w: int, pad_h: int, pad_w: int) -> Iterator[np.ndarray]:
    """Yield each frame as uint8 [H+pad_h, W+pad_w, 3], checking shape lazily (a list may
    hold a bad frame anywhere) and edge-padding to even dimensions when asked."""
    for i, img in enumerate(frames):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.shape != (h, w, 3):
            raise ValueError(
                f"frame {i} must be uint8 [{h}, {w}, 3] like frame 0, got "
                f"{getattr(img, 'dtype', type(img))} {getattr(img, 'shape', '')}"
            )
        if pad_h or pad_w:
            # Replicating the edge row/column is invisible at the border, unlike black.
            img = np.pad(img, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        yield img


def _layout(channels: int) -> str:
    try:
        return _LAYOUTS[channels]
    except KeyError:
        raise ValueError(f"unsupported audio channel count {channels}") from None


def resample_audio(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample float32 [C, S] audio with libswresample; the result has exactly
    round(S * to_rate / from_rate) samples."""
    import av

    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if from_rate == to_rate:
        return audio
    want = (audio.shape[1] * to_rate * 2 + from_rate) // (2 * from_rate)
    layout = _layout(audio.shape[0])
    src = av.AudioFrame.from_ndarray(audio, format="fltp", layout=layout)
    src.sample_rate = from_rate
    src.pts = 0
    src.time_base = Fraction(1, from_rate)
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=to_rate)
    chunks = [f.to_ndarray() for f in resampler.resample(src)]
    chunks += [f.to_ndarray() for f in resampler.resample(None)]  # flush the filter delay
    out = np.concatenate(chunks, axis=1) if chunks else np.zeros((audio.shape[0], 0), np.float32)
    if out.shape[1] >= want:
        return np.ascontiguousarray(out[:, :want])
    return np.pad(out, ((0, 0), (0, want - out.shape[1])))


def _aac_rate(sample_rate: int) -> int:
    """The rate the AAC encoder will code at: `sample_rate` if it accepts it, else the
    nearest accepted rate above (so nothing is lost), else the highest."""
    import av

    rates = sorted(av.codec.Codec("aac", "w").audio_rates or (48000,))
    if sample_rate in rates:
        return sample_rate
    return next((r for r in rates if r > sample_rate), rates[-1])


def _prepare_audio(
    audio: Any, sample_rate: int | None, frames: int, rate: Fraction
) -> tuple[np.ndarray, int]:
    """Validate audio, resample it to a rate AAC accepts, and fit it to the video's exact
    duration: the mp4's audio and video durations must match (trailing silence or trim)."""
    if not isinstance(audio, np.ndarray) or audio.ndim != 2 or audio.shape[0] < 1:
        raise ValueError(
            f"audio must be float [channels, samples], got {getattr(audio, 'shape', type(audio))}"
        )
    if audio.shape[0] not in _LAYOUTS:
        raise ValueError(f"unsupported audio channel count {audio.shape[0]}")
    if not sample_rate or sample_rate <= 0:
        raise ValueError("sample_rate is required (and positive) when audio is given")
    audio = np.asarray(audio, dtype=np.float32)
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite samples")
    coded_rate = _aac_rate(int(sample_rate))
    if coded_rate != sample_rate:
        audio = resample_audio(audio, int(sample_rate), coded_rate)
    want = samples_for_frames(frames, rate, coded_rate)
    if audio.shape[1] >= want:
        audio = audio[:, :want]
    else:
        audio = np.pad(audio, ((0, 0), (0, want - audio.shape[1])))
    return np.ascontiguousarray(audio), coded_rate


# --------------------------------------------------------------------------- encoders


def _encode_mp4(
    out: av.container.OutputContainer,
    frames: FramesLike,
    h: int,
    w: int,
    rate: Fraction,
    crf: int,
    preset: str,
    audio: np.ndarray | None,
    audio_rate: int | None,
    audio_bitrate: int,
) -> None:
    import av
    from av.video.reformatter import (
        ColorPrimaries,
        ColorRange,
        Colorspace,
        ColorTrc,
        VideoReformatter,
    )

    pad_h, pad_w = h % 2, w % 2  # yuv420p subsamples chroma 2x2: both sides must be even
    video = out.add_stream("libx264", rate=rate)
    video.width, video.height = w + pad_w, h + pad_h
    video.pix_fmt = "yuv420p"
    video.time_base = 1 / rate
    video.options = {"crf": str(crf), "preset": preset}
    if min(w, h) < _MBTREE_MIN_SIZE:
        # x264's macroblock-tree rate control does not repeat itself on frames this small
        # (seen at 64x64: the same frames encoded to different bytes run to run); renders must.
        video.options = {**video.options, "x264-params": "no-mbtree=1"}
    cc = video.codec_context
    # A fixed thread count: x264 output depends on it, and "auto" follows the CPUs this
    # process may use, so the same frames would encode differently on another machine or
    # under another CPU affinity (a Ray worker, a container). Encoding costs little next to
    # rendering.
    cc.thread_count = X264_THREADS
    cc.thread_type = "AUTO"
    # Tag what we convert with, so players do not guess BT.601 for small frames.
    cc.colorspace, cc.color_range = Colorspace.ITU709, ColorRange.MPEG
    cc.color_primaries, cc.color_trc = ColorPrimaries.BT709, ColorTrc.BT709

    track = _AacTrack(out, audio, audio_rate, audio_bitrate) if audio is not None else None
    reformatter = VideoReformatter()  # one instance keeps its swscale context across frames
    for i, img in enumerate(_frames(frames, h, w, pad_h, pad_w)):
        # from_numpy_buffer wraps the array without copying; reformat makes the yuv copy.
        rgb = av.VideoFrame.from_numpy_buffer(img, format="rgb24")
        yuv = reformatter.reformat(
            rgb,
            format="yuv420p",
            dst_colorspace=Colorspace.ITU709,
            dst_color_range=ColorRange.MPEG,
            dst_color_trc=ColorTrc.BT709,
            dst_color_primaries=ColorPrimaries.BT709,
        )
        yuv.pts = i
        yuv.time_base = 1 / rate  # the codec's; the muxer may retime the stream (mp4: 1/12288)
        out.mux(video.encode(yuv))
        if track is not None:
            # Interleave audio as we go so the muxer never buffers the whole track.
            track.push(samples_for_frames(i + 1, rate, audio_rate))
    out.mux(video.encode(None))
    if track is not None:
        track.finish()


class _AacTrack:
    """An mp4's AAC track, fed in order: `push(upto)` encodes the samples before `upto` in
    whole AAC frames (1024 samples), `finish()` the rest and flushes."""

    def __init__(self, out, audio: np.ndarray, rate: int, bitrate: int):
        self.out, self.audio, self.rate = out, audio, rate
        self.layout = _layout(audio.shape[0])
        self.stream = out.add_stream("aac", rate=rate, layout=self.layout)
        self.stream.bit_rate = bitrate
        self.stream.time_base = Fraction(1, rate)
        self.sent = 0  # samples handed to the encoder so far

    def push(self, upto: int, final: bool = False) -> None:
        import av

        while self.sent < upto and (final or upto - self.sent >= _AAC_FRAME):
            n = min(_AAC_FRAME, upto - self.sent)
            chunk = self.audio[:, self.sent : self.sent + n]
            af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self.layout)
            af.sample_rate, af.pts, af.time_base = self.rate, self.sent, Fraction(1, self.rate)
            self.out.mux(self.stream.encode(af))
            self.sent += n

    def finish(self) -> None:
        self.push(self.audio.shape[1], final=True)  # only the last frame may be shorter
        self.out.mux(self.stream.encode(None))


def _encode_gif(
    out: av.container.OutputContainer, frames: FramesLike, h: int, w: int, rate: Fraction
) -> None:
    import av
    import av.filter

    stream = out.add_stream("gif", rate=rate)
    stream.width, stream.height, stream.pix_fmt = w, h, "pal8"
    stream.time_base = 1 / rate
    # palettegen builds one palette from every frame, paletteuse maps (and dithers) the frames
    # onto it: far better than swscale's fixed 3-3-2 palette. split feeds both branches.
    graph = av.filter.Graph()
    src = graph.add_buffer(width=w, height=h, format="rgb24", time_base=1 / rate)
    split = graph.add("split")
    palettegen = graph.add("palettegen", "stats_mode=full")
    paletteuse = graph.add("paletteuse", "dither=sierra2_4a")
    sink = graph.add("buffersink")
    src.link_to(split)
    split.link_to(palettegen, 0, 0)
    split.link_to(paletteuse, 1, 0)
    palettegen.link_to(paletteuse, 0, 1)
    paletteuse.link_to(sink)
    graph.configure()

    def drain() -> None:
        while True:
            try:
                frame = sink.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return
            out.mux(stream.encode(frame))

    for i, img in enumerate(_frames(frames, h, w, 0, 0)):
        rgb = av.VideoFrame.from_numpy_buffer(img, format="rgb24")
        rgb.pts, rgb.time_base = i, 1 / rate
        src.push(rgb)
        drain()
    src.push(None)
    drain()
    out.mux(stream.encode(None))


def _encode_simple(
    out: av.container.OutputContainer,
    frames: FramesLike,
    h: int,
    w: int,
    rate: Fraction,
    codec: str,
    pix_fmt: str,
    options: dict[str, str],
) -> None:
    import av

    stream = out.add_stream(codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
    stream.time_base = 1 / rate
    stream.options = options
    for i, img in enumerate(_frames(frames, h, w, 0, 0)):
        frame = av.VideoFrame.from_numpy_buffer(img, format="rgb24")
        frame.pts, frame.time_base = i, 1 / rate
        out.mux(stream.encode(frame))  # PyAV converts to the codec's pix_fmt if needed
    out.mux(stream.encode(None))


def _mp4_timescale(rate: Fraction) -> int:
    """The timescale the mp4 muxer gives a video track with time base 1/rate (its
    denominator, doubled until >= 10000). Using it as the movie timescale too makes the
    edit list, and so the stated duration, exact instead of rounded to the default 1 ms."""
    scale = rate.numerator
    while scale < 10000:
        scale *= 2
    return scale


# --------------------------------------------------------------------------- atomic write


def _mp4_options(rate: Fraction) -> dict[str, str]:
    return {"movflags": "+faststart", "movie_timescale": str(_mp4_timescale(rate))}


@contextlib.contextmanager
def _written_atomically(path: Path) -> Iterator[Path]:
    """A hidden temporary beside `path` (no media suffix, so nothing globbing for *.mp4 picks
    up a partial file), fsynced and renamed onto it when the block ends well, removed when it
    does not (an existing file at `path` is untouched)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    # Make the rename itself durable; not every filesystem lets a directory be fsynced.
    with contextlib.suppress(OSError):
        fsync_dir(path.parent)


@contextlib.contextmanager
def _container(tmp: Path, fmt: str, options: dict[str, str]):
    """An output container of `fmt` (each format is its muxer, named, not guessed from the
    name), closed at the end: the trailer (and the faststart rewrite) is written then."""
    import av

    out = av.open(str(tmp), "w", format=fmt, options=options)
    try:
        yield out
    except BaseException:
        with contextlib.suppress(Exception):
            out.close()
        raise
    out.close()


def write_video(
    path: str | os.PathLike[str],
    frames: FramesLike,
    fps: float | Fraction,
    *,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    format: str | None = None,
    crf: int = 18,
    preset: str = "medium",
    audio_bitrate: int = 192_000,
) -> Path:
    """Encode `frames` (uint8 [F, H, W, 3], or a sequence of [H, W, 3]) to `path`, atomically.

    Formats (`format`, else from the suffix): ``mp4`` (.mp4: H.264 yuv420p BT.709 at `crf` /
    `preset`, +faststart, plus an AAC track when `audio` float32 [C, S] and `sample_rate`
    are given), ``gif`` (.gif: one global palette), ``apng`` (.png / .apng: lossless) and
    ``webp`` (.webp: animated, lossy quality 90, lossless when crf == 0). gif, apng and
    webp are silent: passing audio is a ValueError.

    `fps` is made an exact Fraction (23.976 -> 24000/1001). In mp4 the audio is trimmed or
    padded with silence to the video's exact duration, and resampled first if the AAC
    encoder does not take `sample_rate`. Odd widths/heights are edge-padded by one pixel
    to even for mp4 (yuv420p needs even sizes), so such an mp4 is one pixel larger.

    The file is encoded to a hidden temporary next to `path`, fsynced, and renamed onto it;
    on any error the temporary is removed and an existing file at `path` is untouched.
    Returns `path` as a Path.
    """
    path = Path(path)
    fmt = _format_for(path, format)
    count, h, w = _frame_count_and_size(frames)
    rate = fps_fraction(fps)
    if not 0 <= crf <= 51:
        raise ValueError(f"crf must be in 0..51, got {crf}")
    if audio is not None and fmt != "mp4":
        raise ValueError(f"{fmt} is a silent format; audio can only be written to mp4")
    audio_rate: int | None = None
    if audio is not None:
        audio, audio_rate = _prepare_audio(audio, sample_rate, count, rate)

    options = _mp4_options(rate) if fmt == "mp4" else {}
    with _written_atomically(path) as tmp, _container(tmp, fmt, options) as out:
        if fmt == "mp4":
            _encode_mp4(out, frames, h, w, rate, crf, preset, audio, audio_rate, audio_bitrate)
        elif fmt == "gif":
            _encode_gif(out, frames, h, w, rate)
        elif fmt == "apng":
            _encode_simple(out, frames, h, w, rate, "apng", "rgb24", {})
        else:
            opts = (
                {"lossless": "1"} if crf == 0 else {"lossless": "0", "quality": str(_WEBP_QUALITY)}
            )
            # bgra lets libwebp do its own (sharper) RGB->YUV conversion, and allows lossless.
            _encode_simple(out, frames, h, w, rate, "libwebp_anim", "bgra", opts)
    return path


class CannotRemux(ValueError):
    """The parts' video streams cannot be joined as they are (another codec, size, or coding
    parameters): encode the frames instead."""


def remux_mp4(
    path: str | os.PathLike[str],
    parts: Sequence[str | os.PathLike[str]],
    fps: float | Fraction,
    *,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    audio_bitrate: int = 192_000,
) -> Path:
    """Join mp4 files' video into one mp4 without encoding it again, atomically: each part's
    H.264 packets are copied, shifted to start where the one before ends, so the film's frames
    are the parts' own, bit for bit. `audio` (float32 [C, S] at `sample_rate`), when given, is
    encoded as the film's one AAC track (trimmed or padded to the video's duration, as in
    `write_video`); the parts' own audio is not read.

    CannotRemux, before anything is written, when the parts do not share one H.264 stream's
    coding parameters (size, time base, SPS/PPS): write_video their frames then."""
    import av

    path = Path(path)
    rate = fps_fraction(fps)
    streams, counts = [], []
    for part in parts:
        with av.open(str(part)) as c:
            if not c.streams.video:
                raise CannotRemux(f"{part} has no video")
            v = c.streams.video[0]
            cc = v.codec_context
            streams.append((cc.name, cc.width, cc.height, v.time_base, bytes(cc.extradata or b"")))
            # (the header's count; a file without one is counted packet by packet)
            counts.append(v.frames or sum(1 for p in c.demux(v) if p.dts is not None))
    if not streams or streams[0][0] != "h264" or any(s != streams[0] for s in streams):
        raise CannotRemux("the parts do not share one H.264 stream's parameters")
    time_base = streams[0][3]
    per_frame = 1 / (time_base * rate)  # the stream's ticks a frame
    if per_frame.denominator != 1:
        raise CannotRemux(f"a frame is not a whole number of ticks of {time_base}")
    total = sum(counts)
    track_audio, audio_rate = None, None
    if audio is not None:
        track_audio, audio_rate = _prepare_audio(audio, sample_rate, total, rate)
    with _written_atomically(path) as tmp, _container(tmp, "mp4", _mp4_options(rate)) as out:
        video = None
        track = None
        start = 0  # the film's frame where the part begins
        for part, count in zip(parts, counts, strict=True):
            with av.open(str(part)) as c:
                source = c.streams.video[0]
                if video is None:
                    video = out.add_stream_from_template(source)
                    if track_audio is not None:
                        track = _AacTrack(out, track_audio, audio_rate, audio_bitrate)
                shift = start * int(per_frame)
                for packet in c.demux(source):
                    if packet.dts is None:  # the demuxer's flush marker
                        continue
                    packet.pts += shift
                    packet.dts += shift
                    packet.stream = video
                    out.mux(packet)
            start += count
            if track is not None:  # interleaved: the muxer buffers one part at most
                track.push(samples_for_frames(start, rate, audio_rate))
        if track is not None:
            track.finish()
    return path
