"""diffusers' LTX2ConditionPipeline (and LTX2InContextPipeline, for IC-LoRA), taught two
things moldbatch needs and nothing else. Both pipelines build their token sequence with the same
methods, so one mixin (`HeldLatents`) teaches both.

1. Latent carries. The pipeline already conditions on clean latent tokens: a first-frame
   condition overwrites the first tokens, marks them in `conditioning_mask`, and the denoising
   loop gives them timestep `t * (1 - mask)` (zero) and blends the model's x0 estimate back to
   the clean value at every step. A carry reuses exactly that, with latents handed over
   directly instead of VAE-encoded pixels (`apply_first_frame_conditioning` override).
   The audio half has no such mechanism in diffusers, so it is built from the same two pieces:
   the carried audio tokens get timestep zero (a forward pre-hook on the transformer turns the
   scalar `audio_timestep` into a per-token one, which the transformer accepts as it does for
   video) and are reset to their clean value after every scheduler step (step-end callback).
   Held latents need not be at the start: the same two mechanisms hold any latent frames (the
   whole audio track for audio-to-video, everything outside the window for a retake).
2. Keyframes at their exact pixel frame. diffusers places an appended keyframe at the first
   pixel frame of its latent group; ltx-core positions keyframes by pixel frame, so the exact
   frame is substituted when the positional coordinates are built.

Nothing here changes the sampler: steps, guidance and scheduling are diffusers' own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers.pipelines.ltx2 import LTX2ConditionPipeline, LTX2InContextPipeline


@dataclass
class _CarryState:
    video: torch.Tensor | None  # raw (denormalised) latents [1, C, k, H', W']
    audio: torch.Tensor | None  # raw latents [1, C, K, M]
    # The latent frame (video) / latent step (audio) each held frame lands on, in order.
    video_frames: list[int] | None = None
    audio_frames: list[int] | None = None
    audio_tokens: torch.Tensor | None = None  # packed, normalised: filled in prepare_audio_latents
    audio_index: torch.Tensor | None = None  # token positions of `audio_tokens` in the sequence


class HeldLatents:
    """Latent carries, held latents and exact keyframe positions (see module doc), for an
    LTX-2 pipeline class that builds its sequence as LTX2ConditionPipeline does."""

    _mold_carry: _CarryState | None = None
    _mold_keyframe_frames: list[int] | None = None

    @contextlib.contextmanager
    def conditioned(
        self,
        carry_video: torch.Tensor | None = None,
        carry_audio: torch.Tensor | None = None,
        keyframe_pixel_frames: list[int] | None = None,
        *,
        video_frames: list[int] | None = None,
        audio_frames: list[int] | None = None,
    ) -> Iterator[None]:
        """Within this block, calls hold the given latents fixed and place keyframes exactly.

        `carry_video` [1, C, k, H', W'] and `carry_audio` [1, C, K, M] are raw latents held
        clean while everything else is denoised. By default they are a chain carry and land on
        the first k latent frames / K audio latents; `video_frames` / `audio_frames` name the
        latent frame (audio latent step) each of them lands on instead, in order, so any set of
        frames can be held: a whole audio track (a2vid), everything outside a retake window.
        `keyframe_pixel_frames` lists, in the order of the non-first-frame conditions passed to
        the call, the pixel frame each one stands for.
        """
        state = None
        if carry_video is not None or carry_audio is not None:
            state = _CarryState(carry_video, carry_audio)
            if carry_video is not None:
                state.video_frames = list(
                    range(carry_video.shape[2]) if video_frames is None else video_frames
                )
                if len(state.video_frames) != carry_video.shape[2]:
                    raise ValueError("video_frames must name one latent frame per held frame")
            if carry_audio is not None:
                state.audio_frames = list(
                    range(carry_audio.shape[2]) if audio_frames is None else audio_frames
                )
                if len(state.audio_frames) != carry_audio.shape[2]:
                    raise ValueError("audio_frames must name one latent step per held latent")
        self._mold_carry = state
        self._mold_keyframe_frames = list(keyframe_pixel_frames or [])
        hook = None
        if state is not None and carry_audio is not None:
            hook = self.transformer.register_forward_pre_hook(
                self._audio_timestep_hook, with_kwargs=True
            )
        try:
            yield
        finally:
            if hook is not None:
                hook.remove()
            self._mold_carry = None
            self._mold_keyframe_frames = None

    def step_end_callback(
        self, on_step: Callable[[int, int], None] | None, total: int
    ) -> Callable[..., dict]:
        """A `callback_on_step_end` that re-pins the carried audio and reports progress."""

        def callback(pipe: HeldLatents, i: int, t: Any, tensors: dict[str, Any]) -> dict:
            state = pipe._mold_carry
            if state is not None and state.audio_tokens is not None:
                audio = tensors["audio_latents"]
                # In place: the pipeline keeps using this very tensor for the next step.
                index = state.audio_index.to(audio.device)
                audio[:, index] = state.audio_tokens.to(device=audio.device, dtype=audio.dtype)
            if on_step is not None:
                on_step(i + 1, total)
            return {}

        return callback

    # -- video carry: clean tokens at the start of the sequence, pinned by the conditioning mask

    def apply_first_frame_conditioning(
        self,
        latents: torch.Tensor,
        conditioning_mask: torch.Tensor,
        condition_latents: list[torch.Tensor],
        condition_strengths: list[float],
        condition_indices: list[int],
        latent_height: int,
        latent_width: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latents, conditioning_mask, clean_latents = super().apply_first_frame_conditioning(  # type: ignore[misc]
            latents,
            conditioning_mask,
            condition_latents,
            condition_strengths,
            condition_indices,
            latent_height,
            latent_width,
        )
        state = self._mold_carry
        if state is None or state.video is None:
            return latents, conditioning_mask, clean_latents
        # Carried latents are the previous clip's output: raw, so normalise them the way the
        # pipeline normalises `latents` inputs (and de-normalises its output) before packing.
        carried = state.video.to(device=latents.device, dtype=latents.dtype)
        carried = self._normalize_latents(
            carried, self.vae.latents_mean, self.vae.latents_std, self.vae.config.scaling_factor
        )
        tokens = self._pack_latents(
            carried, self.transformer_spatial_patch_size, self.transformer_temporal_patch_size
        )
        # Tokens are ordered frame-major (F', H', W'): latent frame f owns a run of H'*W' tokens.
        per_frame = tokens.shape[1] // carried.shape[2]
        frames = torch.tensor(state.video_frames, device=latents.device, dtype=torch.long)
        index = (
            frames[:, None] * per_frame + torch.arange(per_frame, device=latents.device)
        ).reshape(-1)
        if int(index.max()) >= latents.shape[1]:
            raise ValueError("held video latents reach past the end of the clip")
        latents[:, index] = tokens
        conditioning_mask[:, index] = 1.0
        clean_latents[:, index] = tokens
        return latents, conditioning_mask, clean_latents

    # -- audio carry: clean tokens at the start, timestep zero, re-pinned after each step

    def prepare_audio_latents(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        latents = super().prepare_audio_latents(*args, **kwargs)
        state = self._mold_carry
        if state is None or state.audio is None:
            return latents
        carried = state.audio.to(device=latents.device, dtype=latents.dtype)
        tokens = self._pack_audio_latents(carried)
        tokens = self._normalize_audio_latents(
            tokens, self.audio_vae.latents_mean, self.audio_vae.latents_std
        )
        index = torch.tensor(state.audio_frames, device=latents.device, dtype=torch.long)
        if int(index.max()) >= latents.shape[1]:
            raise ValueError("held audio latents reach past the end of the clip")
        latents[:, index] = tokens
        state.audio_tokens = tokens
        state.audio_index = index
        return latents

    def _audio_timestep_hook(
        self, module: torch.nn.Module, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict]:
        state = self._mold_carry
        timestep = kwargs.get("audio_timestep")
        audio = kwargs.get("audio_hidden_states")
        if (
            state is None
            or state.audio_tokens is None
            or timestep is None
            or audio is None
            or timestep.ndim != 1
        ):
            return args, kwargs
        per_token = timestep[:, None].expand(audio.shape[0], audio.shape[1]).clone()
        per_token[:, state.audio_index.to(per_token.device)] = 0
        kwargs["audio_timestep"] = per_token
        if len(state.audio_index) >= audio.shape[1] and kwargs.get("audio_sigma") is not None:
            # The whole track is held (audio-to-video): the audio is clean, so its sigma, which
            # drives the audio prompt modulation and the video's cross-attention to the audio
            # on LTX-2.3, is 0 too, as in ltx-pipelines' frozen-modality conditioning.
            kwargs["audio_sigma"] = torch.zeros_like(kwargs["audio_sigma"])
        return args, kwargs

    # -- keyframes at their exact pixel frame

    def _prepare_keyframe_coords(
        self,
        keyframe_latent_num_frames: int,
        keyframe_latent_height: int,
        keyframe_latent_width: int,
        pixel_frame_idx: int,
        num_pixel_frames: int,
        fps: float,
        device: torch.device,
    ) -> torch.Tensor:
        if self._mold_keyframe_frames:
            pixel_frame_idx = self._mold_keyframe_frames.pop(0)
        return super()._prepare_keyframe_coords(
            keyframe_latent_num_frames,
            keyframe_latent_height,
            keyframe_latent_width,
            pixel_frame_idx,
            num_pixel_frames,
            fps,
            device,
        )


class MoldConditionPipeline(HeldLatents, LTX2ConditionPipeline):
    """LTX2ConditionPipeline with latent carries and exact keyframe positions."""

    # The step-end callback needs the audio latents to hold the carried tokens clean.
    _callback_tensor_inputs: ClassVar[list[str]] = [
        *LTX2ConditionPipeline._callback_tensor_inputs,
        "audio_latents",
    ]


class MoldInContextPipeline(HeldLatents, LTX2InContextPipeline):
    """LTX2InContextPipeline (IC-LoRA: reference-video tokens appended to the sequence) with
    the same carries and keyframe positions, so IC-LoRA shots chain like any other."""

    _callback_tensor_inputs: ClassVar[list[str]] = [
        *LTX2InContextPipeline._callback_tensor_inputs,
        "audio_latents",
    ]
