"""Turning given media into what the pipeline holds: audio to log-mel features, source frames
to the render size, and retake windows to the latent frames that are regenerated.

Log-mel features are what the LTX-2 audio VAE encodes: the magnitude STFT (Hann window of
`n_fft` samples, hop `mel_hop_length`, centred with reflect padding) projected on a Slaney-scale,
Slaney-normalised mel filter bank from 0 Hz to Nyquist, then `log(max(x, 1e-5))`, laid out as
[batch, channels (stereo), mel frames, mel bins]. The filter bank is computed here (no
torchaudio); the values follow the usual definitions of the Slaney mel scale.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# The STFT size of LTX-2's audio preprocessing (16 kHz audio: a 64 ms window).
MEL_N_FFT = 1024
_LOG_FLOOR = 1e-5
_EPS = 1e-9


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    mel = hz / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    above = hz >= min_log_hz
    mel[above] = min_log_mel + np.log(hz[above] / min_log_hz) / logstep
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3
    hz = mel * f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    above = mel >= min_log_mel
    hz[above] = min_log_hz * np.exp(logstep * (mel[above] - min_log_mel))
    return hz


def mel_filter_bank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular Slaney filters, area-normalised: [n_fft // 2 + 1, n_mels], 0 Hz to Nyquist."""
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(
        np.linspace(
            _hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([sample_rate / 2]))[0], n_mels + 2
        )
    )
    widths = np.diff(edges)
    slopes = edges[None, :] - bins[:, None]  # [bins, n_mels + 2]
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    bank = np.maximum(0.0, np.minimum(rising, falling))
    bank *= (2.0 / (edges[2:] - edges[:-2]))[None, :]
    return bank.astype(np.float32)


def stereo(audio: np.ndarray) -> np.ndarray:
    """float32 [C, S] -> [2, S]: mono is duplicated, channels past the second are dropped."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.shape[0] == 1:
        audio = np.concatenate([audio, audio])
    return np.ascontiguousarray(audio[:2])


def cut(audio: np.ndarray, start: int, length: int) -> np.ndarray:
    """`length` samples of [C, S] audio from sample `start`, padded with silence where it ends."""
    out = np.zeros((audio.shape[0], length), np.float32)
    piece = audio[:, max(0, start) : max(0, start) + length]
    out[:, : piece.shape[1]] = piece
    return out


def log_mel(
    audio: np.ndarray, sample_rate: int, hop: int, n_mels: int, n_fft: int = MEL_N_FFT
) -> torch.Tensor:
    """float32 [C, S] waveform at `sample_rate` -> log-mel [1, C, S // hop + 1, n_mels]."""
    wave = torch.from_numpy(np.require(audio, np.float32, "CW"))  # (a copy of a read-only clip's)
    pad = n_fft // 2
    if wave.shape[1] <= pad:  # reflect padding needs more samples than it pads
        wave = torch.nn.functional.pad(wave, (0, pad + 1 - wave.shape[1]))
    spec = torch.stft(
        wave,
        n_fft=n_fft,
        hop_length=hop,
        win_length=n_fft,
        window=torch.hann_window(n_fft),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    ).abs()  # [C, bins, T]
    bank = torch.from_numpy(mel_filter_bank(sample_rate, n_fft, n_mels))
    mel = torch.einsum("cbt,bm->ctm", spec, bank)
    return torch.log(mel.clamp(min=_LOG_FLOOR))[None]


def fit_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [F, H, W, 3] -> [F, height, width, 3]: cover-resize and center-crop. The resize is
    plain bilinear, without antialiasing, as the reference's retake resizes its source."""
    f, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames
    scale = max(width / w, height / h)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    x = torch.from_numpy(np.require(frames, requirements="CW")).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(
        x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False
    )
    top, left = (new_h - height) // 2, (new_w - width) // 2
    x = x[:, :, top : top + height, left : left + width]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def retake_pixel_window(
    window: tuple[float, float], fps: float, frames: int
) -> tuple[int, int] | None:
    """Clip frames floor(start * fps) .. ceil(end * fps) - 1 (inclusive) of a retake window in
    clip-local seconds, clipped to the clip; None when the window misses the clip."""
    first = math.floor(window[0] * fps + _EPS)
    last = math.ceil(window[1] * fps - _EPS) - 1
    first, last = max(first, 0), min(last, frames - 1)
    return (first, last) if first <= last else None


def kept_frames(pixels: tuple[int, int] | None, frames: int) -> np.ndarray:
    """Boolean mask over a clip's `frames`: True outside the retake window `pixels` (first,
    last, inclusive; None keeps every frame), the frames a retake shows from its source."""
    keep = np.ones(frames, dtype=bool)
    if pixels is not None:
        keep[pixels[0] : pixels[1] + 1] = False
    return keep


def regenerated_latent_frames(pixels: tuple[int, int] | None, latent_frames: int) -> list[int]:
    """Latent frames touching pixel frames first..last (latent 0 is pixel 0, latent j >= 1 is
    pixels 8j-7..8j): every latent frame holding a pixel of the window is regenerated."""
    if pixels is None:
        return []
    lo, hi = (-(-p // 8) for p in pixels)
    return list(range(lo, min(hi, latent_frames - 1) + 1))


def regenerated_audio_latents(
    seconds: tuple[float, float] | None, latents_per_second: float, length: int
) -> list[int]:
    """Audio latents whose stretch of time meets [start, end) seconds, and no others: the
    reference's TemporalRegionMask (ltx-core `conditioning/types/noise_mask_cond.py:24-42`
    with the audio patchifier's causal bounds). Latent j stands for mel frames 4j-3 .. 4j,
    i.e. [max(j - 0.75, 0) / rate, (j + 0.25) / rate) seconds; it is regenerated when that
    meets the window: j > start * rate - 0.25 and (j < end * rate + 0.75 or j == 0)."""
    if seconds is None:
        return []
    start, end = seconds[0] * latents_per_second, seconds[1] * latents_per_second
    lo = math.floor(start - 0.25 + _EPS) + 1  # first j with j + 0.25 > start
    hi = math.ceil(end + 0.75 - _EPS) - 1  # last j with j - 0.75 < end
    return list(range(max(lo, 0), min(hi, length - 1) + 1))
