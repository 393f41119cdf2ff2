"""The planner: a spec file in, a validated stage plan out. No I/O beyond reading the spec and
probing the files it names; the executor is the only place that writes."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from moldbatch.errors import Diagnostic
from moldbatch.models import (
    FRAME_GRID,
    MIN_RENDER_SIZE,
    MODELS,
    SIZE_GRID,
    SPATIAL_SCALES,
    ModelInfo,
    first_pass_size,
    grid_ceil,
    grid_neighbours,
    on_frame_grid,
)
from moldbatch.plan.chain import ClipSpan, chain_clips, locate_frame
from moldbatch.plan.keys import FileDigests, content_key
from moldbatch.plan.model import ClipPlan, Plan, ShotPlan, Stage
from moldbatch.spec.messages import did_you_mean, pydantic_diagnostics
from moldbatch.spec.mold import film_from_mold, is_mold_script
from moldbatch.spec.schema import (
    BUILTIN_DEFAULTS,
    FILM_FIELDS,
    SETTING_FIELDS,
    SHOT_FIELDS,
    Film,
    LoraSpec,
    Shot,
    ShotSettings,
)
from moldbatch.spec.source import PathKey, Source, SourceError, read_source

FORMATS = ("mp4", "gif", "apng", "webp")
SILENT_FORMATS = ("gif", "apng", "webp")
MAX_CLIPS = 1000  # per shot: far beyond any real chain, and it bounds a plan's size
IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}


def plan_file(
    path: str | Path,
    *,
    display: str | None = None,
    out_dir: Path | None = None,
    strict: bool = False,
    workdir: Path | None = None,
) -> Plan:
    """Read, validate and compile one spec file (or a mold chain script). Never raises for a
    bad spec: the plan's diagnostics say what is wrong."""
    path = Path(path)
    file = display or str(path)
    try:
        src = read_source(path, file)
    except SourceError as e:
        return Plan(file=file, path=path, name=path.stem, diagnostics=[e.diagnostic])
    found: list[Diagnostic] = []
    if path.suffix.lower() == ".toml" and is_mold_script(src.data):
        # inline images are decoded into the work folder, named by their bytes
        inline = (workdir or path.resolve().parent / ".moldbatch") / "inline"
        film, found = film_from_mold(src, inline)
        if film is None:
            return Plan(file=file, path=path, name=path.stem, diagnostics=found)
        src = film
    plan = Planner(src, out_dir=out_dir).run()
    if found:
        plan.diagnostics = sorted(found + plan.diagnostics, key=lambda d: (d.line, d.column))
        if any(d.severity == "error" for d in found):
            plan.stages, plan.shots = [], []
    if strict:
        plan.diagnostics = [
            Diagnostic(d.file, d.line, d.column, d.path, d.message, "error")
            for d in plan.diagnostics
        ]
    return plan


def _known_fields(loc: PathKey) -> list[str]:
    """The keys allowed at a place in the document (for 'did you mean')."""
    if len(loc) == 0:
        return list(FILM_FIELDS)
    if loc[0] == "defaults" and len(loc) == 1:
        return list(SETTING_FIELDS)
    if loc[0] == "shots" and len(loc) == 2:
        return list(SHOT_FIELDS)
    tail = [p for p in loc if isinstance(p, str)][-1]
    return {
        "loras": list(LoraSpec.model_fields),
        "keyframes": ["frame", "image"],
        "retake": ["start", "end"],
    }.get(tail, [])


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


@dataclass
class _Draft:
    """What one clip says before it becomes a ClipPlan."""

    prompt: str
    seed: int
    image: Path | None
    negative_prompt: str | None


@dataclass
class _Chain:
    spans: list[ClipSpan]
    drafts: list[_Draft]
    seams: list[tuple[str, int]]  # the boundary before clips 1..n-1: (transition, overlap)
    total: int  # the shot's frames after the stitch and trim
    stitched: int  # frames the stitch yields before the trim


