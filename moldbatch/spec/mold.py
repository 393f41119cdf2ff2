"""mold's chain scripts (`mold.chain.v1` TOML), read as one-shot films and written from shots.

A script's `[chain]` table becomes the shot's settings and each `[[stage]]` one entry of its
explicit clip list, so scripts plan, validate and cache exactly like our own specs. Errors
name the script's own lines and fields (`stage[2].frames`, `chain.motion_tail_frames`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
import re
from pathlib import Path
from typing import Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from moldbatch.errors import Diagnostic, MoldbatchError
from moldbatch.models import FORMATS, MODELS, TRANSITIONS, held_frames
from moldbatch.spec.messages import pydantic_diagnostics
from moldbatch.spec.schema import MAX_SEED
from moldbatch.spec.source import PathKey, Source

SCHEMA = "mold.chain.v1"
IMAGE_SUFFIX = {b"\x89PNG\r\n\x1a\n": ".png", b"\xff\xd8\xff": ".jpg"}
# mold-core chain.rs MAX_CHAIN_STAGES: `ChainRequest::normalise` refuses more stages
MAX_STAGES = 16
# a TOML integer is a signed 64-bit one: mold's u64 seeds travel only up to this
TOML_INT_MAX = 2**63 - 1
# mold's per-stage image keys: `source_image` (base64, what mold's own write_script emits),
# `source_image_b64` (base64) and `source_image_path` (relative to the script); at most one
IMAGE_KEYS = ("source_image", "source_image_b64", "source_image_path")
MOLD_IGNORES_UNKNOWN = (
    " (mold ignores unknown keys; moldbatch refuses them so that a misspelt key is not lost)"
)
# stage keys mold reserves, and refuses when set (mold-core chain.rs `normalise`)
MOLD_RESERVED = re.compile(r"stage\[\d+\]\.(model|loras|references)")
MOLD_REFUSES_RESERVED = " (mold reserves it for a later release and refuses it, too)"

# our shot field -> mold's [chain] key
CHAIN_FIELDS = {
    "model": "model",
    "width": "width",
    "height": "height",
    "fps": "fps",
    "seed": "seed",
    "steps": "steps",
    "guidance": "guidance",
    "image_strength": "strength",
    "motion_tail": "motion_tail_frames",
    "format": "output_format",
}
# our clip field -> mold's [[stage]] key (the image is one of IMAGE_KEYS)
STAGE_FIELDS = {
    "prompt": "prompt",
    "frames": "frames",
    "negative_prompt": "negative_prompt",
    "seed_offset": "seed_offset",
    "transition": "transition",
    "fade_frames": "fade_frames",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class MoldChain(_Strict):
    model: StrictStr
    width: StrictInt = Field(1216, ge=32)
    height: StrictInt = Field(704, ge=32)
    fps: StrictInt = Field(24, ge=1, le=120)
    # absent: mold's orchestrator uses 0 (`req.seed.unwrap_or(0)`), and so does moldbatch
    seed: StrictInt = Field(0, ge=0, le=MAX_SEED)
    steps: StrictInt = Field(8, ge=2, le=100)
    guidance: float = Field(3.0, ge=0, le=30)
    strength: float = Field(1.0, ge=0, le=1)
    motion_tail_frames: StrictInt = Field(4, ge=0)
    output_format: Literal[FORMATS] = "mp4"  # type: ignore[valid-type]
    # not a mold field (mold ignores it; its chains are silent): read so that scripts older
    # moldbatch versions wrote still load, and never turned into sound
    enable_audio: StrictBool | None = None


class MoldStage(_Strict):
    prompt: StrictStr
    frames: StrictInt = Field(ge=1)
    source_image: StrictStr | None = None
    source_image_b64: StrictStr | None = None
    source_image_path: StrictStr | None = None
    negative_prompt: StrictStr | None = None
    seed_offset: StrictInt | None = Field(None, ge=0, le=MAX_SEED)
    transition: Literal[TRANSITIONS] = "smooth"  # type: ignore[valid-type]
    fade_frames: StrictInt | None = Field(None, ge=1)


class MoldScript(_Strict):
    schema_: Literal["mold.chain.v1"] = Field(SCHEMA, alias="schema")
    chain: MoldChain
    stage: list[MoldStage] = Field(min_length=1)


def is_mold_script(data: object) -> bool:
    """A mold chain script: `schema = "mold.…"`, or `[chain]` and `[[stage]]` and no shots."""
    if not isinstance(data, dict) or "shots" in data:
        return False
    schema = data.get("schema")
    return (isinstance(schema, str) and schema.startswith("mold.")) or (
        "chain" in data and "stage" in data
    )


def _mold_fields(loc: PathKey) -> list[str]:
    if len(loc) == 0:
        return ["schema", "chain", "stage"]
    if loc[0] == "chain":
        return list(MoldChain.model_fields)
    return list(MoldStage.model_fields)


def _lenient(model, raw):
    """Validate, dropping the fields that fail (already reported) so the rest is checked."""
    if not isinstance(raw, dict):
        return None
    required = {n for n, f in model.model_fields.items() if f.is_required()}
    for _ in range(2):
        try:
            return model.model_validate(raw)
        except ValidationError as e:
            bad = {err["loc"][0] for err in e.errors() if err["loc"]}
            if not bad or bad & required:
                return None
            raw = {k: v for k, v in raw.items() if k not in bad}
    return None


def film_from_mold(
    src: Source, inline_dir: Path
) -> tuple[Source | None, list[Diagnostic], dict[str, bytes]]:
    """The script in `src` as a one-shot film Source (positions and field names kept in the
    script's terms), or None when it cannot be read as one; the diagnostics found; and the
    inline images, path (in `inline_dir`, named by content) -> bytes, for the executor to
    write: reading a script writes nothing."""
    diags: list[Diagnostic] = []
    inline: dict[str, bytes] = {}
    data = src.data
    if isinstance(data.get("schema"), str) and data["schema"] != SCHEMA:
        message = f"unsupported mold script schema '{data['schema']}': moldbatch reads {SCHEMA}"
        return None, [src.diag(("schema",), message)], inline
    try:
        MoldScript.model_validate(data)  # every field-level error at once
    except ValidationError as e:
        for d in pydantic_diagnostics(src, (), e, _mold_fields):
            if d.message.startswith("unknown key"):
                why = MOLD_REFUSES_RESERVED if MOLD_RESERVED.fullmatch(d.path) else None
                d = dataclasses.replace(d, message=d.message + (why or MOLD_IGNORES_UNKNOWN))
            diags.append(d)
    chain = _lenient(MoldChain, data.get("chain"))
    raw_stages = data.get("stage") if isinstance(data.get("stage"), list) else []
    stages = [_lenient(MoldStage, st) for st in raw_stages]
    if chain is None or not stages or any(st is None for st in stages):
        return None, diags, inline
    # mold chains are silent: every stage renders with `enable_audio: Some(false)`
    shot: dict = {"id": _shot_id(src.path.stem), "audio": False}
    names: dict[PathKey, PathKey] = {("shots", 0): ("chain",), ("shots",): ("stage",)}
    for ours, theirs in CHAIN_FIELDS.items():
        shot[ours] = getattr(chain, theirs)
        names[("shots", 0, ours)] = ("chain", theirs)
    if chain.enable_audio:
        diags.append(
            src.diag(
                ("chain", "enable_audio"),
                "is not a mold script field: mold ignores it and renders every chain stage "
                "silent, and so does moldbatch; for sound, use a moldbatch spec (`audio: true`)",
                "warning",
            )
        )
    diags += _chain_warnings(src, chain, stages)
    clips = []
    for i, stage in enumerate(stages):
        clip: dict = {"seed_offset": 0}  # mold: every stage uses the base seed unless offset
        for ours, theirs in STAGE_FIELDS.items():
            value = getattr(stage, theirs)
            if value is not None:
                clip[ours] = value
                names[("shots", 0, "clips", i, ours)] = ("stage", i, theirs)
        names[("shots", 0, "clips", i)] = ("stage", i)
        if i == 0:
            clip.pop("transition", None)  # mold coerces stage 0's transition to smooth
        given = [key for key in IMAGE_KEYS if getattr(stage, key) is not None]
        if len(given) > 1:
            diags.append(
                src.diag(
                    ("stage", i, given[1]),
                    f"set at most one of {', '.join(IMAGE_KEYS)} (mold refuses more, too)",
                )
            )
        elif given == ["source_image_path"]:
            clip["image"] = stage.source_image_path
            names[("shots", 0, "clips", i, "image")] = ("stage", i, "source_image_path")
        elif given:
            where = ("stage", i, given[0])
            decoded = _decode_image(getattr(stage, given[0]), inline_dir)
            if isinstance(decoded, str):
                diags.append(src.diag(where, decoded))
            else:
                path, raw = decoded
                inline[str(path)] = raw
                clip["image"] = str(path)
                names[("shots", 0, "clips", i, "image")] = where
        clips.append(clip)
    shot["clips"] = clips
    names[("shots", 0, "clips")] = ("stage",)
    film = {"version": 1, "name": src.path.stem, "shots": [shot]}
    out = Source(src.file, src.path, film, mold=True)
    out.positions = {k: src.locate(v) for k, v in names.items()}
    out.key_positions = {k: src.locate(v, key=True) for k, v in names.items()}
    out.rename = lambda path: _rename(path, names)
    return out, diags, inline


def _chain_warnings(src: Source, chain: MoldChain, stages: list[MoldStage]) -> list[Diagnostic]:
    """What mold refuses or renders differently in this chain, as warnings (moldbatch renders
    it): mold's limits, and a tail that is not 8m+1."""
    out = []
    tail = chain.motion_tail_frames
    pipeline = MODELS[chain.model].base_pipeline if chain.model in MODELS else "distilled"
    for where, reason in mold_limits(chain.model, pipeline, tail, [st.frames for st in stages]):
        if where == "motion_tail" and any(
            st.transition == "smooth" and tail >= min(st.frames, before.frames + 1)
            for before, st in zip(stages, stages[1:], strict=False)
        ):
            continue  # a smooth seam the clips cannot hold: the planner refuses it, as mold does
        path = {"stages": ("stage",), "motion_tail": ("chain", "motion_tail_frames")}.get(
            where, ("chain", where)
        )
        out.append(src.diag(path, f"{reason}; moldbatch renders it anyway", "warning"))
    if tail_warning(tail):
        out.append(src.diag(("chain", "motion_tail_frames"), tail_warning(tail), "warning"))
    return out


def tail_warning(tail: int) -> str | None:
    """Why a mold tail that is not 8m+1 makes a seam mold renders, and moldbatch with it, that
    does not carry all it drops (runtime/carry.py), with the tail to use instead; else None."""
    exact = held_frames(tail) if tail else 0
    if exact == tail:
        return None
    return (
        f"{tail} is not 8m+1 (1, 9, 17, 25, ...): as mold does, moldbatch carries the last "
        f"{tail} frames of each stage, encodes the first {exact} of them (whole latent frames) "
        f"and holds them at the start of the next, and drops all {tail} at the seam, so "
        f"{tail - exact} of the dropped frames are generated again rather than carried; set "
        f"motion_tail_frames = {exact} for a seam that drops exactly what it holds"
    )


def mold_limits(model: str, pipeline: str, tail: int, frames: list[int]) -> list[tuple[str, str]]:
    """What mold refuses, or fails to render, in a chain of these stages: (the setting, why),
    where the setting is `stages`, `motion_tail`, `model` or `pipeline`. Reading a script,
    these are warnings (moldbatch renders them); `export mold` refuses them."""
    out = []
    if len(frames) > MAX_STAGES:
        # mold-core chain.rs `ChainRequest::normalise`
        out.append(("stages", f"{len(frames)} stages: mold renders at most {MAX_STAGES}"))
    if tail == 0:
        # mold-inference ltx2/pipeline.rs `render_chain_stage`, for every stage
        out.append(("motion_tail", "0: mold's engine refuses a motion tail of 0 at render"))
    for i, n in enumerate(frames):
        if tail >= n:
            # mold-core chain.rs `normalise` and ltx2/chain.rs `validate_motion_tail`
            out.append(
                (
                    "motion_tail",
                    f"{tail} is not below stage {i}'s {n} frames: mold refuses that for every "
                    "stage, whatever its transition",
                )
            )
            break
    info = MODELS.get(model)
    if info is not None and info.guided:
        # mold-inference ltx2/pipeline.rs `select_pipeline`, `render_chain_stage`
        out.append(
            (
                "model",
                f"'{model}' is not a distilled model (it renders with the {pipeline} "
                "pipeline): mold chains run the distilled pipeline only and fail on it at render",
            )
        )
    elif pipeline != "distilled":
        out.append(
            (
                "pipeline",
                f"'{pipeline}': mold chains run the distilled pipeline only",
            )
        )
    return out


def _rename(path: PathKey, names: dict[PathKey, PathKey]) -> PathKey:
    p = tuple(path)
    for cut in range(len(p), 0, -1):
        if p[:cut] in names:
            return names[p[:cut]] + p[cut:]
    return p


def _shot_id(stem: str) -> str:
    safe = re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-_")
    return safe or "chain"


def _decode_image(b64: str, inline_dir: Path) -> tuple[Path, bytes] | str:
    """An inline image's bytes and the path in the work folder it will have, named by its
    content; or why it cannot be used."""
    try:
        raw = base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        return "not valid base64"
    suffix = next((ext for magic, ext in IMAGE_SUFFIX.items() if raw.startswith(magic)), None)
    if suffix is None:
        return (
            "the decoded bytes are not a PNG or JPEG image (mold accepts any bytes here and "
            "fails only when it renders; moldbatch checks them up front)"
        )
    return inline_dir.resolve() / f"{hashlib.sha256(raw).hexdigest()[:32]}{suffix}", raw


# --- writing ------------------------------------------------------------------------------


class CannotExport(MoldbatchError):
    """The shot uses something a mold chain script cannot express."""


def _exportable_tail(shot, first) -> int:
    """The motion tail a mold script of `shot` carries; CannotExport, naming the field, the
    reason and a fix, for anything mold cannot read or render as moldbatch plans it."""

    def refuse(field: str, why: str) -> None:
        raise CannotExport(f"shot '{shot.id}' cannot be a mold chain script: `{field}` {why}")

    for field in ("audio_file", "video", "retake"):
        if getattr(first, field):
            refuse(field, "has no mold chain equivalent")
    if first.conditions.loras:
        refuse("loras", "has no mold chain equivalent (mold chains take no LoRAs)")
    if first.conditions.camera_control:
        refuse("camera_control", "has no mold chain equivalent")
    # a keyframe with a strength is a smooth continuation's image, which mold guides alike
    if any("strength" not in k for c in shot.clips for k in c.keyframes):
        refuse("keyframes", "has no mold chain equivalent")
    if shot.spatial_upscale or shot.temporal_upscale:
        refuse(
            "spatial_upscale" if shot.spatial_upscale else "temporal_upscale",
            "has no mold chain equivalent",
        )
    if shot.audio:
        refuse("audio", "is on, and mold chains are silent: set `audio: false` to export")
    if shot.fps != int(shot.fps):
        refuse("fps", f"{shot.fps:g} is not a whole number, which mold chains need")
    if shot.frames_stitched != shot.frames:
        refuse(
            "frames",
            f"trims the stitched {shot.frames_stitched} frames to {shot.frames}, "
            "which mold chains cannot; use `clips`, or frames that need no trim",
        )
    smooth = [n for kind, n in shot.seams if kind == "smooth"]
    if len(set(smooth)) > 1:
        refuse("motion_tail", "differs between seams")
    tail = smooth[0] if smooth else shot.motion_tail
    shortest = min(c.frames for c in shot.clips)
    fixes = {
        "stages": ("clips", f"split the shot into shots of at most {MAX_STAGES} clips"),
        "motion_tail": (
            "motion_tail",
            f"set `motion_tail` from 1 to {shortest - 1}"
            if shortest > 1
            else "give every clip more than one frame",
        ),
        "model": (
            "model",
            "use a distilled model (ltx-2-19b-distilled:fp8, ltx-2.3-22b-distilled:fp8)",
        ),
        "pipeline": ("pipeline", "set `pipeline: distilled`"),
    }
    for what, reason in mold_limits(
        shot.model, shot.pipeline, tail, [c.frames for c in shot.clips]
    ):
        field, fix = fixes[what]
        refuse(field, f"{reason}: {fix}")
    base = shot.clips[0].seed
    for clip in shot.clips:
        if max(base, clip.seed) > TOML_INT_MAX:
            refuse(
                "seed",
                f"{base} gives clip {clip.index} the seed {clip.seed}, past TOML's integer range "
                f"(at most {TOML_INT_MAX}), so mold could not read it back: use a smaller seed",
            )
    return tail


def mold_script(plan, shot_id: str, out_path: Path | None = None) -> str:
    """The shot `shot_id` of a valid plan as a mold.chain.v1 script (TOML text) that mold reads
    and renders as moldbatch plans it; CannotExport, naming the field and why, when there is
    none."""
    shots = {s.id: s for s in plan.shots}
    if shot_id not in shots:
        raise CannotExport(f"no shot '{shot_id}' in {plan.file} (shots: {', '.join(shots)})")
    shot = shots[shot_id]
    clip_stages = [s for s in plan.stages if s.shot == shot_id and s.kind == "clip"]
    first = clip_stages[0].params

    tail = _exportable_tail(shot, first)
    base = shot.clips[0].seed
    chain = {
        "model": shot.model,
        "width": shot.width,
        "height": shot.height,
        "fps": int(shot.fps),
        "seed": base,
        "steps": first.steps,
        "guidance": first.guidance,
        # mold applies `strength` to stage 0's image only, as moldbatch applies image_strength
        "strength": (
            first.conditions.image_strength if first.conditions.image_strength is not None else 1.0
        ),
        "motion_tail_frames": tail,
        "output_format": shot.format,
    }
    stages = []
    for i, (clip, stage) in enumerate(zip(shot.clips, clip_stages, strict=True)):
        entry = {"prompt": clip.prompt, "frames": clip.frames}
        image = clip.image or next((k["image"] for k in clip.keyframes), None)
        if image in plan.inline:  # it came inline: it goes back inline
            entry["source_image"] = base64.b64encode(plan.inline[image]).decode()
        elif image is not None:
            entry["source_image_path"] = _relative(Path(image), out_path)
        negative = stage.params.conditions.negative_prompt
        if negative:
            entry["negative_prompt"] = negative
        entry["seed_offset"] = base ^ clip.seed
        if i > 0:
            kind, n = shot.seams[i - 1]
            entry["transition"] = kind
            if kind == "fade":
                entry["fade_frames"] = n
        stages.append(entry)
    head = f"# shot '{shot_id}' of {plan.file}, written by moldbatch\n"
    return head + tomli_w.dumps({"schema": SCHEMA, "chain": chain, "stage": stages})


def _relative(path: Path, out_path: Path | None) -> str:
    if out_path is None:
        return str(path)
    return os.path.relpath(path, out_path.resolve().parent)
