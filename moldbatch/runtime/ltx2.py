"""The LTX-2 runtime: one object per process holding the loaded models, rendering clip after clip."""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moldbatch.errors import RuntimeFeatureError, RuntimeLoadError
from moldbatch.runtime import carry as carry_math
from moldbatch.runtime import sources
from moldbatch.runtime.loading import load, load_latent_upsampler
from moldbatch.runtime.lora import DISTILLED_LORA, LoraSwitch, reference_downscale_factor
from moldbatch.runtime.pipeline import reference_tiling
from moldbatch.runtime.registry import DISTILLED_STEPS, ModelSpec, model_spec
from moldbatch.runtime.types import Carry, ClipRequest, ClipResult, Lora, Refine

log = logging.getLogger(__name__)

FRAME_GRID = 8
SIZE_GRID = 32


def pixel_to_latent_index(frame: int) -> int:
    """Latent frame holding pixel `frame`: 0 -> 0, 1..8 -> 1, 9..16 -> 2, ... i.e. ceil(frame / 8).

    This is the `index` diffusers' LTX2ConditionPipeline takes. The keyframe is still positioned
    at its exact pixel frame (see MoldConditionPipeline), so the rounding only decides which
    latent group it is associated with, never where in time the model sees it.
    """
    if frame < 0:
        raise ValueError(f"keyframe frame must be >= 0, got {frame}")
    return (frame + FRAME_GRID - 1) // FRAME_GRID


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Runtime:
    """Loaded LTX-2 models for one process; `render_clip` renders one clip at a time.

    Build with `Runtime(model)` or `Runtime.load(model)`. Components are loaded once, in the
    constructor, and shared by every clip (and by the latent upsample pipeline).
    """

    def __init__(self, model: str, device: str | None = None):
        self.model = model
        self.spec: ModelSpec = model_spec(model)
        self.device = torch.device(device) if device else default_device()
        # bf16 is what the real checkpoints run in on GPUs; CPUs are slow and exact in float32.
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        started = time.perf_counter()
        loaded = load(self.spec, self.device, self.dtype)
        self.pipe = loaded.pipe
        self._upsamplers: dict[str, Any] = dict(loaded.upsamplers)  # role -> upsampler model
        self._loras = LoraSwitch(self.pipe, self.spec)
        self._in_context: Any | None = None  # the IC-LoRA pipeline, sharing the components
        self.load_seconds = time.perf_counter() - started
        self.clips_rendered = 0
        log.info("loaded %s on %s in %.1f s", model, self.device, self.load_seconds)

    @classmethod
    def load(cls, model: str, device: str | None = None) -> Runtime:
        return cls(model, device)

    # -- facts the executor needs

    @property
    def sample_rate(self) -> int:
        """Sample rate of the decoded audio (the vocoder's output rate)."""
        return int(self.pipe.vocoder.config.output_sampling_rate)

    @property
    def audio_latents_per_second(self) -> float:
        """Audio latent frames per second of clip time (25 for every LTX-2 model)."""
        pipe = self.pipe
        return (
            pipe.audio_sampling_rate
            / pipe.audio_hop_length
            / pipe.audio_vae_temporal_compression_ratio
        )

    def latent_shapes(
        self, frames: int, width: int, height: int, fps: float
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of (video_latents, audio_latents) `render_clip` returns for such a clip."""
        pipe = self.pipe
        video = (
            1,
            pipe.transformer.config.in_channels,
            carry_math.video_latent_frames(frames),
            height // pipe.vae_spatial_compression_ratio,
            width // pipe.vae_spatial_compression_ratio,
        )
        audio = (
            1,
            pipe.audio_latent_channels,
            carry_math.audio_latent_length(frames, fps, self.audio_latents_per_second),
            pipe.audio_mel_bins // pipe.audio_vae_mel_compression_ratio,
        )
        return video, audio

    def carry_from(
        self,
        previous: ClipResult | Any,
        audio_latents: Any | None = None,
        *,
        tail_frames: int,
        frames: int,
        fps: float,
    ) -> Carry | None:
        """`carry.carry_from` with this model's audio latent rate."""
        return carry_math.carry_from(
            previous,
            audio_latents,
            tail_frames=tail_frames,
            frames=frames,
            fps=fps,
            audio_latents_per_second=self.audio_latents_per_second,
        )

    # -- rendering

    def render_clip(
        self, req: ClipRequest, on_step: Callable[[int, int], None] | None = None
    ) -> ClipResult:
        """Render one clip. Same request (and model, device) -> bitwise the same output.

        `on_step(step, total)` is called after each denoising step, step counting 1..total.
        """
        self._check_request(req)
        self._loras.apply(req.loras)
        pipe = self.pipe if req.reference_frames is None else self.in_context_pipe

        conditions, keyframe_frames = self._conditions(req)
        latent_frames = carry_math.video_latent_frames(req.frames)
        audio_frames = carry_math.audio_latent_length(
            req.frames, req.fps, self.audio_latents_per_second
        )
        carry = self._carry(req, latent_frames, audio_frames)

        # Zeros of the wanted length make diffusers generate exactly `audio_frames` latents
        # (pure noise: noise_scale is 1); see carry.audio_latent_length for why not its default.
        audio_init = torch.zeros(
            (
                1,
                pipe.audio_latent_channels,
                audio_frames,
                pipe.audio_mel_bins // pipe.audio_vae_mel_compression_ratio,
            ),
            dtype=torch.float32,
            device=self.device,
        )
        holds = self._holds(req, carry, latent_frames, audio_frames)
        # A CPU generator draws the same noise whatever the device.
        generator = torch.Generator(device="cpu").manual_seed(req.seed)
        sampling = sampling_kwargs(self.spec, req)
        total = len(sampling["sigmas"]) if sampling.get("sigmas") is not None else req.steps
        absolute = (
            _unshifted_schedule(pipe)
            if sampling["sigmas"] is not None
            else contextlib.nullcontext()
        )

        with (
            absolute,
            pipe.conditioned(
                carry_video=holds.video,
                carry_audio=holds.audio,
                keyframe_pixel_frames=keyframe_frames,
                video_frames=holds.video_frames,
                audio_frames=holds.audio_frames,
                # a2vid: the reference's audio guider has default parameters (no negative
                # audio context, no audio STG: `utils/denoisers.py:105-119`)
                audio_guided=not (req.audio_input is not None and not holds.retake),
            ),
        ):
            video_latents, audio_latents = pipe(
                conditions=conditions or None,
                prompt=req.prompt,
                negative_prompt=negative_prompt_for(self.spec, req),
                height=req.height,
                width=req.width,
                num_frames=req.frames,
                frame_rate=req.fps,
                num_inference_steps=req.steps,
                noise_scale=1.0,
                generator=generator,
                audio_latents=audio_init,
                output_type="latent",
                return_dict=False,
                callback_on_step_end=pipe.step_end_callback(on_step, total),
                callback_on_step_end_tensor_inputs=["latents", "audio_latents"],
                max_sequence_length=self.spec.max_sequence_length,
                **self._reference(req),
                **sampling,
            )

        video_latents = video_latents.float().cpu()
        audio_latents = audio_latents.float().cpu()
        frames = self.decode_video(video_latents)
        if holds.source_frames is not None:
            # A retake keeps the source outside its window: those frames are the source's own
            # pixels, not their VAE round trip (their latents were held, so the regenerated
            # frames continue from them).
            keep = sources.kept_frames(holds.pixel_window, req.frames)
            frames[keep] = holds.source_frames[keep]
        audio = None
        if req.audio:
            if holds.output_audio is not None and not holds.retake:
                audio = holds.output_audio  # a2vid: the input itself, in sync with the video
            else:
                audio = self.decode_audio(audio_latents, req.frames, req.fps)
                if holds.output_audio is not None:
                    audio = _splice(
                        audio, holds.output_audio, holds.pixel_window, req.fps, self.sample_rate
                    )
        self.clips_rendered += 1
        return ClipResult(
            video_latents=video_latents,
            audio_latents=audio_latents if req.audio else None,
            frames=frames,
            audio=audio,
            sample_rate=self.sample_rate if req.audio else None,
        )

    @property
    def in_context_pipe(self) -> Any:
        """The IC-LoRA pipeline, built on first use from the same components (no new weights)."""
        if self._in_context is None:
            from moldbatch.runtime.pipeline import MoldInContextPipeline

            wanted = inspect.signature(MoldInContextPipeline.__init__).parameters
            parts = {k: v for k, v in self.pipe.components.items() if k in wanted}
            self._in_context = MoldInContextPipeline(**parts)
            self._in_context.set_progress_bar_config(disable=True)
        return self._in_context

    def _reference(self, req: ClipRequest) -> dict[str, Any]:
        """The in-context pipeline's reference arguments for an IC-LoRA clip (else nothing)."""
        if req.reference_frames is None:
            return {}
        from diffusers.pipelines.ltx2.pipeline_ltx2_ic_lora import LTX2ReferenceCondition
        from PIL import Image

        frames = [Image.fromarray(np.ascontiguousarray(f)) for f in req.reference_frames]
        return {
            "reference_conditions": [LTX2ReferenceCondition(frames, req.reference_strength)],
            "reference_downscale_factor": reference_downscale_factor(req.loras),
        }

    # -- held latents: chain carries, the audio of a2vid, the source outside a retake window

    def _holds(
        self, req: ClipRequest, carry: Carry | None, latent_frames: int, audio_frames: int
    ) -> _Holds:
        """The latents held fixed while the rest of the clip is denoised, and where they go."""
        holds = _Holds(retake=req.retake_window is not None)
        video_shape, audio_shape = self.latent_shapes(req.frames, req.width, req.height, req.fps)
        video = torch.zeros(video_shape)
        video_held = np.zeros(latent_frames, dtype=bool)
        audio = torch.zeros(audio_shape)
        audio_held = np.zeros(audio_frames, dtype=bool)
        if carry is not None:
            k = carry.video.shape[2]
            video[:, :, :k] = carry.video.float().cpu()
            video_held[:k] = True
            if carry.audio is not None:
                n = carry.audio.shape[2]
                audio[:, :, :n] = carry.audio.float().cpu()
                audio_held[:n] = True

        regenerate_audio: list[int] = []
        if holds.retake:
            src = sources.fit_frames(np.asarray(req.source_frames), req.width, req.height)
            if src.shape[0] < req.frames:  # a source shorter than the clip: hold its last frame
                src = np.concatenate([src, np.repeat(src[-1:], req.frames - src.shape[0], 0)])
            holds.source_frames = np.ascontiguousarray(src[: req.frames])
            holds.pixel_window = sources.retake_pixel_window(req.retake_window, req.fps, req.frames)
            regenerate = set(sources.regenerated_latent_frames(holds.pixel_window, latent_frames))
            encoded = self.encode_video(holds.source_frames)
            for j in range(latent_frames):
                if j not in regenerate:
                    video[:, :, j] = encoded[:, :, j]
                    video_held[j] = True
            if holds.pixel_window is not None:
                first, last = holds.pixel_window
                regenerate_audio = sources.regenerated_audio_latents(
                    (first / req.fps, (last + 1) / req.fps),
                    self.audio_latents_per_second,
                    audio_frames,
                )

        if req.audio_input is not None:
            wave = sources.stereo(req.audio_input)
            rate = int(req.audio_input_rate)
            encoded_audio = self.encode_audio(wave, rate, req.audio_input_start, audio_frames)
            skip = set(regenerate_audio)
            for j in range(audio_frames):
                if j not in skip:
                    audio[:, :, j] = encoded_audio[:, :, j]
                    audio_held[j] = True
            holds.output_audio = self._cut_audio(
                wave, rate, req.audio_input_start, req.frames, req.fps
            )

        if video_held.any():
            index = np.flatnonzero(video_held).tolist()
            holds.video = video[:, :, index].to(self.device)
            holds.video_frames = index
        if audio_held.any():
            index = np.flatnonzero(audio_held).tolist()
            holds.audio = audio[:, :, index].to(self.device)
            holds.audio_frames = index
        return holds

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames [F, H, W, 3] (F = 8k+1, H and W the render size) -> raw latents [1, C, F', H', W'] (cpu)."""
        vae = self.pipe.vae
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None]
        x = (x.float() / 127.5 - 1.0).to(device=self.device, dtype=vae.dtype)
        with reference_tiling(vae):  # a video encodes in the reference's tiles
            return vae.encode(x).latent_dist.mode().float().cpu()

    @torch.no_grad()
    def encode_audio(
        self, audio: np.ndarray, sample_rate: int, start: float, length: int
    ) -> torch.Tensor:
        """float32 [C, S] audio -> raw audio latents [1, C', length, M] for the `length` latents
        from `start` seconds: resampled to the audio VAE's rate, log-mel, VAE-encoded (mode)."""
        from moldbatch.media.encode import resample_audio

        pipe = self.pipe
        rate, hop = int(pipe.audio_sampling_rate), int(pipe.audio_hop_length)
        ratio = int(pipe.audio_vae_temporal_compression_ratio)
        wave = resample_audio(sources.stereo(audio), int(sample_rate), rate)
        # `length` causal latents come from ratio * (length - 1) + 1 mel frames, centred every
        # `hop` samples. Cut one latent's worth more (ratio * length * hop samples), so that the
        # last frames' STFT windows see the audio that follows rather than reflect padding (as
        # ltx-core, which encodes the whole clip's audio), and keep the first `length` latents.
        piece = sources.cut(wave, round(start * rate), ratio * length * hop)
        mel = sources.log_mel(piece, rate, hop, int(pipe.audio_mel_bins))
        vae = pipe.audio_vae
        latents = vae.encode(mel.to(device=self.device, dtype=vae.dtype)).latent_dist.mode()
        latents = latents.float().cpu()[:, :, :length]
        if latents.shape[2] < length:
            latents = torch.nn.functional.pad(latents, (0, 0, 0, length - latents.shape[2]))
        return latents

    def _cut_audio(
        self, audio: np.ndarray, sample_rate: int, start: float, frames: int, fps: float
    ) -> np.ndarray:
        """The clip's stretch of `audio` at the output rate: exactly frames / fps long."""
        from moldbatch.media.encode import resample_audio

        out = resample_audio(audio, int(sample_rate), self.sample_rate)
        return sources.cut(
            out, round(start * self.sample_rate), round(frames / fps * self.sample_rate)
        )

    # -- decoding and upscaling

    @torch.no_grad()
    def decode_video(self, video_latents: torch.Tensor) -> np.ndarray:
        """Raw (as returned) video latents [1, C, F', H', W'] -> uint8 frames [F, H, W, 3]."""
        vae = self.pipe.vae
        latents = video_latents.to(device=self.device, dtype=vae.dtype)
        timestep = None
        if vae.config.timestep_conditioning:
            # Decode at timestep 0 with no added noise, diffusers' default decode settings.
            timestep = torch.zeros(latents.shape[0], device=self.device, dtype=latents.dtype)
        with reference_tiling(vae):  # the reference's tiles
            video = vae.decode(latents, timestep, return_dict=False)[0]  # [1, 3, F, H, W], [-1, 1]
        video = ((video[0].float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
        return video.permute(1, 2, 3, 0).cpu().numpy()

    @torch.no_grad()
    def decode_audio(self, audio_latents: torch.Tensor, frames: int, fps: float) -> np.ndarray:
        """Raw audio latents [1, C, L, M] -> float32 waveform [channels, samples], exactly frames/fps long."""
        pipe = self.pipe
        latents = audio_latents.to(device=self.device, dtype=pipe.audio_vae.dtype)
        mel = pipe.audio_vae.decode(latents, return_dict=False)[0]
        # the vocoder runs in float32 (loading.finish_pipeline), as the reference's
        wave = pipe.vocoder(mel.to(pipe.vocoder.dtype))[0].float().cpu().numpy()
        want = round(frames / fps * self.sample_rate)
        if wave.shape[1] < want:
            # Does not happen with runtime-made latents (they decode long enough); pad rather than fail.
            log.warning(
                "decoded audio is %d samples short; padding with silence", want - wave.shape[1]
            )
            wave = np.pad(wave, ((0, 0), (0, want - wave.shape[1])))
        return np.ascontiguousarray(wave[:, :want], dtype=np.float32)

    def upsampler(self, role: str) -> Any:
        """The latent upsampler for `role` ("spatial-x2", "spatial-x1.5", "temporal-x2"),
        loaded on first use and kept."""
        if role not in self._upsamplers:
            self._upsamplers[role] = load_latent_upsampler(self.spec, role, self.device, self.dtype)
        return self._upsamplers[role]

    @torch.no_grad()
    def _upsample(self, role: str, video_latents: torch.Tensor) -> torch.Tensor:
        # What LTX2LatentUpsamplePipeline does for raw latents and output_type="latent": the
        # upsampler works on raw (not normalized) VAE latents.
        model = self.upsampler(role)
        latents = video_latents.to(device=self.device, dtype=model.dtype)
        return model(latents).float().cpu()

    def upscale_spatial(self, video_latents: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
        """Raw video latents [1, C, F', H', W'] -> raw latents [1, C, F', H'*scale, W'*scale] (cpu, float32).

        x2 or x1.5 (LTX-2.3 and the tiny model). x1.5 of an odd latent size rounds up
        (3 -> 5), so decode and crop. Only the latent upsampler runs; decode with `decode_video`.
        """
        if scale not in (2.0, 1.5):
            raise RuntimeFeatureError(
                f"spatial x{scale:g} latent upscaling is not supported (x2 and x1.5 only)"
            )
        return self._upsample(f"spatial-x{scale:g}", video_latents)

    def upscale_temporal(self, video_latents: torch.Tensor) -> torch.Tensor:
        """Raw video latents [1, C, F', H', W'] -> [1, C, 2F'-1, H', W']: a clip of 8k+1 frames
        becomes one of 16k+1 (17 -> 33), at twice the frame rate."""
        return self._upsample("temporal-x2", video_latents)

    def refine(
        self,
        video_latents: torch.Tensor,
        refine: Refine,
        *,
        fps: float,
        audio_latents: torch.Tensor | None = None,
        sigmas: list[float] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """Re-denoise upscaled raw video latents from a low noise level: the second stage of
        LTX-2's two-stage recipe. Returns the refined raw video latents (cpu, float32); see
        `refine_with_audio` for the audio, which the refine re-noises and denoises with the
        video unless `refine.audio` is "hold"."""
        return self.refine_with_audio(
            video_latents,
            refine,
            fps=fps,
            audio_latents=audio_latents,
            sigmas=sigmas,
            on_step=on_step,
        )[0]

    def refine_with_audio(
        self,
        video_latents: torch.Tensor,
        refine: Refine,
        *,
        fps: float,
        audio_latents: torch.Tensor | None = None,
        sigmas: list[float] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The refine pass, video and audio: (refined video latents, the clip's audio latents
        after it), both raw, cpu, float32.

        The video is noised to `sigmas[0]` and denoised over `sigmas` (default diffusers'
        STAGE_2_DISTILLED_SIGMA_VALUES, 3 steps: Lightricks' stage 2) without guidance, with
        the clip's prompt, LoRAs and conditioning (`refine`); models that are not distilled
        run it with their distilled LoRA on top. The first pass's `audio_latents` go with it as
        Lightricks' stage 2 takes them (`distilled.py:194-200`, `ti2vid_two_stages.py:234-240`):
        re-noised to the same sigma and denoised with the video, the audio's sigma following
        the step's; with `refine.audio == "hold"` (a2vid, `a2vid_two_stage.py:244-248`) they
        are frozen clean instead, at timestep 0 and the step's sigma. The returned audio is the
        refined one for "refine", the given one for "keep" and "hold". `refine.carry` holds the
        previous clip's refined tail at the start, its audio too. Same inputs -> same output.
        """
        from diffusers.pipelines.ltx2.utils import STAGE_2_DISTILLED_SIGMA_VALUES

        from moldbatch.runtime.types import REFINE_AUDIO

        if refine.audio not in REFINE_AUDIO:
            raise RuntimeFeatureError(
                f"refine audio {refine.audio!r}: expected one of {', '.join(REFINE_AUDIO)}"
            )
        pipe = self.pipe
        sigmas = list(sigmas or STAGE_2_DISTILLED_SIGMA_VALUES)
        _, _, f, h, w = video_latents.shape
        frames = (f - 1) * FRAME_GRID + 1
        _, audio_shape = self.latent_shapes(frames, w * SIZE_GRID, h * SIZE_GRID, fps)
        given = None if audio_latents is None else audio_latents.float().cpu()
        if given is not None:
            audio_shape = tuple(given.shape)
        hold = given is not None and refine.audio == "hold"
        # the first pass's audio, re-noised by the pipeline to sigmas[0] (noise_scale); zeros
        # (so pure noise at that level) when there is none
        audio_init = (given if given is not None else torch.zeros(audio_shape)).to(self.device)
        req = ClipRequest(
            model=self.model,
            prompt=refine.prompt,
            negative_prompt=refine.negative_prompt,
            width=w * SIZE_GRID,
            height=h * SIZE_GRID,
            frames=frames,
            fps=fps,
            seed=refine.seed,
            steps=len(sigmas),
            guidance=1.0,
            image=refine.image,
            image_strength=refine.image_strength,
            keyframes=list(refine.keyframes),
            carry=refine.carry,
        )
        self._check_request(req)
        carry = self._carry(req, f, audio_shape[2])
        loras = list(refine.loras)
        if not self.spec.distilled:
            loras.append(Lora(DISTILLED_LORA, 1.0))
        self._loras.apply(loras)
        conditions, keyframe_frames = self._conditions(req)
        sampling = {**plain_guidance(self.spec, 1.0), "sigmas": sigmas}
        held_audio, held_frames = None, None
        if hold:
            held_audio, held_frames = given, list(range(audio_shape[2]))
        elif carry is not None and carry.audio is not None and given is not None:
            held_audio = carry.audio.float().cpu()
            held_frames = list(range(held_audio.shape[2]))
        with (
            _unshifted_schedule(pipe),
            pipe.conditioned(
                carry_video=None if carry is None else carry.video.float().to(self.device),
                carry_audio=None if held_audio is None else held_audio.to(self.device),
                keyframe_pixel_frames=keyframe_frames,
                audio_frames=held_frames,
            ),
        ):
            video, audio = pipe(
                conditions=conditions or None,
                prompt=refine.prompt,
                negative_prompt=refine.negative_prompt or "",
                height=h * SIZE_GRID,
                width=w * SIZE_GRID,
                num_frames=frames,
                frame_rate=fps,
                num_inference_steps=len(sigmas),
                noise_scale=sigmas[0],
                latents=video_latents.to(device=self.device, dtype=torch.float32),
                audio_latents=audio_init,
                generator=torch.Generator(device="cpu").manual_seed(refine.seed),
                output_type="latent",
                return_dict=False,
                callback_on_step_end=pipe.step_end_callback(on_step, len(sigmas)),
                callback_on_step_end_tensor_inputs=["latents", "audio_latents"],
                max_sequence_length=self.spec.max_sequence_length,
                **sampling,
            )
        if given is None or refine.audio != "refine":
            return video.float().cpu(), given
        return video.float().cpu(), audio.float().cpu()

    def upscale(
        self,
        latents: str | Path | torch.Tensor,
        *,
        spatial: str | float | None = None,
        temporal: str | float | None = None,
        audio: np.ndarray | None = None,
        sample_rate: int | None = None,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        audio_latents: torch.Tensor | None = None,
        refine: Refine | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> ClipResult:
        """Upscale a rendered clip in latent space and decode it.

        The video latents (a tensor, or a safetensors file with a "video" entry, and then its
        "audio" entry when `audio_latents` is not given) go through the spatial latent
        upsampler, are re-denoised by `refine` when given (see `refine_with_audio`: the audio
        latents are denoised with the video, or held for `refine.audio == "hold"`), then go
        through the temporal upsampler and are decoded; the frames are center-cropped to
        `width` x `height` (x1.5 of an odd latent size rounds up).

        `spatial`/`temporal` are "x2"-style names or factors (spatial x2 / x1.5, temporal x2).
        Temporal x2 turns F rendered frames into 2F - 1. The audio passes through (with
        `refine.audio == "refine"` it is the refined audio latents decoded instead), trimmed to
        the new clip's duration: a clip of F frames at fps/2 lasts one output frame longer than
        2F - 1 frames at `fps` (given `fps`, the output rate, it is cut to frames / fps
        exactly).

        The result's `video_latents` are those BEFORE the temporal upsampler (spatially
        upscaled and refined): what the next clip's refine of a chain holds as its carry; its
        `audio_latents` are those of its audio (refined or as given).
        """
        time_factor = _factor(temporal)
        if time_factor not in (None, 1.0, 2.0):
            raise RuntimeFeatureError(f"temporal upscale {temporal} is not supported (x2 only)")
        if isinstance(latents, (str, Path)):
            from safetensors.torch import load_file

            saved = load_file(str(latents))
            latents = saved["video"]
            if audio_latents is None:
                audio_latents = saved.get("audio")
        video = latents.float().cpu()
        rendered = (video.shape[2] - 1) * FRAME_GRID + 1
        scale = _factor(spatial)
        if scale not in (None, 1.0):
            video = self.upscale_spatial(video, scale)
        if refine is not None:
            if fps is None:
                raise RuntimeFeatureError("a refine pass needs the clip's fps")
            # the rate the clip was rendered at: half the output rate before a temporal x2
            render_fps = fps / time_factor if time_factor else fps
            video, refined_audio = self.refine_with_audio(
                video, refine, fps=render_fps, audio_latents=audio_latents, on_step=on_step
            )
            if refine.audio == "refine" and refined_audio is not None:
                # the refined audio is the clip's sound now (distilled, keyframe, IC-LoRA)
                audio_latents = refined_audio
                if audio is not None:
                    audio = self.decode_audio(refined_audio, rendered, render_fps)
                    sample_rate = self.sample_rate
        final = self.upscale_temporal(video) if time_factor == 2.0 else video
        out = self.decode_video(final)
        if width is not None and height is not None:
            out = _center_crop(out, width, height)
        if audio is not None and time_factor == 2.0:
            if fps and sample_rate:
                want = round(out.shape[0] / fps * sample_rate)
            else:
                want = round(audio.shape[1] * out.shape[0] / (2 * rendered))
            audio = np.ascontiguousarray(audio[:, :want])
        return ClipResult(
            video_latents=video,
            audio_latents=audio_latents,
            frames=out,
            audio=audio,
            sample_rate=sample_rate if audio is not None else None,
        )

    def close(self) -> None:
        """Drop adapters and free device memory (the object is unusable afterwards)."""
        self._loras.unload()
        self.pipe = None  # type: ignore[assignment]
        self._in_context = None
        self._upsamplers = {}
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- internals

    def _check_request(self, req: ClipRequest) -> None:
        if req.model != self.model:
            raise RuntimeFeatureError(
                f"this runtime holds {self.model}, but the clip asks for {req.model}"
            )
        if req.frames < 1 or (req.frames - 1) % FRAME_GRID:
            raise RuntimeFeatureError(f"frames must be 8k+1 (9, 17, ..., 97), got {req.frames}")
        if req.width % SIZE_GRID or req.height % SIZE_GRID or req.width <= 0 or req.height <= 0:
            raise RuntimeFeatureError(
                f"width and height must be positive multiples of 32, got {req.width}x{req.height}"
            )
        if req.steps < 1:
            raise RuntimeFeatureError(f"steps must be at least 1, got {req.steps}")
        if req.audio_input is not None and not req.audio_input_rate:
            raise RuntimeFeatureError("audio_input needs audio_input_rate, its sample rate")
        if req.retake_window is not None:
            if req.source_frames is None or len(req.source_frames) == 0:
                raise RuntimeFeatureError(
                    "a retake needs source_frames, the clip to regenerate part of"
                )
            if not req.retake_window[0] < req.retake_window[1]:
                raise RuntimeFeatureError(
                    f"retake window {tuple(req.retake_window)} must end after it starts"
                )
        for frame, *_ in req.keyframes:
            if not 0 <= frame < req.frames:
                raise RuntimeFeatureError(
                    f"keyframe at frame {frame} is outside the clip's {req.frames} frames"
                )

    def _carry(self, req: ClipRequest, latent_frames: int, audio_frames: int) -> Carry | None:
        """The request's carry when it holds anything, checked to fit the clip; else None."""
        carry = req.carry if req.carry is not None and req.carry.tail_frames > 0 else None
        if carry is not None:
            carry_math.check_carry_fits(carry, latent_frames, audio_frames)
            self._check_carry_shape(carry, req)
        return carry

    def _check_carry_shape(self, carry: Carry, req: ClipRequest) -> None:
        video_shape, audio_shape = self.latent_shapes(req.frames, req.width, req.height, req.fps)
        got = tuple(carry.video.shape)
        if got[:2] != video_shape[:2] or got[3:] != video_shape[3:]:
            raise RuntimeFeatureError(
                f"carried video latents {got} do not fit a {req.width}x{req.height} clip "
                f"(expected [1, {video_shape[1]}, k, {video_shape[3]}, {video_shape[4]}]): chained clips must share a size"
            )
        if carry.audio is not None:
            got_a = tuple(carry.audio.shape)
            if got_a[:2] != audio_shape[:2] or got_a[3:] != audio_shape[3:]:
                raise RuntimeFeatureError(
                    f"carried audio latents {got_a} do not fit this model's {audio_shape}"
                )

    def _conditions(self, req: ClipRequest) -> tuple[list[Any], list[int]]:
        """LTX2VideoCondition list for the image (replacing the first latent frame) and the
        keyframes (appended tokens), and the exact pixel frame of each appended one."""
        from diffusers.pipelines.ltx2 import LTX2VideoCondition

        has_carry = req.carry is not None and req.carry.tail_frames > 0
        items: list[tuple[int, Path, float, bool]] = []  # frame, image, strength, a keyframe?
        if req.image is not None:
            items.append((0, Path(req.image), req.image_strength, False))
        items.extend(
            (int(k[0]), Path(k[1]), float(k[2]) if len(k) > 2 else 1.0, True)
            for k in sorted(req.keyframes, key=lambda kv: kv[0])
        )
        conditions: list[Any] = []
        appended_frames: list[int] = []
        for frame, path, strength, keyframe in items:
            index = pixel_to_latent_index(frame)
            if keyframe and index == 0:
                # Only `image` replaces the first latent frame. A keyframe on frame 0 is appended
                # as a guide at that frame, like every other keyframe (as ltx-pipelines' keyframe
                # interpolation does): any latent index above 0 appends it, and the exact pixel
                # frame, 0, positions it (see MoldConditionPipeline).
                index = 1
            if has_carry and index < carry_math.carried_video_latent_frames(req.carry.tail_frames):  # type: ignore[union-attr]
                # The carried latents own the first latent frames of a continuation clip.
                log.warning(
                    "ignoring the image for frame %d: it falls inside the carried tail of the chain",
                    frame,
                )
                continue
            conditions.append(
                LTX2VideoCondition(frames=_load_image(path), index=index, strength=strength)
            )
            if index > 0:
                appended_frames.append(frame)
        return conditions, appended_frames


def plain_guidance(spec: ModelSpec, guidance: float) -> dict[str, Any]:
    """Plain CFG at `guidance` for video and audio: STG and modality isolation each add a
    transformer pass per step, so they stay off (the distilled and refine settings)."""
    return {
        "guidance_scale": guidance,
        "audio_guidance_scale": guidance,
        "stg_scale": 0.0,
        "audio_stg_scale": 0.0,
        "modality_scale": 1.0,
        "audio_modality_scale": 1.0,
        "guidance_rescale": 0.0,
        "audio_guidance_rescale": 0.0,
        "spatio_temporal_guidance_blocks": None,
        # the gates' rule of the reference; the scale/shift half is pipeline.py's (point 4)
        "use_cross_timestep": True,
    }


# LTX-2's reference schedule for guided sampling (ltx-core's default scheduler): a flow shift
# fixed at its 4096-token value, whatever the clip's size, stretched so the last step ends at
# sigma 0.1 before the final jump to 0. diffusers would shift by the clip's own token count
# instead, which for a full-size 97-frame clip leaves about a third of 30 steps above 0.97.
DEV_SHIFT = 2.05
DEV_TERMINAL = 0.1


def dev_sigmas(steps: int) -> list[float]:
    """The `steps` sigmas (the final 0 left implicit) of LTX-2's reference guided schedule."""
    t = np.linspace(1.0, 0.0, steps + 1)[:-1]
    with np.errstate(divide="ignore"):
        shifted = math.exp(DEV_SHIFT) / (math.exp(DEV_SHIFT) + (1.0 / t - 1.0))
    left = 1.0 - shifted
    if steps > 1 and left[-1] > 0:
        shifted = 1.0 - left * (1.0 - DEV_TERMINAL) / left[-1]
    return [float(x) for x in shifted]


def sampling_kwargs(spec: ModelSpec, req: ClipRequest) -> dict[str, Any]:
    """Guidance and schedule settings of a first pass for this model family. A `sigmas` list
    is absolute: the pipeline must not shift it again (see `_unshifted_schedule`)."""
    if spec.family == "tiny":
        return {**plain_guidance(spec, req.guidance), "sigmas": None}
    if spec.distilled:
        # Distilled checkpoints were trained to run without guidance on a fixed 8-step schedule.
        from diffusers.pipelines.ltx2.utils import DISTILLED_SIGMA_VALUES

        fixed = req.steps == DISTILLED_STEPS
        if not fixed:
            # Lightricks' distilled pipeline runs only its 8 sigmas (`utils/constants.py:15`)
            log.warning(
                "%s: %d steps leave the distilled model's 8-sigma schedule (the only one "
                "Lightricks' reference runs); diffusers' default schedule is used",
                spec.name,
                req.steps,
            )
        return {
            **plain_guidance(spec, 1.0),
            "sigmas": list(DISTILLED_SIGMA_VALUES) if fixed else None,
        }
    # Dev models: the request's CFG for video on the reference schedule; diffusers' recommended
    # audio CFG (7), STG, modality-isolation guidance (3) and rescaling (0.7) stay at the
    # pipeline defaults, which are Lightricks' too.
    return {
        "guidance_scale": req.guidance,
        "spatio_temporal_guidance_blocks": list(spec.stg_blocks),
        "use_cross_timestep": True,  # see plain_guidance
        "sigmas": dev_sigmas(req.steps),
    }


def negative_prompt_for(spec: ModelSpec, req: ClipRequest) -> str:
    """The clip's negative prompt; with guidance on (dev models) and none given, Lightricks'
    default one (diffusers' DEFAULT_NEGATIVE_PROMPT), as their pipelines use."""
    if req.negative_prompt or spec.family == "tiny" or spec.distilled:
        return req.negative_prompt
    from diffusers.pipelines.ltx2.utils import DEFAULT_NEGATIVE_PROMPT

    return DEFAULT_NEGATIVE_PROMPT


@dataclass
class _Holds:
    """What `_holds` worked out for one clip (see Runtime._holds)."""

    retake: bool = False
    video: torch.Tensor | None = None  # raw latents of the held frames, in order
    video_frames: list[int] | None = None  # the latent frame each one lands on
    audio: torch.Tensor | None = None
    audio_frames: list[int] | None = None
    source_frames: np.ndarray | None = None  # retake: the source at the render size
    pixel_window: tuple[int, int] | None = None  # retake: first and last regenerated frame
    output_audio: np.ndarray | None = None  # the given audio, cut to the clip, output rate


def _splice(
    generated: np.ndarray,
    source: np.ndarray,
    window: tuple[int, int] | None,
    fps: float,
    sample_rate: int,
) -> np.ndarray:
    """The source audio with the retake window's stretch taken from the generated audio."""
    out = source.copy()
    if window is not None:
        a = round(window[0] / fps * sample_rate)
        b = round((window[1] + 1) / fps * sample_rate)
        channels = min(out.shape[0], generated.shape[0])
        out[:channels, a:b] = generated[:channels, a:b]
    return out


@contextlib.contextmanager
def _unshifted_schedule(pipe: Any) -> Iterator[None]:
    """Within this block the pipeline's scheduler takes given sigmas as they are: the refine
    schedule is absolute, so no resolution-dependent shift may move it."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    kept = pipe.scheduler
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        kept.config, use_dynamic_shifting=False, shift=1.0, shift_terminal=None
    )
    try:
        yield
    finally:
        pipe.scheduler = kept


def _center_crop(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Frames [F, H, W, 3] cropped about the centre to at most height x width."""
    top = max(0, (frames.shape[1] - height) // 2)
    left = max(0, (frames.shape[2] - width) // 2)
    return np.ascontiguousarray(frames[:, top : top + height, left : left + width])


def _load_image(path: Path) -> Any:
    """An RGB PIL image; the pipeline resizes it to cover the render size and center-crops."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise RuntimeLoadError(f"conditioning image not found: {path}") from None
    except OSError as exc:
        raise RuntimeLoadError(f"cannot read conditioning image {path}: {exc}") from exc


def _factor(value: str | float | None) -> float | None:
    """2.0 from "x2", 1.5 from "x1.5" or 1.5; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            return float(value.lower().removeprefix("x"))
        except ValueError:
            raise RuntimeFeatureError(
                f"unknown upscale factor {value!r} (expected e.g. 'x2')"
            ) from None
    return float(value)
