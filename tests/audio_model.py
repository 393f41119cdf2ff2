"""A tiny LTX-2 whose audio path round-trips, so a test can follow sound across a seam.

`ltx-2-tiny:random`'s audio VAE and vocoder are random: what comes out of a held latent is not
the sound that went in. This runtime keeps the tiny model and swaps the audio path's two ends
for an identity-like pair on the real latent grid (25 latents per second, causal: latent 0 is
the first 10 ms, latent j >= 1 the 40 ms from 10 + 40 (j - 1) ms, so L latents span
(4L - 3) / 100 s as the real audio VAE's do):

- `encode_audio` samples the waveform (its first channel) at 16 points of each latent's
  stretch (every 0.625 ms in latent 0, every 2.5 ms after it): a latent's 16 values ARE the
  sound at those times;
- `decode_audio` draws the waveform through those points (linear between them) at the output
  rate, on both channels.

Decoding a clip and encoding a stretch of it that starts on its 2.5 ms grid gives back the
same points, so a held audio carry decodes to exactly the sound it was cut from (to float
precision). At 25 fps a seam starts a multiple of 8 frames (320 ms) into the clip before, on
that grid. Everything else (the pipeline, the holds, the stitch) is moldbatch's own.
"""

from __future__ import annotations

import numpy as np
import torch

from moldbatch.runtime import Runtime

MODEL = "ltx-2-tiny:random"
POINTS = 16  # values per latent: 4 channels x 4 latent mel bins
FIRST = 0.010  # latent 0: the first mel frame (10 ms)
STEP = 0.040  # every later latent: 4 mel frames


def point_times(length: int) -> np.ndarray:
    """Seconds, from the clip's start, of the `length` latents' sample points, in order."""
    first = np.arange(POINTS) * (FIRST / POINTS)
    later = FIRST + np.arange((length - 1) * POINTS) * (STEP / POINTS)
    return np.concatenate([first, later])


class RoundTripAudio(Runtime):
    """A Runtime with the identity-like audio path described above."""

    def encode_audio(
        self, audio: np.ndarray, sample_rate: int, start: float, length: int
    ) -> torch.Tensor:
        wave = np.asarray(audio, np.float64)[0]
        at = (start + point_times(length)) * sample_rate
        values = np.interp(at, np.arange(wave.shape[0]), wave)
        channels = self.pipe.audio_latent_channels
        bins = POINTS // channels
        latents = torch.from_numpy(values.astype(np.float32)).view(length, channels, bins)
        return latents.permute(1, 0, 2)[None].contiguous()

    def decode_audio(self, audio_latents: torch.Tensor, frames: int, fps: float) -> np.ndarray:
        latents = audio_latents.float().cpu()[0]  # [C, L, M]
        length = latents.shape[1]
        values = latents.permute(1, 0, 2).reshape(-1).numpy().astype(np.float64)
        want = round(frames / fps * self.sample_rate)
        at = np.arange(want) / self.sample_rate
        wave = np.interp(at, point_times(length), values).astype(np.float32)
        return np.ascontiguousarray(np.stack([wave, wave]))


def round_trip_runtime() -> RoundTripAudio:
    return RoundTripAudio(MODEL)
