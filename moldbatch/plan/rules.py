"""The spec language's cross-field rules: what a shot's merged settings must agree on with the
model and with each other (pipelines, sizes, lengths, prompts, keyframes, media, the film's
output). Each rule is stated here once; the planner calls them and builds from what passes.
Every finding is a diagnostic at the position the user wrote the value (see `Settings.where`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from moldbatch.errors import Diagnostic
from moldbatch.models import (
    FRAME_GRID,
    MIN_RENDER_SIZE,
    SILENT_FORMATS,
    SIZE_GRID,
    SPATIAL_SCALES,
    ModelInfo,
    first_pass_size,
    format_of,
    grid_neighbours,
    latent_tokens,
    on_frame_grid,
)
from moldbatch.plan.chain import locate_frame
from moldbatch.plan.inputs import InputError, Inputs
from moldbatch.plan.types import ShotPlan
from moldbatch.spec.source import PathKey, Source


@dataclass
class Settings:
    """A shot's effective settings, with where each one came from (for error positions)."""

    values: dict
    origin: dict = field(default_factory=dict)  # field -> path in the document
    shot_path: PathKey = ()
    broken: set = field(default_factory=set)  # fields whose errors are already reported

    def __getitem__(self, name):
        return self.values.get(name)

    def where(self, name: str, *sub) -> PathKey:
        """Where a setting was written; the shot itself for a built-in default."""
        if name not in self.origin:
            return self.shot_path
        return self.origin[name] + sub


class Checker:
    """Diagnostics at document positions, and the spec's input files through `inputs`."""

    def __init__(self, src: Source, inputs: Inputs):
        self.src, self.inputs = src, inputs
        self.diags: list[Diagnostic] = []

    def error(self, path: PathKey, message: str, *, key: bool = False, code: str = "") -> None:
        d = self.src.diag(path, message, key=key)
        self.diags.append(dataclasses.replace(d, code=code) if code else d)

    def warn(self, path: PathKey, message: str) -> None:
        self.diags.append(self.src.diag(path, message, "warning"))

    @property
    def error_count(self) -> int:
        return sum(d.severity == "error" for d in self.diags)

    def file(self, where: PathKey, value: str) -> Path | None:
        try:
            return self.inputs.file(value)
        except InputError as e:
            self.error(where, str(e), code=e.code)
            return None

    def image_at(self, where: PathKey, value: str) -> Path | None:
        try:
            return self.inputs.image(value)
        except InputError as e:
            self.error(where, str(e), code=e.code)
            return None

    def image_path(self, s: Settings, name: str) -> Path | None:
        if s[name] is None:
            return None
        return self.image_at(s.where(name), s[name])

    def probe(self, s: Settings, name: str):
        info, problem, severity = self.inputs.probe(s[name])
        if problem is not None:
            (self.error if severity == "error" else self.warn)(s.where(name), problem)
        return info


def audio(c: Checker, s: Settings) -> bool:
    """Whether the shot has sound: `audio`, else the format's default (mp4 has a track)."""
    fmt = s["format"]
    on = s["audio"] if s["audio"] is not None else fmt not in SILENT_FORMATS
    if on and fmt in SILENT_FORMATS:
        c.error(
            s.where("audio"),
            f"audio is only possible in mp4: {fmt} is a silent "
            f"format; set `audio: false` or `format: mp4`",
        )
    return on


def temporal_upscale(c: Checker, s: Settings, model: ModelInfo) -> str | None:
    temporal = s["temporal_upscale"]
    if temporal and temporal not in model.temporal_upscales:
        c.error(
            s.where("temporal_upscale"),
            f"temporal upscale {temporal} is not "
            f"available on {model.name}" + _available(model.temporal_upscales),
        )
        return None
    return temporal


def motion_tail(c: Checker, s: Settings, shortest: int, grid: int) -> int:
    """The shot's motion tail: 0 or on the tail grid (8m+1; 16m+1 with temporal x2, where it
    is 8m+1 rendered frames), so that the carry's whole latent frames hold exactly the frames
    the stitch drops (runtime/carry.py). Not given, it is 17, or the longest tail on the grid
    below `shortest` (the shortest clip) when that is shorter. A mold script keeps its own
    tail: mold's rules are checked, and warned about, where it is read (spec/mold.py)."""
    tail = s["motion_tail"]
    if "motion_tail" not in s.origin:
        tail = tail if tail < shortest else max(0, grid_neighbours(shortest - 1, grid)[0])
        return tail if tail < shortest else 0
    if getattr(c.src, "mold", False) or tail == 0 or (tail - 1) % grid == 0:
        return tail
    lo, hi = grid_neighbours(tail, grid)
    valid = f"{lo} or {hi}" if lo < tail else f"{hi}"
    why = (
        "with temporal_upscale x2 a tail of 16m+1 frames is 8m+1 rendered frames; "
        if grid > FRAME_GRID
        else ""
    )
    c.error(
        s.where("motion_tail"),
        f"motion_tail {tail} is off the tail grid: the carry holds whole latent frames (the "
        f"first frame alone, then 8 frames each), so the tail is 0 or {grid}m+1 "
        f"({', '.join(str(grid * m + 1) for m in range(4))}, ...); {why}nearest valid "
        f"tails: {valid}",
    )
    return tail


