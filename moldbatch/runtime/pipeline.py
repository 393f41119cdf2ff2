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

3. The reference's per-token x0 (ltx-core `model/transformer/model.py:505-535`, X0Model): a
   velocity becomes x0 with each token's own sigma, sigma * (1 - conditioning mask), for video
   and audio, so held and conditioned tokens come out as their clean value in every guidance pass
   (diffusers uses one scalar sigma; `convert_velocity_to_x0` override).
4. The reference's audio-video cross-attention timesteps (ltx-core
   `model/transformer/transformer_args.py:327-349`, since 203d484): each modality's scale/shift
   modulation takes its own per-token timesteps, only the gate the other modality's sigma
   (forward pre-hooks on the transformer's two cross-attention scale/shift embeddings; the
   gates come from diffusers' `use_cross_timestep=True`, which the runtime always passes).
5. a2vid guidance as the reference's (ltx-pipelines `utils/denoisers.py:105-119` with a default
   audio guider): the unconditional pass keeps the positive audio context and STG perturbs the
   video self-attention only (`conditioned(..., audio_guided=False)`).

Nothing here changes the schedule: steps and sigmas are diffusers' own (or given).
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
    audio_mask: torch.Tensor | None = None  # [1, L, 1]: 1 on held audio tokens, 0 elsewhere


# The transformer's audio-video cross-attention scale/shift embeddings (diffusers' names): the
# reference feeds each its own modality's per-token timesteps.
_CROSS_SCALE_SHIFT = {
    "av_cross_attn_video_scale_shift": "timestep",
    "av_cross_attn_audio_scale_shift": "audio_timestep",
}


class HeldLatents:
    """Latent carries, held latents and exact keyframe positions (see module doc), for an
    LTX-2 pipeline class that builds its sequence as LTX2ConditionPipeline does."""

    _mold_carry: _CarryState | None = None
    _mold_keyframe_frames: list[int] | None = None
    _mold_video_mask: torch.Tensor | None = None  # [B, N, 1] conditioning mask of this call
    _mold_audio_guided: bool = True
    _mold_timesteps: dict[str, torch.Tensor] | None = None  # this forward's per-token timesteps

    @contextlib.contextmanager
    def conditioned(
        self,
        carry_video: torch.Tensor | None = None,
        carry_audio: torch.Tensor | None = None,
        keyframe_pixel_frames: list[int] | None = None,
        *,
        video_frames: list[int] | None = None,
        audio_frames: list[int] | None = None,
        audio_guided: bool = True,
    ) -> Iterator[None]:
        """Within this block, calls hold the given latents fixed and place keyframes exactly.

        `carry_video` [1, C, k, H', W'] and `carry_audio` [1, C, K, M] are raw latents held
        clean while everything else is denoised. By default they are a chain carry and land on
        the first k latent frames / K audio latents; `video_frames` / `audio_frames` name the
        latent frame (audio latent step) each of them lands on instead, in order, so any set of
        frames can be held: a whole audio track (a2vid), everything outside a retake window.
        `keyframe_pixel_frames` lists, in the order of the non-first-frame conditions passed to
        the call, the pixel frame each one stands for. `audio_guided=False` is the reference's
        a2vid audio guider (default parameters): no negative audio context, no audio STG.

        Every call in the block also converts velocities to x0 per token and modulates the
        audio-video cross-attention as the reference does (module doc, points 3 and 4).
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
        self._mold_audio_guided = audio_guided
        transformer = self.transformer
        hooks = [transformer.register_forward_pre_hook(self._transformer_hook, with_kwargs=True)]
        for name in _CROSS_SCALE_SHIFT:
            module = getattr(transformer, name, None)
            if module is not None:
                hooks.append(module.register_forward_pre_hook(self._cross_scale_shift_hook(name)))
        if not audio_guided:
            for block in getattr(transformer, "transformer_blocks", []):
                hooks.append(
                    block.audio_attn1.register_forward_pre_hook(_unperturbed_hook, with_kwargs=True)
                )
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
            self._mold_carry = None
            self._mold_keyframe_frames = None
            self._mold_video_mask = None
            self._mold_audio_guided = True
            self._mold_timesteps = None

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

    def prepare_latents(self, *args: Any, **kwargs: Any) -> Any:
        out = super().prepare_latents(*args, **kwargs)  # type: ignore[misc]
        self._mold_video_mask = out[1]  # (latents, conditioning_mask, ...) in both pipelines
        return out

    # -- x0 per token, as the reference's X0Model (module doc, point 3)

    def convert_velocity_to_x0(
        self,
        sample: torch.Tensor,
        denoised_output: torch.Tensor,
        step_idx: int,
        scheduler: Any | None = None,
    ) -> torch.Tensor:
        """x0 = sample - velocity * sigma_token, sigma_token = sigma * (1 - conditioning mask):
        the video's mask for the video scheduler, the held audio tokens for the audio one."""
        video = scheduler is None or scheduler is self.scheduler  # type: ignore[attr-defined]
        sigma = (self.scheduler if scheduler is None else scheduler).sigmas[step_idx]  # type: ignore[attr-defined]
        mask = self._mold_video_mask if video else self._audio_mask()
        if mask is None or mask.ndim != 3 or mask.shape[1] != sample.shape[1]:
            return sample - denoised_output * sigma
        mask = mask[: sample.shape[0]].to(device=sample.device, dtype=torch.float32)
        return sample - denoised_output * (sigma * (1.0 - mask))

    def _audio_mask(self) -> torch.Tensor | None:
        state = self._mold_carry
        return None if state is None else state.audio_mask

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
        mask = torch.zeros(1, latents.shape[1], 1, device=latents.device)
        mask[:, index] = 1.0
        state.audio_mask = mask
        return latents

    def _transformer_hook(
        self, module: torch.nn.Module, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict]:
        """Before every transformer call: held audio tokens get timestep zero (their sigma stays
        the step's, as the reference's frozen audio: `a2vid_two_stage.py:205-209`); without
        audio guidance the unconditional half keeps the positive audio context; the per-token
        timesteps are kept for the cross-attention hooks."""
        state = self._mold_carry
        timestep = kwargs.get("audio_timestep")
        audio = kwargs.get("audio_hidden_states")
        if (
            state is not None
            and state.audio_tokens is not None
            and timestep is not None
            and audio is not None
        ):
            if timestep.ndim == 1:
                timestep = timestep[:, None].expand(audio.shape[0], audio.shape[1])
            per_token = timestep.clone()
            per_token[:, state.audio_index.to(per_token.device)] = 0
            kwargs["audio_timestep"] = per_token
        context = kwargs.get("audio_encoder_hidden_states")
        if not self._mold_audio_guided and context is not None and context.shape[0] == 2:
            # CFG batches are [negative, positive]: the reference's audio guider has no
            # negative context, so its unconditional pass takes the positive one
            kwargs["audio_encoder_hidden_states"] = context[1:].expand_as(context).contiguous()
            mask = kwargs.get("audio_encoder_attention_mask")
            if mask is not None and mask.shape[0] == 2:
                kwargs["audio_encoder_attention_mask"] = mask[1:].expand_as(mask).contiguous()
        self._mold_timesteps = {
            "timestep": kwargs.get("timestep"),
            "audio_timestep": kwargs.get("audio_timestep"),
        }
        return args, kwargs

    def _cross_scale_shift_hook(self, name: str) -> Callable[..., Any]:
        """A pre-hook giving the cross-attention scale/shift embedding `name` its own
        modality's per-token timesteps (the gate keeps the other modality's sigma)."""
        own = _CROSS_SCALE_SHIFT[name]

        def hook(module: torch.nn.Module, args: tuple) -> tuple | None:
            timesteps = (self._mold_timesteps or {}).get(own)
            if timesteps is None or not args:
                return None
            return (timesteps.flatten().to(args[0].dtype), *args[1:])

        return hook

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


