"""The typed contract between plan and execution: shots with their clips, the ordered stages
with their keys, and each stage kind's parameters (every keyed input is in them or in `needs`).

A file the spec names travels as a `FileRef`: it keys by its bytes (sha256) only, so moving the
film's folder changes no key, and `file_refs` / `with_paths` are the one walk over a stage's
files (the Ray executor ships and relocates them, `diff` compares them)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from moldbatch.errors import Diagnostic


@dataclass(frozen=True)
class FileRef:
    """A file a stage reads: where it is on this machine, and its bytes' sha256 (the key)."""

    path: str
    sha256: str


@dataclass(frozen=True)
class LoraRef:
    file: FileRef
    scale: float


@dataclass(frozen=True)
class KeyframeRef:
    frame: int  # clip-local rendered frame
    image: FileRef
    strength: float = 1.0  # below 1: a guide (the image of a smooth continuation)


@dataclass(frozen=True)
class Window:
    """Seconds into a source (a retake window)."""

    start: float
    end: float


@dataclass(frozen=True)
class Conditions:
    """What a clip is conditioned on, shared by its first pass and every refine of it."""

    prompt: str
    negative_prompt: str | None
    seed: int
    loras: tuple[LoraRef, ...] = ()
    camera_control: str | None = None
    image: FileRef | None = None
    image_strength: float | None = None  # with `image` only
    keyframes: tuple[KeyframeRef, ...] = ()
    carry_tail: int = 0  # rendered frames held from the previous clip (a smooth seam)


@dataclass(frozen=True)
class ClipParams:
    """A clip's first pass."""

    model: str
    # What a clip renders follows from the model, the stage's size and its inputs; the pipeline's
    # name matters only where it says which media the clip follows (models.MEDIA_PIPELINES), so
    # `distilled`, `two-stage`, `one-stage` and `keyframe` key alike ("generate").
    pipeline: str
    width: int  # this pass's size: a two-stage pipeline's first pass renders at half size
    height: int
    fps: float
    frames: int
    steps: int
    guidance: float | None
    audio: bool
    conditions: Conditions
    audio_file: FileRef | None = None  # a2vid: the audio the clip follows
    audio_window: tuple[float, float] | None = None  # seconds of audio_file this clip follows
    video: FileRef | None = None  # retake: the source; ic-lora: the reference
    source_window: tuple[float, float] | None = None  # seconds of `video` this clip follows
    retake: Window | None = None


@dataclass(frozen=True)
class RetakeSource:
    """What an upscaled retake pastes back outside its window."""

    video: FileRef
    source_window: tuple[float, float]
    retake: Window


@dataclass(frozen=True)
class UpscaleParams:
    """A latent upscale (spatial, temporal or both) of the stage below it, then, with `refine`,
    a refine pass at the new size; a two-stage pipeline's `refine` stage is one with x2."""

    model: str
    spatial: str | None
    temporal: str | None
    width: int
    height: int
    fps: float
    audio: bool
    refine: Conditions | None = None
    # with `refine`: what it does with the audio, as Lightricks' pipeline of the kind
    # (runtime.requests.Refine.audio: "refine" | "keep" | "hold")
    refine_audio: str | None = None
    retake_source: RetakeSource | None = None


@dataclass(frozen=True)
class StitchParams:
    seams: tuple[tuple[str, int], ...]  # before clips 1..: (transition, overlap)
    frames: int
    fps: float
    audio: bool
    width: int
    height: int


@dataclass(frozen=True)
class ExportParams:
    format: str
    fps: float
    audio: bool


@dataclass(frozen=True)
class JoinParams:
    format: str
    audio: bool
    fps: float
    shots: tuple[str, ...]
    # an mp4 film of mp4 shots copies their encoded video (needs: the stitches, for the sound,
    # then the exports), rather than encoding the stitched frames again after the last shot
    copy_video: bool = False


@dataclass(frozen=True)
class EncodeParams:
    """A prompt's text encoding, shared by every stage of the film that reads it. It keys by
    the text encoder, the text and the padded length only: two models with one text encoder
    share it, and the connectors (with their LoRAs) run in the stages that read it."""

    text_encoder: str  # the text encoder's identity (models.ModelInfo.text_encoder)
    prompt: str | None  # None: the symbolic `default` instead
    default: str | None = None  # a prompt the runtime knows by name ("default-negative")
    max_sequence_length: int = 1024
    # the runtime that encodes it: any model with this text encoder (not in the key)
    model: str = field(default="", metadata={"key": False})


StageParams = ClipParams | UpscaleParams | StitchParams | ExportParams | JoinParams | EncodeParams
# the stages that run the model (on a GPU), the text encodes first in a plan
RUNTIME_KINDS = ("encode", "clip", "refine", "upscale")
ENCODE_PREFIX = "encode/"  # the id of every encode stage starts so


def encode_needs(needs: list[str]) -> list[str]:
    """The encode stages among a stage's needs, in order (a clip's prompt, then its negative)."""
    return [n for n in needs if n.startswith(ENCODE_PREFIX)]


def media_needs(needs: list[str]) -> list[str]:
    """A stage's needs but its text encodes: the stages whose media or latents it reads."""
    return [n for n in needs if not n.startswith(ENCODE_PREFIX)]


TERMINAL_KINDS = ("export", "join")  # the stages whose results leave the work folder