class Planner:
    def __init__(self, src: Source, out_dir: Path | None = None):
        self.src = src
        self.root = src.path.parent.resolve()
        self.out_dir = out_dir.resolve() if out_dir is not None else None
        self.diags: list[Diagnostic] = []
        self.digest = FileDigests()
        self._probes: dict[Path, object] = {}
        self._shot_settings: dict[str, Settings] = {}
        self._broken: dict[PathKey, set] = {}  # fields dropped for errors already reported
        self._paths: dict[str, Path] = {}  # each distinct path resolved and checked once
        self._is_file: dict[Path, bool] = {}
        self._heads: dict[Path, bytes] = {}

    # --- reporting --------------------------------------------------------------------
    def error(self, path: PathKey, message: str, *, key: bool = False) -> None:
        self.diags.append(self.src.diag(path, message, key=key))

    def warn(self, path: PathKey, message: str) -> None:
        self.diags.append(self.src.diag(path, message, "warning"))

    # --- the pass ---------------------------------------------------------------------
    def run(self) -> Plan:
        src = self.src
        data = src.data
        name = src.path.stem
        if not isinstance(data, dict):
            self.error(
                (),
                "a spec is a mapping with at least `version: 1` and `shots:` (see specs/README.md)",
            )
            return self._plan(name)
        if isinstance(data.get("name"), str):
            name = data["name"]
        try:
            Film.model_validate(data)  # every field-level error of the file, at once
        except ValidationError as e:
            self.diags += pydantic_diagnostics(src, (), e, _known_fields)
        defaults = self._settings_model(data.get("defaults"), ("defaults",), ShotSettings)
        shots_raw = data.get("shots") if isinstance(data.get("shots"), list) else []
        shots = [self._settings_model(s, ("shots", i), Shot) for i, s in enumerate(shots_raw)]
        plans: list[ShotPlan] = []
        seen: dict[str, int] = {}
        if defaults is None:
            defaults = ShotSettings()
        for i, shot in enumerate(shots):
            if shot is None:
                continue
            if shot.id in seen:
                self.error(
                    ("shots", i, "id"),
                    f"duplicate shot id '{shot.id}' (first used by "
                    f"shots[{seen[shot.id]}]): shot ids must be unique",
                )
                continue
            seen[shot.id] = i
            plan = self._plan_shot(i, shot, defaults)
            if plan is not None:
                plans.append(plan)
        output = None
        if isinstance(data.get("output"), str):
            output = self._check_film_output(data["output"], plans)
        plan = self._plan(name, plans, output)
        if plan.valid:
            plan.stages = self._stages(plans, output)
        return plan

    def _plan(self, name, shots=(), output=None) -> Plan:
        # a finding about `defaults` is made once per shot that inherits it: say it once
        unique = list(dict.fromkeys(self.diags))
        diags = sorted(unique, key=lambda d: (d.line, d.column, d.severity != "error"))
        return Plan(self.src.file, self.src.path, name, list(shots), [], output, diags)

    def _settings_model(self, raw, where: PathKey, model):
        """Validate leniently: fields with errors (already reported by the whole-film pass) are
        dropped so that the cross-field rules still check everything else."""
        if raw is None:
            return ShotSettings() if model is ShotSettings else None
        if not isinstance(raw, dict):
            return None
        for _ in range(2):
            try:
                return model.model_validate(raw)
            except ValidationError as e:
                bad = {err["loc"][0] for err in e.errors() if err["loc"]}
                if not bad or "id" in bad:
                    return None
                self._broken.setdefault(where, set()).update(bad)
                raw = {k: v for k, v in raw.items() if k not in bad}
        return None

    # --- one shot ---------------------------------------------------------------------
    def _merge(self, i: int, shot: Shot, defaults: ShotSettings) -> Settings:
        s = Settings({}, {}, ("shots", i))
        s.broken = self._broken.get(("shots", i), set()) | self._broken.get(("defaults",), set())
        for name in SETTING_FIELDS:
            own, common = getattr(shot, name), getattr(defaults, name)
            if own is not None:
                s.values[name], s.origin[name] = own, ("shots", i, name)
            elif common is not None:
                s.values[name], s.origin[name] = common, ("defaults", name)
            else:
                s.values[name] = BUILTIN_DEFAULTS.get(name)
        return s

    def _plan_shot(self, i: int, shot: Shot, defaults: ShotSettings) -> ShotPlan | None:
        s = self._merge(i, shot, defaults)
        before = len([d for d in self.diags if d.severity == "error"])

        model = MODELS.get(s["model"])
        if model is None:
            self.error(
                s.where("model"),
                f"unknown model '{s['model']}'"
                + did_you_mean(s["model"], MODELS)
                + f" (known: {', '.join(MODELS)}; see `moldbatch models`)",
            )
            return None
        fps = float(s["fps"])
        fmt = s["format"]
        audio = s["audio"] if s["audio"] is not None else fmt == "mp4"
        if audio and fmt in SILENT_FORMATS:
            self.error(
                s.where("audio"),
                f"audio is only possible in mp4: {fmt} is a silent "
                f"format; set `audio: false` or `format: mp4`",
            )

        pipeline = self._pipeline(s, model)
        width, height, rw, rh = self._sizes(s, model, pipeline)
        temporal = s["temporal_upscale"]
        if temporal and temporal not in model.temporal_upscales:
            self.error(
                s.where("temporal_upscale"),
                f"temporal upscale {temporal} is not "
                f"available on {model.name}" + _available(model.temporal_upscales),
            )
            temporal = None
        grid = FRAME_GRID * (2 if temporal else 1)  # each clip is rendered at half the frames

        chain = (
            self._explicit_chain(s, shot, model, grid)
            if shot.clips is not None
            else self._planned_chain(s, model, pipeline, fps, grid)
        )
        keyframes = self._keyframes(s, chain.total, pipeline) if chain else []
        if chain is not None and temporal:
            self._check_half_rate(s, chain, keyframes)
        self._check_media(s, pipeline, model)
        errors = len([d for d in self.diags if d.severity == "error"])
        if chain is None and not any(d.severity == "error" for d in self.diags):
            # never drop a shot without saying why
            self.error(s.shot_path, "this shot cannot be planned; see the warnings above")
        if errors > before or chain is None:
            return None

        self._shot_settings[shot.id] = s
        render_fps = fps / 2 if temporal else fps
        clips = []
        for span, draft in zip(chain.spans, chain.drafts, strict=True):
            rendered = (span.frames - 1) // 2 + 1 if temporal else span.frames
            c = ClipPlan(span.index, rendered, span.start, span.keep_from, draft.prompt, draft.seed)
            c.image = str(draft.image) if draft.image is not None else None
            c.negative_prompt = draft.negative_prompt
            if s["audio_file"] and pipeline == "a2vid":
                c.audio_window = [span.start / fps, span.end / fps]
            clips.append(c)
        for frame, path in keyframes:
            idx, local = locate_frame(chain.spans, frame)
            if temporal:
                local = local // 2
            clips[idx].keyframes.append({"frame": local, "image": str(path)})
        transition = s["transition"]
        return ShotPlan(
            id=shot.id,
            model=model.name,
            pipeline=pipeline,
            frames=chain.total,
            width=width,
            height=height,
            fps=fps,
            render_width=rw,
            render_height=rh,
            render_fps=render_fps,
            format=fmt,
            audio=audio,
            transition=transition,
            overlap={"smooth": s["motion_tail"], "fade": s["fade_frames"], "cut": 0}[transition],
            motion_tail=s["motion_tail"],
            fade_frames=s["fade_frames"],
            clips=clips,
            seams=[list(seam) for seam in chain.seams],
            frames_stitched=chain.stitched,
            spatial_upscale=s["spatial_upscale"],
            temporal_upscale=temporal,
            output_path=str((self.out_dir or self.root / "renders") / f"{shot.id}.{fmt}"),
        )

    def _check_half_rate(self, s: Settings, chain: _Chain, keyframes) -> None:
        """With temporal x2 every rendered frame becomes two: tails and keyframes must fit."""
        if any(kind == "smooth" and n % 2 for kind, n in chain.seams):
            t = s["motion_tail"]
            self.error(
                s.where("motion_tail"),
                f"with temporal_upscale x2 the motion tail must be even (each rendered frame "
                f"becomes two): use {t - 1} or {t + 1}",
            )
        seen: dict[tuple[int, int], int] = {}
        for k, (frame, _) in enumerate(keyframes):
            idx, local = locate_frame(chain.spans, frame)
            if (idx, local // 2) in seen:
                self.error(
                    s.where("keyframes", k, "frame"),
                    f"keyframes at frames {seen[(idx, local // 2)]} and {frame} land on the "
                    "same rendered frame with temporal_upscale x2 (rendered at half rate); "
                    "move one",
                )
            seen.setdefault((idx, local // 2), frame)

    def _planned_chain(
        self, s: Settings, model: ModelInfo, pipeline: str, fps: float, grid: int
    ) -> _Chain | None:
        """A shot of `frames`/`duration` split into clips by the chain arithmetic."""
        total, exact = self._length(s, fps, pipeline)
        clip = self._clip_frames(s, model, grid)
        if total is None and exact:
            total = clip
        transition = s["transition"]
        overlap = {"smooth": s["motion_tail"], "fade": s["fade_frames"], "cut": 0}[transition]
        if transition == "smooth" and not 0 <= overlap < clip:
            self.error(
                s.where("motion_tail"),
                f"motion_tail must be below clip_frames "
                f"({clip}) so every clip adds fresh frames; try {min(4, clip - 1)}",
            )
            overlap = 0
        if transition == "fade" and overlap >= clip:
            self.error(
                s.where("fade_frames"),
                f"fade_frames must be below clip_frames ({clip}); try {min(8, clip - 1)}",
            )
            overlap = 0
        if total is None:
            return None
        if total <= clip and exact and not (on_frame_grid(total) and (total - 1) % grid == 0):
            lo, hi = grid_neighbours(total, grid)
            self.error(
                s.where("frames"),
                f"{total} frames is off the {grid}k+1 frame grid: use "
                f"{lo} or {hi} (or give `duration` to have the shot trimmed exactly)",
            )
        count = 1 if total <= clip else 1 + math.ceil((total - clip) / (clip - overlap))
        if count > MAX_CLIPS:
            self.error(
                s.where("frames") if s["frames"] is not None else s.where("duration"),
                f"this shot would need {count} clips; at most {MAX_CLIPS} per shot: "
                "raise clip_frames, lower motion_tail, or split it into shots",
            )
            return None
        spans = chain_clips(total, clip, overlap, s["last_clip"], grid)
        if transition == "fade" and len(spans) > 2 and 2 * overlap > clip:
            # an inner clip fades in from its predecessor and out into its successor
            self.error(
                s.where("fade_frames"),
                f"fade_frames must be at most half of clip_frames ({clip}) so an inner clip "
                f"can fade in and out; try {clip // 2}",
            )
        prompts = self._prompts(s, len(spans))
        image = self._image_path(s, "image")
        if prompts is None:
            return None
        drafts = [
            _Draft(prompts[i], s["seed"] + i, image if i == 0 else None, None)
            for i in range(len(spans))
        ]
        seams = [(transition, overlap)] * (len(spans) - 1)
        return _Chain(spans, drafts, seams, total, spans[-1].end)

    def _explicit_chain(
        self, s: Settings, shot: Shot, model: ModelInfo, grid: int
    ) -> _Chain | None:
        """A shot given as `clips`: each clip its own length, prompt, image and seam."""
        base = s.shot_path + ("clips",)
        for name, instead in (("frames", "frames"), ("duration", "frames"), ("prompts", "prompts")):
            if getattr(shot, name) is not None:
                self.error(
                    s.shot_path + (name,),
                    f"give `clips` or `{name}`, not both: with `clips` the shot's "
                    + (
                        "length follows from its clips"
                        if instead == "frames"
                        else "prompts are the clips' own"
                    )
                    + f"; remove `{name}` (or `clips`)",
                )
        spans, drafts, seams = [], [], []
        start, ok = 0, True
        for i, clip in enumerate(shot.clips):
            where = base + (i,)
            if not on_frame_grid(clip.frames) or (clip.frames - 1) % grid:
                lo, hi = grid_neighbours(clip.frames, grid)
                self.error(
                    where + ("frames",),
                    f"{clip.frames} frames is off the {grid}k+1 frame grid: use {lo} or {hi}",
                )
                ok = False
            elif clip.frames > model.clip_cap:
                self.error(
                    where + ("frames",),
                    f"{clip.frames} frames is above "
                    f"{model.name}'s cap of {model.clip_cap} frames per clip; split "
                    "it into more clips",
                )
                ok = False
            if i == 0:
                seam = None
            else:
                kind = clip.transition or s["transition"]
                amount = {
                    "smooth": s["motion_tail"],
                    "cut": 0,
                    "fade": clip.fade_frames or s["fade_frames"],
                }[kind]
                seam = (kind, amount)
                seams.append(seam)
                start = spans[-1].end - amount
                if amount >= clip.frames or (kind == "fade" and amount > spans[-1].frames):
                    what = "motion_tail" if kind == "smooth" else "fade_frames"
                    self.error(
                        where + ("frames",),
                        f"clip {i} has {clip.frames} frames: its "
                        f"{kind} seam overlaps {amount} ({what}); every clip must add "
                        "fresh frames",
                    )
                    ok = False
            keep_from = start if seam is None or seam[0] == "cut" else start + seam[1]
            spans.append(ClipSpan(i, clip.frames, start, keep_from))
            prompt = clip.prompt if clip.prompt is not None else s["prompt"]
            if prompt is None:
                self.error(where, "missing `prompt`: give this clip a prompt, or the shot one")
                ok = False
            image = None
            if clip.image is not None:
                image = self._image_at(where + ("image",), clip.image)
            elif i == 0:
                image = self._image_path(s, "image")
            seed = s["seed"] ^ clip.seed_offset if clip.seed_offset is not None else s["seed"] + i
            drafts.append(_Draft(prompt, seed, image, clip.negative_prompt))
        # a clip's frames must hold the overlap before it and the fade after it (the stitch's rule)
        for i in range(1, len(spans) - 1):
            head = seams[i - 1][1] if seams[i - 1][0] != "cut" else 0
            tail = seams[i][1] if seams[i][0] == "fade" else 0
            if head and tail and head + tail > spans[i].frames:
                self.error(
                    base + (i, "frames"),
                    f"clip {i} has {spans[i].frames} frames, "
                    f"fewer than the {head + tail} its seams need ({head} overlapping "
                    f"the clip before, {tail} fading into the clip after)",
                )
                ok = False
        if not ok:
            return None
        total = spans[-1].end
        return _Chain(spans, drafts, seams, total, total)

    def _pipeline(self, s: Settings, model: ModelInfo) -> str:
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
            self.error(
                where,
                f"pipeline '{chosen}' is not available on {model.name}{because}"
                + _available(model.pipelines),
            )
        return chosen

    def _sizes(self, s: Settings, model: ModelInfo, pipeline: str):
        width, height = s["width"], s["height"]
        up = s["spatial_upscale"]
        if up and up not in model.spatial_upscales:
            hint = " (x1.5 exists for ltx-2.3 models only)" if up == "x1.5" else ""
            self.error(
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
                self.error(
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
                    self.error(
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
                    self.error(
                        s.where(name),
                        f"{name} {value}: the {pipeline} pipeline renders a first pass at half "
                        f"the size, so {how} must be a multiple of {2 * SIZE_GRID}; nearest "
                        f"valid {name}s: {lo} or {hi} (or `pipeline: one-stage`)",
                    )
        return width, height, base[0], base[1]

    def _length(self, s: Settings, fps: float, pipeline: str):
        if s["frames"] is not None and s["duration"] is not None:
            self.error(s.where("duration"), "give `frames` or `duration`, not both")
            return None, False
        if s["duration"] is not None:
            total = round(s["duration"] * fps)
            if total < 1:
                self.error(s.where("duration"), f"{s['duration']} s at {fps:g} fps is no frame")
                return None, False
            return total, False
        if s["frames"] is not None:
            return s["frames"], True
        if pipeline == "retake" and s["video"]:
            info = self._probe(s, "video")
            if info is not None:
                return max(1, round(info.duration * fps)), False
            self.error(
                s.where("video"),
                "cannot tell how long the retake is: give `frames` or "
                "`duration` (the source could not be read)",
            )
            return None, False
        return None, True  # one clip of clip_frames, the documented default

    def _clip_frames(self, s: Settings, model: ModelInfo, grid: int) -> int:
        clip = s["clip_frames"]
        if clip is None:
            return model.clip_cap
        if not on_frame_grid(clip) or (clip - 1) % grid:
            lo, hi = grid_neighbours(clip, grid)
            why = " (temporal upscale renders every clip at half the frames)" if grid > 8 else ""
            self.error(
                s.where("clip_frames"),
                f"clip_frames {clip} is off the {grid}k+1 grid{why}: use {lo} or {hi}",
            )
            return model.clip_cap
        if clip > model.clip_cap:
            self.warn(
                s.where("clip_frames"),
                f"clip_frames {clip} is above {model.name}'s cap "
                f"of {model.clip_cap}; clamped to {model.clip_cap}",
            )
            return model.clip_cap
        return clip

    def _prompts(self, s: Settings, count: int) -> list[str] | None:
        prompts, prompt = s["prompts"], s["prompt"]
        use_list = prompts is not None
        if prompts is not None and prompt is not None:
            # the more specific of the two wins: a shot's own `prompt` beats `defaults.prompts`
            if s.where("prompt")[0] == s.where("prompts")[0]:
                self.error(s.where("prompts"), "give `prompt` or `prompts`, not both")
                return None
            use_list = s.where("prompts")[0] == "shots"
        if use_list:
            if len(prompts) != count:
                plural = "clip" if count == 1 else "clips"
                self.error(
                    s.where("prompts"),
                    f"{len(prompts)} prompts for {count} planned "
                    f"{plural}: give exactly {count} (one per clip), or one `prompt`",
                )
                return None
            return list(prompts)
        if prompt is None:
            if s.broken & {"prompt", "prompts"}:
                return None  # its type error is already reported
            self.error(
                s.shot_path,
                "missing `prompt`: say what the shot shows (or give `prompts`, one per clip)",
            )
            return None
        return [prompt] * count

    def _keyframes(self, s: Settings, total: int, pipeline: str) -> list[tuple[int, Path]]:
        out, seen = [], {}
        for k, kf in enumerate(s["keyframes"]):
            where = s.where("keyframes", k)
            if kf.frame >= total:
                self.error(
                    where + ("frame",),
                    f"keyframe frame {kf.frame} is past the shot's "
                    f"end: frames run 0 to {total - 1}",
                )
            elif kf.frame in seen:
                self.error(
                    where + ("frame",),
                    f"two keyframes on frame {kf.frame} (also "
                    f"keyframes[{seen[kf.frame]}]): one image per frame",
                )
            seen.setdefault(kf.frame, k)
            path = self._image_at(where + ("image",), kf.image)
            if path is not None:
                out.append((kf.frame, path))
        if pipeline == "keyframe" and len(s["keyframes"]) < 2:
            self.error(
                s.where("keyframes") if s["keyframes"] else s.where("pipeline"),
                "the keyframe pipeline needs at least two keyframes "
                "(e.g. frame 0 and the last frame)",
            )
        return out

    def _image_path(self, s: Settings, name: str) -> Path | None:
        if s[name] is None:
            return None
        return self._image_at(s.where(name), s[name])

    def _image_at(self, where: PathKey, value: str) -> Path | None:
        path = self._file(where, value)
        if path is None:
            return None
        if path not in self._heads:
            try:
                with path.open("rb") as f:
                    self._heads[path] = f.read(8)
            except OSError as e:
                self.error(where, f"cannot read '{value}': {e.strerror or e}")
                return None
        if not any(self._heads[path].startswith(m) for m in IMAGE_MAGIC):
            self.error(where, f"'{value}' is not a PNG or JPEG image")
            return None
        return path

    def _resolve(self, value: str) -> Path:
        if value not in self._paths:
            self._paths[value] = (self.root / value).resolve()
        return self._paths[value]

    def _file(self, where: PathKey, value: str) -> Path | None:
        path = self._resolve(value)
        if path not in self._is_file:
            self._is_file[path] = path.is_file() and os.access(path, os.R_OK)
            if path.is_file() and not self._is_file[path]:
                self.error(where, f"cannot read '{value}': permission denied")
                return None
        if not self._is_file[path]:
            hint = (
                ""
                if Path(value).is_absolute()
                else " (paths are relative to the spec file's folder)"
            )
            self.error(where, f"file '{value}' not found{hint}")
            return None
        return path

    def _check_media(self, s: Settings, pipeline: str, model: ModelInfo) -> None:
        for k, lora in enumerate(s["loras"]):
            path = self._file(s.where("loras", k, "path"), lora.path)
            if path is not None and path.suffix != ".safetensors":
                self.error(s.where("loras", k, "path"), "LoRA files must be .safetensors")
        if s["camera_control"] and not model.camera_control:
            self.error(
                s.where("camera_control"),
                f"camera presets exist for LTX-2 19B only; on "
                f"{model.name} pass the camera LoRA as an explicit .safetensors file in "
                "`loras`",
            )
        if s["audio_file"]:
            self._file(s.where("audio_file"), s["audio_file"])
        elif pipeline == "a2vid":
            self.error(
                s.where("pipeline"),
                "the a2vid pipeline needs `audio_file`, the audio the video follows",
            )
        if s["video"]:
            self._file(s.where("video"), s["video"])
        if pipeline == "retake":
            if not s["video"]:
                self.error(
                    s.where("retake") if s["retake"] else s.where("pipeline"),
                    "retake needs `video`, the source clip to regenerate part of",
                )
            elif s["retake"] is None:
                self.error(
                    s.where("pipeline"),
                    "retake needs `retake: {start, end}`, the "
                    "seconds of the source clip to regenerate",
                )
            else:
                self._check_retake(s)
        elif s["retake"] is not None:
            self.error(
                s.where("retake"),
                f"`retake` is only used by the retake pipeline; "
                f"this shot runs {pipeline} (remove `pipeline` or set it to retake)",
            )
        if pipeline == "ic-lora":
            if not s["video"]:
                self.error(s.where("pipeline"), "ic-lora needs `video`, the clip that guides it")
            if not s["loras"]:
                self.error(s.where("pipeline"), "ic-lora needs an IC-LoRA in `loras`")

    def _check_retake(self, s: Settings) -> None:
        window = s["retake"]
        if window.end <= window.start:
            self.error(
                s.where("retake", "end"),
                f"retake end {window.end:g} s must be after its start {window.start:g} s",
            )
            return
        info = self._probe(s, "video")
        if info is not None and window.end > info.duration + 1e-6:
            self.error(
                s.where("retake", "end"),
                f"retake end {window.end:g} s is past the end "
                f"of '{s['video']}' ({info.duration:.2f} s)",
            )

    def _probe(self, s: Settings, name: str):
        path = self._resolve(s[name])
        if path in self._probes:
            return self._probes[path]
        info = None
        if path.is_file():
            try:
                from moldbatch.media.probe import probe
            except ImportError:
                self.warn(
                    s.where(name),
                    "cannot read media files without PyAV: install "
                    "moldbatch[gpu] to check this source's length",
                )
            else:
                try:
                    info = probe(path)
                except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
                    self.error(s.where(name), f"cannot read '{s[name]}' as video: {e}")
        self._probes[path] = info
        return info

    def _check_film_output(self, output: str, shots: list[ShotPlan]) -> str | None:
        path = Path(output)
        fmt = path.suffix.lower().lstrip(".")
        fmt = "apng" if fmt == "png" else fmt
        if fmt not in FORMATS:
            self.error(
                ("output",),
                f"the film's output must end in .mp4, .gif, .apng or .webp, "
                f"got '{path.suffix or output}'",
            )
            return None
        sizes = {(p.width, p.height, p.fps) for p in shots}
        if len(sizes) > 1:
            first = shots[0]
            odd = next(
                p
                for p in shots
                if (p.width, p.height, p.fps) != (first.width, first.height, first.fps)
            )
            self.error(
                ("output",),
                f"shots joined into one film must share size and fps: "
                f"'{first.id}' is {first.width}x{first.height}@{first.fps:g} but "
                f"'{odd.id}' is {odd.width}x{odd.height}@{odd.fps:g}",
            )
            return None
        film = (self.root / path).resolve() if not path.is_absolute() else path
        if film.is_dir():
            self.error(("output",), f"the film's output {output} is a folder: name a file")
            return None
        for shot in shots:
            if Path(shot.output_path) == film:
                self.error(
                    ("output",),
                    f"the film's output is also shot '{shot.id}''s file "
                    f"({output}); name the film differently",
                )
                return None
        return str(film)

    # --- stages -----------------------------------------------------------------------
    def _stages(self, shots: list[ShotPlan], output: str | None) -> list[Stage]:
        stages: list[Stage] = []
        for shot in shots:
            stages += self._shot_stages(shot)
        if output is not None and shots:
            fmt = Path(output).suffix.lower().lstrip(".")
            fmt = "apng" if fmt == "png" else fmt
            audio = fmt == "mp4" and any(p.audio for p in shots)
            needs = [f"{p.id}/stitch" for p in shots]
            keys = {st.id: st.key for st in stages}
            params = {
                "format": fmt,
                "audio": audio,
                "fps": shots[0].fps,
                "shots": [p.id for p in shots],
            }
            stages.append(
                Stage(
                    "film/join",
                    "join",
                    None,
                    needs,
                    content_key("join", params, [keys[n] for n in needs]),
                    params,
                    {"path": output},
                )
            )
        return stages

    def _shot_stages(self, shot: ShotPlan) -> list[Stage]:
        s = self._shot_settings[shot.id]
        loras = [
            {"path": str(p), "sha256": self.digest(p), "scale": lo.scale}
            for lo, p in ((lo, self._resolve(lo.path)) for lo in s["loras"])
        ]
        out: list[Stage] = []
        two_stage = MODELS[shot.model].renders_in_two_stages(shot.pipeline)
        common = {
            "model": shot.model,
            # What a clip renders follows from the model, the stage's size and its inputs; the
            # pipeline's name matters only where it says which media the clip follows. So
            # `distilled`, `two-stage`, `one-stage` and `keyframe` key alike ("generate").
            "pipeline": shot.pipeline if shot.pipeline in MEDIA_PIPELINES else "generate",
            # a two-stage pipeline's first pass renders at half the size
            "width": first_pass_size(shot.render_width) if two_stage else shot.render_width,
            "height": first_pass_size(shot.render_height) if two_stage else shot.render_height,
            "fps": shot.render_fps,
            "steps": s["steps"] or MODELS[shot.model].default_steps,
            "guidance": s["guidance"],
            "negative_prompt": s["negative_prompt"],
            "audio": shot.audio,
            "loras": loras,
            "camera_control": s["camera_control"],
        }
        for media in ("audio_file", "video"):
            if s[media]:
                path = self._resolve(s[media])
                common[media] = {"path": str(path), "sha256": self.digest(path)}
        if s["retake"] is not None:
            common["retake"] = {"start": s["retake"].start, "end": s["retake"].end}
        finals = []
        last: dict[str, Stage] = {}  # the previous clip's stage of each step of the ladder
        for clip in shot.clips:
            params = dict(common, prompt=clip.prompt, seed=clip.seed, frames=clip.frames)
            if clip.negative_prompt is not None:
                params["negative_prompt"] = clip.negative_prompt
            params["image"] = self._file_ref(clip.image)
            if clip.image is not None:
                params["image_strength"] = s["image_strength"]
            params["keyframes"] = [
                {"frame": k["frame"], **self._file_ref(k["image"])} for k in clip.keyframes
            ]
            if clip.audio_window is not None:
                params["audio_window"] = clip.audio_window
            if shot.pipeline in ("retake", "ic-lora"):
                # the seconds of the source this clip follows (shot time is source time)
                begin = clip.start / shot.fps
                params["source_window"] = [begin, begin + clip.frames / shot.render_fps]
            seam = shot.seams[clip.index - 1] if clip.index > 0 else None
            carry_tail = 0
            if seam is not None and seam[0] == "smooth" and seam[1] > 0:
                # the seam carries the previous clip's tail: this clip needs its latents
                # (in rendered frames: with temporal x2 a tail of T frames is T / 2 rendered)
                carry_tail = seam[1] // 2 if shot.temporal_upscale else seam[1]
                params["carry_tail"] = carry_tail
            final = self._ladder_stage(
                shot, "clip", clip.index, params, None, last, carry_tail, out
            )
            # what a refine pass needs of the clip: the same prompt, seed, LoRAs and conditions
            refine = {
                k: params[k]
                for k in ("prompt", "negative_prompt", "seed", "loras", "camera_control")
            }
            refine.update(image=params["image"], keyframes=params["keyframes"])
            if shot.pipeline == "ic-lora":
                # an IC-LoRA works with its reference tokens, which the refine pass has not
                refine["loras"] = []
            if clip.image is not None:
                refine["image_strength"] = params["image_strength"]
            if carry_tail:
                refine["carry_tail"] = carry_tail
            refine["audio"] = refine_audio(MODELS[shot.model], shot.pipeline, params["keyframes"])
            if two_stage:
                # stage 2: x2 latent upsample to the render size and a refine pass
                up = self._upscale_params(shot, "x2", None, refine)
                up.update(width=shot.render_width, height=shot.render_height, fps=shot.render_fps)
                final = self._ladder_stage(
                    shot, "refine", clip.index, up, final, last, carry_tail, out
                )
            if shot.spatial_upscale or shot.temporal_upscale:
                retake = shot.pipeline == "retake"
                up = self._upscale_params(
                    shot,
                    shot.spatial_upscale,
                    shot.temporal_upscale,
                    # a refine would re-noise the frames a retake keeps: it pastes them instead
                    refine if shot.spatial_upscale and not retake else None,
                )
                if retake:
                    up["retake_source"] = {
                        k: params[k] for k in ("video", "source_window", "retake")
                    }
                final = self._ladder_stage(
                    shot, "upscale", clip.index, up, final, last, carry_tail, out
                )
            finals.append(final)
        stitch = {
            "seams": shot.seams,
            "frames": shot.frames,
            "fps": shot.fps,
            "audio": shot.audio,
            "width": shot.width,
            "height": shot.height,
        }
        st = Stage(
            f"{shot.id}/stitch",
            "stitch",
            shot.id,
            [f.id for f in finals],
            content_key("stitch", stitch, [f.key for f in finals]),
            stitch,
        )
        out.append(st)
        export = {"format": shot.format, "fps": shot.fps, "audio": shot.audio}
        out.append(
            Stage(
                f"{shot.id}/export",
                "export",
                shot.id,
                [st.id],
                content_key("export", export, [st.key]),
                export,
                {"path": shot.output_path},
            )
        )
        return out

    @staticmethod
    def _upscale_params(shot: ShotPlan, spatial, temporal, refine: dict | None) -> dict:
        """An upscale stage's params; a spatial upscale is followed by a refine pass."""
        return {
            "model": shot.model,
            "spatial": spatial,
            "temporal": temporal,
            "width": shot.width,
            "height": shot.height,
            "fps": shot.fps,
            "audio": shot.audio,
            "refine": refine,
        }

    @staticmethod
    def _ladder_stage(
        shot: ShotPlan,
        step: str,
        index: int,
        params: dict,
        source: Stage | None,
        last: dict[str, Stage],
        carry_tail: int,
        out: list[Stage],
    ) -> Stage:
        """One clip's stage at one step of its ladder (clip -> refine -> upscale): it needs its
        `source` (the step below), and on a carrying seam the previous clip's stage at the same
        step, whose tail it holds (a clip needs its latents; a refine its refined latents)."""
        needs = [source] if source is not None else []
        if carry_tail and step in last and (step == "clip" or params.get("refine")):
            needs.append(last[step])
        kind = "clip" if step == "clip" else "upscale"  # a refine is an upscale that refines
        stage = Stage(
            f"{shot.id}/{step}-{index}",
            kind,
            shot.id,
            [n.id for n in needs],
            content_key(kind, params, [n.key for n in needs]),
            params,
        )
        out.append(stage)
        last[step] = stage
        return stage

    def _file_ref(self, path: str | None) -> dict | None:
        if path is None:
            return None
        return {"path": path, "sha256": self.digest(Path(path))}


MEDIA_PIPELINES = ("a2vid", "retake", "ic-lora")  # pipelines whose clips follow a media file


def refine_audio(model, pipeline: str, keyframes: list) -> str:
    """What a clip's refine does with its first pass's audio (runtime.types.Refine.audio), as
    the Lightricks pipeline that renders such a clip (docs/reference-parity.md). Like the
    clip's key, it follows the model and the inputs, not the pipeline's name: a2vid holds the
    audio it follows (`a2vid_two_stage.py`); a distilled model (`distilled.py`), keyframes
    (`keyframe_interpolation.py`) and an IC-LoRA (`ic_lora.py`) keep the refined audio; a dev
    model's text/image-to-video (`ti2vid_two_stages.py`) denoises it with the video but keeps
    the first pass's sound."""
    if pipeline == "a2vid":
        return "hold"
    if model.distilled or pipeline == "ic-lora" or keyframes:
        return "refine"
    return "keep"


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


__all__ = ["plan_file", "grid_ceil"]