def _unperturbed_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A pre-hook keeping an audio self-attention out of STG's perturbation."""
    if kwargs.get("perturbation_mask") is not None:
        kwargs["perturbation_mask"] = None
        kwargs["all_perturbed"] = False
    return args, kwargs


# The reference's VAE tiling (ltx-core `model/video_vae/tiling.py:64-69`,
# TilingConfig.default(), for decoding and for encoding videos: ltx-pipelines
# `utils/helpers.py:85`): 768 px spatial tiles overlapping by 64 px, 80-frame temporal tiles
# overlapping by 24 frames. diffusers counts a stride (tile - overlap) instead of an overlap.
DECODE_TILE_PIXELS = 768
DECODE_TILE_OVERLAP_PIXELS = 64
DECODE_TILE_FRAMES = 80
DECODE_TILE_OVERLAP_FRAMES = 24


@contextlib.contextmanager
def reference_tiling(vae: Any) -> Iterator[None]:
    """Within this block `vae.decode` and `vae.encode` tile as the reference's decoder and
    video encoder do (see above); outside it the VAE does not tile (images encode whole)."""
    names = (
        "use_tiling",
        "use_framewise_decoding",
        "tile_sample_min_height",
        "tile_sample_min_width",
        "tile_sample_stride_height",
        "tile_sample_stride_width",
        "tile_sample_min_num_frames",
        "tile_sample_stride_num_frames",
    )
    kept = {name: getattr(vae, name) for name in names}
    stride = DECODE_TILE_PIXELS - DECODE_TILE_OVERLAP_PIXELS
    vae.enable_tiling(
        tile_sample_min_height=DECODE_TILE_PIXELS,
        tile_sample_min_width=DECODE_TILE_PIXELS,
        tile_sample_min_num_frames=DECODE_TILE_FRAMES,
        tile_sample_stride_height=stride,
        tile_sample_stride_width=stride,
        tile_sample_stride_num_frames=DECODE_TILE_FRAMES - DECODE_TILE_OVERLAP_FRAMES,
    )
    # (diffusers' encoder reads the decoding flag for its temporal tiles too)
    vae.use_framewise_decoding = True
    try:
        yield
    finally:
        for name, value in kept.items():
            setattr(vae, name, value)


class MoldConditionPipeline(HeldLatents, LTX2ConditionPipeline):
    """LTX2ConditionPipeline with latent carries and exact keyframe positions."""

    # The step-end callback needs the audio latents to hold the carried tokens clean.
    _callback_tensor_inputs: ClassVar[list[str]] = [
        *LTX2ConditionPipeline._callback_tensor_inputs,
        "audio_latents",
    ]


class MoldInContextPipeline(HeldLatents, LTX2InContextPipeline):
    """LTX2InContextPipeline (IC-LoRA: reference-video tokens appended to the sequence) with
    the same carries and keyframe positions, so IC-LoRA shots chain like any other. Its
    reference video encodes in the reference's tiles, as ltx-pipelines' `ic_lora.py` does
    (`utils/helpers.py:85`)."""

    _callback_tensor_inputs: ClassVar[list[str]] = [
        *LTX2InContextPipeline._callback_tensor_inputs,
        "audio_latents",
    ]

    def _encode_reference_conditions(self, *args: Any, **kwargs: Any) -> Any:
        with reference_tiling(self.vae):
            return super()._encode_reference_conditions(*args, **kwargs)
