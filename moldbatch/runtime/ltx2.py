"""The LTX-2 runtime: one object per process holding the loaded models, rendering clip after clip."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moldbatch.errors import RuntimeFeatureError, RuntimeLoadError
from moldbatch.models import FRAME_GRID, MEMORY_TIERS, SIZE_GRID, ModelInfo
from moldbatch.runtime import carry as carry_math
from moldbatch.runtime import sources
from moldbatch.runtime.loading import load_tokenizer
from moldbatch.runtime.lora import reference_downscale_factor
from moldbatch.runtime.memory import MemoryTier
from moldbatch.runtime.pipeline import reference_tiling
from moldbatch.runtime.registry import model_info
from moldbatch.runtime.requests import Carry, ClipRequest, ClipResult
from moldbatch.runtime.sampling import negative_prompt_for, sampling_kwargs, unshifted_schedule
from moldbatch.runtime.text import TextEncoding
from moldbatch.runtime.upscale import Upscaling

log = logging.getLogger(__name__)
COMPILE_BACKEND_ENV = "MOLDBATCH_COMPILE_BACKEND"


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


class Runtime(MemoryTier, TextEncoding, Upscaling):
    """Loaded LTX-2 models for one process; `render_clip` renders one clip at a time.

    Build with `Runtime(model)` or `Runtime.load(model)`. Components are loaded once and
    shared by every clip (and by the latent upsample pipeline): the denoiser in the
    constructor (on first use in the sequential and streamed tiers), the text encoder on the
    first prompt it encodes (runtime/text.py, runtime/memory.py).
    """

    def __init__(
        self,
        model: str,
        device: str | None = None,
        compile: bool = False,
        memory: str = "resident",
    ):
        self.model = model
        self.info: ModelInfo = model_info(model)
        self.device = torch.device(device) if device else default_device()
        # bf16 is what the real checkpoints run in on GPUs; CPUs are slow and exact in float32.
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        if memory not in MEMORY_TIERS:
            raise RuntimeFeatureError(f"memory tier {memory!r}: one of {', '.join(MEMORY_TIERS)}")
        self.memory = memory  # runtime/memory.py: where the models live between stages
        self.tokenizer = load_tokenizer(self.info)
        self._upsamplers: dict[str, Any] = {}  # role -> upsampler model
        self._in_context: Any | None = None  # the IC-LoRA pipeline, sharing the components
        self.compiled = compile
        self.load_seconds = 0.0
        self.clips_rendered = 0
        if memory == "resident":
            self._load_denoiser()  # else on first use, after the text phase

    def _compile(self, pipe: Any) -> None:
        # in place (the pipeline keeps its module): compiled on the first clip of a shape,
        # reused by every later one of that shape; MOLDBATCH_COMPILE_BACKEND picks the
        # backend (inductor; "eager" compiles the graph without generating code)
        backend = os.environ.get(COMPILE_BACKEND_ENV, "inductor")
        pipe.transformer.compile(backend=backend, dynamic=False)

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
        frames: np.ndarray,
        audio: np.ndarray | None = None,
        sample_rate: int | None = None,
        *,
        tail_frames: int,
        fps: float,
    ) -> Carry | None:
        """The carry for the next clip of a chain from the previous clip's decoded frames (at
        the next clip's render size and rate) and sound: its last `tail_frames` frames and
        `tail_frames / fps` seconds, encoded again (see `carry.carry_from`)."""
        return carry_math.carry_from(
            self, frames, audio, sample_rate, tail_frames=tail_frames, fps=fps
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
        sampling = sampling_kwargs(self.info, req)
        total = len(sampling["sigmas"]) if sampling.get("sigmas") is not None else req.steps
        absolute = (
            unshifted_schedule(pipe) if sampling["sigmas"] is not None else contextlib.nullcontext()
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
                **self.prompt_kwargs(
                    req.prompt,
                    negative_prompt_for(self.info, req),
                    req.prompt_embeds,
                    req.negative_prompt_embeds,
                    guided=_guided(sampling),
                ),
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
                max_sequence_length=self.info.max_sequence_length,
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
        # (a copy only of frames it may not share: a clip's, held read-only while committed)
        x = torch.from_numpy(np.require(frames, requirements="CW")).permute(3, 0, 1, 2)[None]
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

    def close(self) -> None:
        """Drop adapters and free device memory (the object is unusable afterwards)."""
        if self.denoiser_loaded:
            self._loras.unload()
        self.release_text_encoder()
        self.pipe = None
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


def _guided(sampling: dict[str, Any]) -> bool:
    """Whether a pipeline call with these settings runs classifier-free guidance (diffusers'
    `do_classifier_free_guidance`, with its defaults), so that it reads a negative prompt."""
    audio = sampling.get("audio_guidance_scale", 7.0)
    return sampling.get("guidance_scale", 3.0) > 1.0 or (audio is not None and audio > 1.0)


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
