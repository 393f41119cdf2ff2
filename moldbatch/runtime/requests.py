"""What the executor asks of the runtime, and what it gets back: one clip at a time."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Lora:
    path: str  # a .safetensors path, or "camera-control:<preset>"
    scale: float = 1.0


@dataclass
class Carry:
    """The tail of the previous clip of a chain, handed to the next clip (runtime/carry.py).

    `video` is the raw latents [1, C, m + 1, H', W'] of the previous clip's last `tail_frames`
    (8m + 1) decoded frames, VAE-encoded again; `audio` the raw audio latents of its sound from
    `tail_frames / fps` seconds before its end, encoded again, those wholly inside that stretch
    (None when silent). Both are held clean at the start of the next clip.
    """

    video: Any  # torch.Tensor
    audio: Any | None
    tail_frames: int


@dataclass
class ClipRequest:
    model: str  # registry name, e.g. "ltx-2-tiny:random"
    prompt: str
    width: int  # base render size (output size / spatial scale), multiple of 32
    height: int
    frames: int  # 8k+1
    fps: float
    seed: int
    steps: int
    guidance: float
    negative_prompt: str = ""
    audio: bool = True
    image: Path | None = None  # first-frame conditioning at clip frame 0
    # (clip-local frame, image) or (clip-local frame, image, strength); strength defaults to 1
    keyframes: list[tuple] = field(default_factory=list)
    loras: list[Lora] = field(default_factory=list)
    carry: Carry | None = None
    image_strength: float = 1.0  # conditioning strength of `image` (1: the frame is kept)
    # a2vid: the audio the clip follows, float32 [channels, samples] at `audio_input_rate`,
    # the clip starting `audio_input_start` seconds into it. It is held fixed while the video
    # is denoised, and the clip's output audio is this waveform itself (resampled), not a
    # VAE round trip. With `retake_window` it is the source's audio instead (see below).
    audio_input: Any | None = None  # np.ndarray
    audio_input_rate: int | None = None
    audio_input_start: float = 0.0
    # retake: the source clip's frames, uint8 [frames, H, W, 3], one per frame of this clip
    # (any size: cover-resized and center-cropped to the render size), and the clip-local
    # seconds [start, end) to regenerate. Everything outside the window is kept: its latents
    # are held, its output frames (and audio, from `audio_input`) are the source's.
    source_frames: Any | None = None  # np.ndarray
    retake_window: tuple[float, float] | None = None
    # ic-lora: the reference video for this clip, uint8 [frames, H, W, 3] (any size: the
    # pipeline resizes it to the render size over the IC-LoRA's reference_downscale_factor),
    # appended to the sequence as clean tokens the IC-LoRA attends to.
    reference_frames: Any | None = None  # np.ndarray
    reference_strength: float = 1.0
    # the prompts' stored forms (runtime/text.py, an encode stage's artifact): given, the
    # text encoder is not run for them
    prompt_embeds: Any | None = None  # torch.Tensor [tokens, D]
    negative_prompt_embeds: Any | None = None


@dataclass
class ClipResult:
    video_latents: Any  # torch.Tensor [1, C, F', H', W'], final (denoised) latents
    audio_latents: Any | None  # torch.Tensor, final audio latents, or None
    frames: Any  # np.ndarray uint8 [F, H, W, 3]
    audio: Any | None  # np.ndarray float32 [channels, samples], or None
    sample_rate: int | None


@dataclass
class Refine:
    """The second pass after a spatial latent upscale: the upscaled latents are re-noised to a
    low level and denoised again with the clip's prompt (diffusers' stage-2 recipe).

    `loras` are the clip's own adapters; dev models add their distilled LoRA (the registry's
    "distilled-lora" file) themselves. `image` and `keyframes` condition the refine as they
    conditioned the clip; `carry` holds the previous clip's refined tail (video, and audio
    where it has some), as in the first pass.

    `audio` says what the refine does with the first pass's audio latents, as Lightricks'
    pipeline of that kind does (docs/reference-parity.md):

    * "refine": re-noised to the refine's first sigma and denoised with the video; the
      refined audio is the output (`distilled.py`, `keyframe_interpolation.py`, `ic_lora.py`);
    * "keep": re-noised and denoised with the video, but the output is the first pass's audio
      (`ti2vid_two_stages.py`, since 63fd9a4);
    * "hold": frozen clean (timestep 0, the step's sigma), the output unchanged
      (`a2vid_two_stage.py`: the audio the video follows).
    """

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    loras: list[Lora] = field(default_factory=list)
    image: Path | None = None
    image_strength: float = 1.0
    keyframes: list[tuple] = field(default_factory=list)  # as ClipRequest.keyframes
    carry: Carry | None = None
    audio: str = "refine"  # "refine" | "keep" | "hold" (see above)
    prompt_embeds: Any | None = None  # the prompt's stored form (as ClipRequest's)


REFINE_AUDIO = ("refine", "keep", "hold")
