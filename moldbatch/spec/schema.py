"""The spec language as pydantic models: field types, ranges and choices, each stated once.

Rules that span fields or need the model registry (the frame grid, sizes, which model has
which feature) live in the planner; these models only say what each field may hold.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
)

from moldbatch.models import CAMERA_PRESETS, FORMATS, PIPELINES, TRANSITIONS

Format = Literal[FORMATS]  # type: ignore[valid-type]
Transition = Literal[TRANSITIONS]  # type: ignore[valid-type]
Pipeline = Literal[("auto", *PIPELINES)]  # type: ignore[valid-type]
CameraPreset = Literal[CAMERA_PRESETS]  # type: ignore[valid-type]
SHOT_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
# Sanity bounds, far beyond any real shot, so that a typo cannot plan a billion clips.
MAX_FRAMES = 172_800  # 30 minutes at 96 fps
MAX_SECONDS = 3_600.0
MAX_SIZE = 8_192
MAX_SEED = 2**63 - 1
# A shot id names files (`renders/<id>.mp4`, `.<id>.mp4.tmp-<pid>`, `<id>.orig-2.mp4`): short
# enough for every filesystem's 255-byte names, with room for what is added to it.
MAX_ID_LENGTH = 64
# The text encoder reads at most its sequence length of tokens (`max_sequence_length`, 1024
# for the real models, a few characters each): far longer prompts are a mistake, refused.
MAX_PROMPT_CHARS = 10_000
Prompt = Annotated[StrictStr, Field(max_length=MAX_PROMPT_CHARS)]

Seconds = Annotated[float, Field(ge=0, strict=True)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class LoraSpec(_Strict):
    path: StrictStr = Field(description="a .safetensors LoRA file, relative to the spec file")
    scale: float = Field(1.0, ge=0, le=2, description="adapter weight, 0 to 2")


class Keyframe(_Strict):
    frame: StrictInt = Field(ge=0, description="shot frame the image lands on, 0 <= frame < frames")
    image: StrictStr = Field(description="a PNG or JPEG file, relative to the spec file")


class RetakeWindow(_Strict):
    start: Seconds = Field(description="seconds into `video` where the retake starts")
    end: Seconds = Field(description="seconds into `video` where the retake ends, > start")


class ShotSettings(_Strict):
    """Every field a shot may set; `defaults` holds the same fields for all shots."""

    model: StrictStr | None = Field(None, description="model name; see `moldbatch models`")
    prompt: Prompt | None = Field(None, description="what the shot shows and sounds like")
    prompts: list[Prompt] | None = Field(
        None, min_length=1, description="one prompt per planned clip, instead of `prompt`"
    )
    negative_prompt: Prompt | None = None
    frames: StrictInt | None = Field(
        None, ge=1, le=MAX_FRAMES, description="shot length in frames; 8k+1 when it fits one clip"
    )
    duration: float | None = Field(
        None, gt=0, le=MAX_SECONDS, description="shot length in seconds (instead of frames)"
    )
    width: StrictInt | None = Field(
        None, ge=32, le=MAX_SIZE, description="output width, after upscales"
    )
    height: StrictInt | None = Field(
        None, ge=32, le=MAX_SIZE, description="output height, after upscales"
    )
    fps: float | None = Field(None, ge=1, le=120, description="output frames per second")
    seed: StrictInt | None = Field(
        None, ge=0, le=MAX_SEED, description="base seed; clip i uses seed + i"
    )
    format: Format | None = Field(None, description="mp4, or the silent gif / apng / webp")
    audio: StrictBool | None = Field(None, description="render sound; mp4 only, default on")
    clip_frames: StrictInt | None = Field(
        None, ge=1, description="frames per clip of a chain: 8k+1, at most the model's cap"
    )
    motion_tail: StrictInt | None = Field(
        None,
        ge=0,
        description="frames carried from one clip into the next (smooth): 0 or 8m+1 "
        "(16m+1 with temporal upscale)",
    )
    transition: Transition | None = Field(None, description="how the clips of a chain meet")
    fade_frames: StrictInt | None = Field(
        None, ge=1, description="cross-fade length for transition: fade"
    )
    last_clip: Literal["tight", "full"] | None = Field(
        None, description="tight: the last clip renders only what is needed; full: a whole clip"
    )
    steps: StrictInt | None = Field(
        None, ge=2, le=100, description="denoising steps (the flow schedule needs at least 2)"
    )
    guidance: float | None = Field(None, ge=0, le=30, description="classifier-free guidance")
    loras: list[LoraSpec] | None = None
    camera_control: CameraPreset | None = Field(  # type: ignore[valid-type]
        None, description="a camera LoRA preset (LTX-2 19B only)"
    )
    image: StrictStr | None = Field(None, description="first-frame image (PNG/JPEG)")
    image_strength: float | None = Field(
        None,
        ge=0,
        le=1,
        description="how firmly the first clip's image holds (mold's strength); later clips' "
        "images hold fully",
    )
    image_guide: float | None = Field(
        None,
        ge=0,
        le=1,
        description="strength at which `image` guides each clip after a smooth seam, at the "
        "first frame past the carried tail (mold's 0.4); 0 turns it off",
    )
    keyframes: list[Keyframe] | None = None
    audio_file: StrictStr | None = Field(None, description="audio the video follows (a2vid)")
    video: StrictStr | None = Field(None, description="source clip for retake and IC-LoRA")
    retake: RetakeWindow | None = None
    pipeline: Pipeline | None = Field(None, description="auto picks from the inputs")
    spatial_upscale: Literal["x2", "x1.5"] | None = None
    temporal_upscale: Literal["x2"] | None = None


class ClipSpec(_Strict):
    """One clip of an explicit clip list: its own length, prompt, image and seam."""

    prompt: Prompt | None = Field(None, description="this clip's prompt (default: the shot's)")
    frames: StrictInt = Field(ge=1, description="frames this clip renders: 8k+1, within the cap")
    image: StrictStr | None = Field(
        None,
        description="image at this clip's first frame; after a smooth seam, a guide at the "
        "first frame past the carried tail (at the shot's image_guide, 0.4 when that is 0)",
    )
    negative_prompt: Prompt | None = None
    seed_offset: StrictInt | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="seed = base seed XOR seed_offset (default: base seed + index)",
    )
    transition: Transition | None = Field(
        None, description="the seam before this clip (ignored on the first)"
    )
    fade_frames: StrictInt | None = Field(None, ge=1, description="cross-fade length for fade")


class Shot(ShotSettings):
    id: StrictStr = Field(
        pattern=SHOT_ID_PATTERN,
        max_length=MAX_ID_LENGTH,
        description="unique; lower-case letters, digits, - and _; at most 64 characters",
    )
    clips: list[ClipSpec] | None = Field(
        None, min_length=1, description="explicit clips, instead of frames/duration/prompts"
    )


class Film(_Strict):
    """One film: defaults for every shot, the shots in order, and where the joined film goes."""

    version: StrictInt = Field(description="spec language version", json_schema_extra={"const": 1})
    name: StrictStr | None = Field(None, description="film name; defaults to the file's stem")
    defaults: ShotSettings | None = None
    output: StrictStr | None = Field(
        None, description="all shots joined in order into one file (optional)"
    )
    shots: list[Shot] = Field(min_length=1)

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"unsupported spec version {v}: this moldbatch reads version 1")
        return v


SETTING_FIELDS = tuple(ShotSettings.model_fields)
SHOT_FIELDS = tuple(Shot.model_fields)
FILM_FIELDS = tuple(Film.model_fields)

# Built-in values for what neither the shot nor `defaults` sets. Model-dependent ones
# (steps) come from the registry.
BUILTIN_DEFAULTS = {
    "model": "ltx-2-19b-distilled:fp8",
    "width": 1216,
    "height": 704,
    "fps": 24,
    "seed": 42,
    "format": "mp4",
    "motion_tail": 17,
    "transition": "smooth",
    "fade_frames": 8,
    "last_clip": "tight",
    "guidance": 3.0,
    "negative_prompt": "",
    "pipeline": "auto",
    "loras": [],
    "keyframes": [],
    "image_strength": 1.0,
    "image_guide": 0.4,
}


def json_schema() -> dict:
    schema = Film.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://moldbatch.dev/schemas/moldbatch.schema.json"
    schema["title"] = "moldbatch film spec"
    return schema