def check_half_rate(c: Checker, s: Settings, chain, keyframes) -> None:
    """With temporal x2 every rendered frame becomes two: keyframes must fit."""
    seen: dict[tuple[int, int], int] = {}
    for k, (frame, _) in enumerate(keyframes):
        idx, local = locate_frame(chain.spans, frame)
        if (idx, local // 2) in seen:
            c.error(
                s.where("keyframes", k, "frame"),
                f"keyframes at frames {seen[(idx, local // 2)]} and {frame} land on the "
                "same rendered frame with temporal_upscale x2 (rendered at half rate); "
                "move one",
            )
        seen.setdefault((idx, local // 2), frame)


def choose_pipeline(c: Checker, s: Settings, model: ModelInfo) -> str:
    chosen, why = s["pipeline"], None
    if chosen == "auto":
        # the inputs a shot gives decide what it is; the first match wins
        for name, test, pipeline in (
            ("retake", s["retake"] is not None, "retake"),
            ("audio_file", bool(s["audio_file"]), "a2vid"),
            ("keyframes", len(s["keyframes"]) >= 2, "keyframe"),
            ("video", bool(s["video"]), "ic-lora"),
        ):
            if test:
                chosen, why = pipeline, name
                break
        else:
            chosen = model.base_pipeline
    if chosen not in model.pipelines:
        where = s.where(why) if why else s.where("pipeline")
        because = f" (`pipeline: auto` picked it for `{why}`)" if why else ""
        c.error(
            where,
            f"pipeline '{chosen}' is not available on {model.name}{because}"
            + _available(model.pipelines),
        )
    return chosen


def sizes(c: Checker, s: Settings, model: ModelInfo, pipeline: str):
    width, height = s["width"], s["height"]
    up = s["spatial_upscale"]
    if up and up not in model.spatial_upscales:
        hint = " (x1.5 exists for ltx-2.3 models only)" if up == "x1.5" else ""
        c.error(
            s.where("spatial_upscale"),
            f"spatial upscale {up} is not available on "
            f"{model.name}{hint}" + _available(model.spatial_upscales),
        )
        up = None
    scale = SPATIAL_SCALES[up] if up else 1.0
    base = []
    for name, value in (("width", width), ("height", height)):
        rendered = value / scale
        if rendered != int(rendered) or int(rendered) % SIZE_GRID:
            lo, hi = _size_neighbours(value, scale)
            how = f"render size {name} / {up}" if up else name
            c.error(
                s.where(name),
                f"{name} {value} is off the size grid: the {how} must be a "
                f"multiple of {SIZE_GRID}; nearest valid {name}s: {lo} or {hi}",
            )
        else:
            # the smallest pass is a two-stage pipeline's first, at half the size
            two = model.renders_in_two_stages(pipeline)
            smallest = first_pass_size(int(rendered)) if two else rendered
            if smallest < MIN_RENDER_SIZE:
                need = MIN_RENDER_SIZE * (2 if two else 1) * scale
                passes = f"the {pipeline} pipeline's first pass renders at half size; " * two
                c.error(
                    s.where(name),
                    f"{name} {value} is too small: {passes}the video VAE needs at least "
                    f"{MIN_RENDER_SIZE} px ({MIN_RENDER_SIZE // SIZE_GRID} latents) per "
                    f"side; use {name} >= {need:g}",
                )
        base.append(int(rendered))
    if model.renders_in_two_stages(pipeline):
        # the first pass renders at exactly half the size, so its x2 is the render size
        for (name, value), b in zip((("width", width), ("height", height)), base, strict=True):
            if b % SIZE_GRID == 0 and b % (2 * SIZE_GRID):
                lo, hi = _size_neighbours(value, 2 * scale)
                how = f"the render size ({name} / {up})" if up else name
                c.error(
                    s.where(name),
                    f"{name} {value}: the {pipeline} pipeline renders a first pass at half "
                    f"the size, so {how} must be a multiple of {2 * SIZE_GRID}; nearest "
                    f"valid {name}s: {lo} or {hi} (or `pipeline: one-stage`)",
                )
    return width, height, base[0], base[1]


def pass_size(c: Checker, s: Settings, model: ModelInfo, chain, temporal: bool) -> None:
    """The largest transformer pass (the longest clip at the output size: a spatial upscale
    is refined there) must fit what the runtime can do, said now rather than after minutes."""
    width, height = s["width"], s["height"]
    longest = max(span.frames for span in chain.spans)
    rendered = (longest - 1) // 2 + 1 if temporal else longest
    tokens = latent_tokens(rendered, width, height)
    if tokens > model.max_latent_tokens:
        per_frame = (width // SIZE_GRID) * (height // SIZE_GRID)
        frames = ((model.max_latent_tokens // max(per_frame, 1)) - 1) * FRAME_GRID + 1
        if temporal and frames >= 1:
            frames = (frames - 1) * 2 + 1  # clip_frames counts output frames
        fix = (
            f"lower width/height, or clip_frames to at most {frames}"
            if frames >= 1
            else "lower width/height"
        )
        c.error(
            s.where("width"),
            f"{width}x{height} with clips of {rendered} rendered frames is {tokens:,} latent "
            f"tokens per pass, above the {model.max_latent_tokens:,} that {model.name} can "
            f"render; {fix}",
        )


def length(c: Checker, s: Settings, fps: float, pipeline: str):
    if s["frames"] is not None and s["duration"] is not None:
        c.error(s.where("duration"), "give `frames` or `duration`, not both")
        return None, False
    if s["duration"] is not None:
        total = round(s["duration"] * fps)
        if total < 1:
            c.error(s.where("duration"), f"{s['duration']} s at {fps:g} fps is no frame")
            return None, False
        return total, False
    if s["frames"] is not None:
        return s["frames"], True
    if pipeline == "retake" and s["video"]:
        info = c.probe(s, "video")
        if info is not None:
            return max(1, round(info.duration * fps)), False
        c.error(
            s.where("video"),
            "cannot tell how long the retake is: give `frames` or "
            "`duration` (the source could not be read)",
        )
        return None, False
    return None, True  # one clip of clip_frames, the documented default


def clip_frames(c: Checker, s: Settings, model: ModelInfo, grid: int) -> int:
    clip = s["clip_frames"]
    if clip is None:
        return model.clip_cap
    if not on_frame_grid(clip) or (clip - 1) % grid:
        lo, hi = grid_neighbours(clip, grid)
        why = " (temporal upscale renders every clip at half the frames)" if grid > 8 else ""
        c.error(
            s.where("clip_frames"),
            f"clip_frames {clip} is off the {grid}k+1 grid{why}: use {lo} or {hi}",
        )
        return model.clip_cap
    if clip > model.clip_cap:
        c.warn(
            s.where("clip_frames"),
            f"clip_frames {clip} is above {model.name}'s cap "
            f"of {model.clip_cap}; clamped to {model.clip_cap}",
        )
        return model.clip_cap
    return clip


def prompts(c: Checker, s: Settings, count: int) -> list[str] | None:
    prompts, prompt = s["prompts"], s["prompt"]
    use_list = prompts is not None
    if prompts is not None and prompt is not None:
        # the more specific of the two wins: a shot's own `prompt` beats `defaults.prompts`
        if s.where("prompt")[0] == s.where("prompts")[0]:
            c.error(s.where("prompts"), "give `prompt` or `prompts`, not both")
            return None
        use_list = s.where("prompts")[0] == "shots"
    if use_list:
        if len(prompts) != count:
            plural = "clip" if count == 1 else "clips"
            c.error(
                s.where("prompts"),
                f"{len(prompts)} prompts for {count} planned "
                f"{plural}: give exactly {count} (one per clip), or one `prompt`",
            )
            return None
        return list(prompts)
    if prompt is None:
        if s.broken & {"prompt", "prompts"}:
            return None  # its type error is already reported
        c.error(
            s.shot_path,
            "missing `prompt`: say what the shot shows (or give `prompts`, one per clip)",
        )
        return None
    return [prompt] * count


def keyframes(c: Checker, s: Settings, total: int, pipeline: str) -> list[tuple[int, Path]]:
    out, seen = [], {}
    for k, kf in enumerate(s["keyframes"]):
        where = s.where("keyframes", k)
        if kf.frame >= total:
            c.error(
                where + ("frame",),
                f"keyframe frame {kf.frame} is past the shot's end: frames run 0 to {total - 1}",
            )
        elif kf.frame in seen:
            c.error(
                where + ("frame",),
                f"two keyframes on frame {kf.frame} (also "
                f"keyframes[{seen[kf.frame]}]): one image per frame",
            )
        seen.setdefault(kf.frame, k)
        path = c.image_at(where + ("image",), kf.image)
        if path is not None:
            out.append((kf.frame, path))
    if pipeline == "keyframe" and len(s["keyframes"]) < 2:
        c.error(
            s.where("keyframes") if s["keyframes"] else s.where("pipeline"),
            "the keyframe pipeline needs at least two keyframes (e.g. frame 0 and the last frame)",
        )
    return out


def check_media(c: Checker, s: Settings, pipeline: str, model: ModelInfo) -> None:
    for k, lora in enumerate(s["loras"]):
        path = c.file(s.where("loras", k, "path"), lora.path)
        if path is not None and path.suffix != ".safetensors":
            c.error(s.where("loras", k, "path"), "LoRA files must be .safetensors")
    if s["camera_control"] and not model.camera_control:
        c.error(
            s.where("camera_control"),
            f"camera presets exist for LTX-2 19B only; on "
            f"{model.name} pass the camera LoRA as an explicit .safetensors file in "
            "`loras`",
        )
    if s["audio_file"]:
        c.file(s.where("audio_file"), s["audio_file"])
    elif pipeline == "a2vid":
        c.error(
            s.where("pipeline"),
            "the a2vid pipeline needs `audio_file`, the audio the video follows",
        )
    if s["video"]:
        c.file(s.where("video"), s["video"])
    if pipeline == "retake":
        if not s["video"]:
            c.error(
                s.where("retake") if s["retake"] else s.where("pipeline"),
                "retake needs `video`, the source clip to regenerate part of",
            )
        elif s["retake"] is None:
            c.error(
                s.where("pipeline"),
                "retake needs `retake: {start, end}`, the seconds of the source clip to regenerate",
            )
        else:
            check_retake(c, s)
    elif s["retake"] is not None:
        c.error(
            s.where("retake"),
            f"`retake` is only used by the retake pipeline; "
            f"this shot runs {pipeline} (remove `pipeline` or set it to retake)",
        )
    if pipeline == "ic-lora":
        if not s["video"]:
            c.error(s.where("pipeline"), "ic-lora needs `video`, the clip that guides it")
        if not s["loras"]:
            c.error(s.where("pipeline"), "ic-lora needs an IC-LoRA in `loras`")


def check_retake(c: Checker, s: Settings) -> None:
    window = s["retake"]
    if window.end <= window.start:
        c.error(
            s.where("retake", "end"),
            f"retake end {window.end:g} s must be after its start {window.start:g} s",
        )
        return
    info = c.probe(s, "video")
    if info is not None and window.end > info.duration + 1e-6:
        c.error(
            s.where("retake", "end"),
            f"retake end {window.end:g} s is past the end "
            f"of '{s['video']}' ({info.duration:.2f} s)",
        )


def check_film_output(
    c: Checker, output: str, shots: list[ShotPlan], out_dir: Path | None = None
) -> str | None:
    """The film's path: `output` from the spec's folder, or its file name in `--out DIR`."""
    path = Path(output)
    if format_of(output) is None:
        c.error(
            ("output",),
            f"the film's output must end in .mp4, .gif, .apng or .webp, "
            f"got '{path.suffix or output}'",
        )
        return None
    sizes = {(p.width, p.height, p.fps) for p in shots}
    if len(sizes) > 1:
        first = shots[0]
        odd = next(
            p for p in shots if (p.width, p.height, p.fps) != (first.width, first.height, first.fps)
        )
        c.error(
            ("output",),
            f"shots joined into one film must share size and fps: "
            f"'{first.id}' is {first.width}x{first.height}@{first.fps:g} but "
            f"'{odd.id}' is {odd.width}x{odd.height}@{odd.fps:g}",
        )
        return None
    if out_dir is not None:  # --out is the user's own: the film's file name goes there
        film = out_dir / path.name
    else:
        try:
            c.inputs.resolve(output)  # symlinks followed: it must stay inside the project
            # the folder resolved, the name kept: delivery replaces a link, never writes through
            film = c.inputs.resolve(str(path.parent)) / path.name
        except InputError as e:
            c.error(("output",), str(e))
            return None
    if film.is_dir():
        c.error(("output",), f"the film's output {output} is a folder: name a file")
        return None
    for shot in shots:
        if Path(shot.output_path) == film:
            c.error(
                ("output",),
                f"the film's output is also shot '{shot.id}''s file "
                f"({output}); name the film differently",
            )
            return None
    return str(film)


def _available(values, what: str = "") -> str:
    return f"; available: {', '.join(values)}" if values else "; none available"


def _size_neighbours(value: int, scale: float) -> tuple[int, int]:
    """The nearest output sizes whose render size (output / scale) is on the 32 grid."""
    step = SIZE_GRID * scale
    k = value / step
    lo, hi = math.floor(k), math.ceil(k)
    while (lo * step) != int(lo * step):
        lo -= 1
    while (hi * step) != int(hi * step):
        hi += 1
    if hi == lo:
        hi += 1
    return max(int(lo * step), int(step)), int(hi * step)
