"""What the planner produces: shots with their clips, and the ordered stages with their keys."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from moldbatch.errors import Diagnostic


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
    kind: str  # clip | upscale | stitch | export | join
    shot: str | None
    needs: list[str]
    key: str
    params: dict  # what the executor needs; every keyed input is in here or in `needs`
    outputs: dict = field(default_factory=dict)  # unkeyed destinations (final file paths)

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
        for s in self.stages:
            if s.id == stage_id:
                return s
        raise KeyError(stage_id)

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