def key_doc(value):
    """A stage's params as its key sees them: plain JSON, a file by its bytes only (what `diff`
    compares; keys hash its canonical text, written directly by `keys.canonical`)."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is FileRef:
        return {"sha256": value.sha256}
    if kind is tuple or kind is list:
        return [key_doc(v) for v in value]
    return {name: key_doc(getattr(value, name)) for name in key_fields(kind)}


_PLAIN = frozenset({str, int, float, bool, type(None)})


@functools.cache
def key_fields(kind: type) -> tuple[str, ...]:
    """A params class's fields that count in its key, in field order."""
    return tuple(f.name for f in dataclasses.fields(kind) if f.metadata.get("key", True))


def file_refs(value) -> Iterator[FileRef]:
    """Every file a stage's params reference, in field order (with repeats)."""
    if isinstance(value, FileRef):
        yield value
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from file_refs(getattr(value, f.name))
    elif isinstance(value, list | tuple):
        for v in value:
            yield from file_refs(v)


def with_paths(value, where: Callable[[FileRef], str]):
    """A copy of `value` with each file reference's path replaced by `where(ref)`."""
    if isinstance(value, FileRef):
        return FileRef(where(value), value.sha256)
    if dataclasses.is_dataclass(value):
        changes = {
            f.name: with_paths(getattr(value, f.name), where) for f in dataclasses.fields(value)
        }
        return dataclasses.replace(value, **changes)
    if isinstance(value, tuple):
        return tuple(with_paths(v, where) for v in value)
    return value


@dataclass
class ClipPlan:
    index: int
    frames: int  # frames rendered (at the render fps)
    start: int  # shot frame of its first frame
    keep_from: int  # shot frame of its first frame that survives the stitch
    prompt: str
    seed: int
    # {"frame": local, "image": path}, and "strength" for a guide below full strength (the
    # image of a smooth continuation, which the carried tail keeps off its first frame)
    keyframes: list[dict] = field(default_factory=list)
    image: str | None = None  # image at this clip's first frame
    negative_prompt: str | None = None  # this clip's own, when it has one
    audio_window: list[float] | None = None  # [start, end] seconds of audio_file this clip follows


@dataclass
class ShotPlan:
    id: str
    model: str
    pipeline: str
    frames: int  # final frames after trim
    width: int  # output size
    height: int
    fps: float
    render_width: int  # base render size (output / spatial scale)
    render_height: int
    render_fps: float
    format: str
    audio: bool
    transition: str
    overlap: int  # frames shared by consecutive clips (tail, fade or 0)
    motion_tail: int
    fade_frames: int
    clips: list[ClipPlan]
    seams: list[list] = field(default_factory=list)  # [transition, overlap] before clips 1..
    frames_stitched: int = 0  # frames the stitch yields before the trim to `frames`
    spatial_upscale: str | None = None
    temporal_upscale: str | None = None
    output_path: str | None = None

    @property
    def rendered_frames(self) -> int:
        return sum(c.frames for c in self.clips)

    def to_json(self) -> dict:
        d = asdict(self)
        d["rendered_frames"] = self.rendered_frames
        d["output"] = {
            "frames": self.frames,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "path": self.output_path,
        }
        d.pop("output_path")
        return d


@dataclass
class Stage:
    id: str  # "opening/clip-2"
    kind: str  # encode | clip | refine | upscale | stitch | export | join
    shot: str | None
    needs: list[str]
    key: str
    params: StageParams  # what the executor needs; every keyed input is in here or in `needs`
    output: str | None = None  # export / join: the final file (unkeyed)

    @property
    def steps(self) -> int:
        """Denoising steps of this stage (for progress), 0 for stages that do not denoise."""
        return getattr(self.params, "steps", 0)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "shot": self.shot,
            "needs": self.needs,
            "key": self.key,
        }


@dataclass
class Plan:
    file: str
    path: Path | None
    name: str
    shots: list[ShotPlan] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)
    output: str | None = None  # the joined film
    diagnostics: list[Diagnostic] = field(default_factory=list)
    # files the spec carries inline (a mold script's base64 images): path -> bytes. The planner
    # only names them; the executor writes them before a render
    inline: dict[str, bytes] = field(default_factory=dict)

    def read_input(self, path: str) -> bytes:
        """The bytes of an input file the plan references (inline ones from memory)."""
        if path in self.inline:
            return self.inline[path]
        return Path(path).read_bytes()

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]

    @property
    def valid(self) -> bool:
        return not self.errors

    def stage(self, stage_id: str) -> Stage:
        return self._index()[0][stage_id]

    def stages_of(self, shot_id: str | None) -> list[Stage]:
        """A shot's stages in plan order (None: the film's own, the join)."""
        return self._index()[1].get(shot_id, [])

    def _index(self) -> tuple[dict[str, Stage], dict[str | None, list[Stage]]]:
        """Stages by id and by shot, built once per stage list (views look them up per shot,
        which must stay linear in the film's length)."""
        token = (id(self.stages), len(self.stages))
        cached = self.__dict__.get("_indexed")
        if cached is None or cached[0] != token:
            by_id = {s.id: s for s in self.stages}
            by_shot: dict[str | None, list[Stage]] = {}
            for s in self.stages:
                by_shot.setdefault(s.shot, []).append(s)
            cached = self.__dict__["_indexed"] = (token, by_id, by_shot)
        return cached[1], cached[2]

    def to_json(self) -> dict:
        return {
            "file": self.file,
            "name": self.name,
            "valid": self.valid,
            "errors": [d.to_json() for d in self.errors],
            "warnings": [d.to_json() for d in self.warnings],
            "shots": [s.to_json() for s in self.shots] if self.valid else [],
            "output": self.output if self.valid else None,
            "stages": [s.to_json() for s in self.stages] if self.valid else [],
        }
