"""The second half of the runtime: latent upsampling (spatial, temporal) and the refine pass
at the new size that follows a spatial one, as the two-stage reference pipelines run them.
`Runtime` (ltx2.py) has these methods through `Upscaling`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moldbatch.errors import RuntimeFeatureError
from moldbatch.models import FRAME_GRID, SIZE_GRID
from moldbatch.runtime.loading import load_latent_upsampler
from moldbatch.runtime.lora import DISTILLED_LORA
from moldbatch.runtime.requests import ClipRequest, ClipResult, Lora, Refine
from moldbatch.runtime.sampling import plain_guidance, unshifted_schedule

log = logging.getLogger(__name__)


class Upscaling:
    """Methods of `Runtime` (which holds `pipe`, `info`, `device`, `dtype`)."""

    def upsampler(self, role: str) -> Any:
        """The latent upsampler for `role` ("spatial-x2", "spatial-x1.5", "temporal-x2"),
        loaded on first use and kept."""
        if role not in self._upsamplers:
            self._upsamplers[role] = load_latent_upsampler(self.info, role, self.device, self.dtype)
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

        from moldbatch.runtime.requests import REFINE_AUDIO

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
        if not self.info.distilled:
            loras.append(Lora(DISTILLED_LORA, 1.0))
        self._loras.apply(loras)
        conditions, keyframe_frames = self._conditions(req)
        sampling = {**plain_guidance(self.info, 1.0), "sigmas": sigmas}
        held_audio, held_frames = None, None
        if hold:
            held_audio, held_frames = given, list(range(audio_shape[2]))
        elif carry is not None and carry.audio is not None and given is not None:
            held_audio = carry.audio.float().cpu()
            held_frames = list(range(held_audio.shape[2]))
        with (
            unshifted_schedule(pipe),
            pipe.conditioned(
                carry_video=None if carry is None else carry.video.float().to(self.device),
                carry_audio=None if held_audio is None else held_audio.to(self.device),
                keyframe_pixel_frames=keyframe_frames,
                audio_frames=held_frames,
            ),
        ):
            video, audio = pipe(
                conditions=conditions or None,
                # guidance 1: no negative prompt is read
                **self.prompt_kwargs(refine.prompt, None, refine.prompt_embeds),
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
                max_sequence_length=self.info.max_sequence_length,
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


def _center_crop(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Frames [F, H, W, 3] cropped about the centre to at most height x width."""
    top = max(0, (frames.shape[1] - height) // 2)
    left = max(0, (frames.shape[2] - width) // 2)
    return np.ascontiguousarray(frames[:, top : top + height, left : left + width])


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
