"""The planner: a spec file in, a validated stage plan out. It reads the spec and the files
it names (through `Inputs`) and writes nothing; the executor is the only place that writes.

The pass: the whole film is validated field by field (pydantic), each shot's settings are
merged with `defaults`, the cross-field rules (rules.py) check them, its clips are planned
(clips.py), and the stages and keys are built from what passed (ladder.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
from pathlib import Path

from pydantic import ValidationError

from moldbatch.errors import Diagnostic
from moldbatch.models import FRAME_GRID, MODELS, grid_ceil, rendered_tail, seam_overlap
from moldbatch.plan import rules
from moldbatch.plan.chain import locate_frame
from moldbatch.plan.clips import explicit_chain, planned_chain
from moldbatch.plan.inputs import GitReader, InputError, Inputs, allowed_paths
from moldbatch.plan.ladder import film_stages
from moldbatch.plan.rules import Checker, Settings
from moldbatch.plan.types import ClipPlan, Plan, ShotPlan
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


def plan_file(
    path: str | Path,
    *,
    display: str | None = None,
    out_dir: Path | None = None,
    strict: bool = False,
    workdir: Path | None = None,
    allow=(),
    reader: GitReader | None = None,
) -> Plan:
    """Read, validate and compile one spec file (or a mold chain script). Never raises for a
    bad spec: the plan's diagnostics say what is wrong. `allow`: folders besides the spec's
    project its paths may reach (with those of $MOLDBATCH_ALLOW_PATHS); `out_dir` and
    `workdir` are the user's own and always allowed. `reader`: where the files the spec names
    are read (default: the working tree)."""
    with _collector_paused():
        return _plan_file(Path(path), display, out_dir, strict, workdir, allow, reader)


@contextlib.contextmanager
def _collector_paused():
    """A plan is a tree of many small objects with no cycles worth collecting: collecting while
    it grows was a third of a long film's planning (benchmarks/bench_plan.py). After it, what
    was made goes to the oldest generation uncollected (freeze, then unfreeze: a move of two
    lists), rather than being walked at the next allocation; a process that froze objects of
    its own is left as it was."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        if was:
            gc.enable()


def _plan_file(path: Path, display, out_dir, strict, workdir, allow, reader) -> Plan:
    file = display or str(path)
    try:
        src = read_source(path, file)
    except SourceError as e:
        return Plan(file=file, path=path, name=path.stem, diagnostics=[e.diagnostic])
    found: list[Diagnostic] = []
    inline: dict[str, bytes] = {}
    if path.suffix.lower() == ".toml" and is_mold_script(src.data):
        # inline images are named by their bytes in the work folder; the executor writes them
        folder = (workdir or path.resolve().parent / ".moldbatch") / "inline"
        film, found, inline = film_from_mold(src, folder)
        if film is None:
            return Plan(file=file, path=path, name=path.stem, diagnostics=found)
        src = film
    # the folders given on the command line are the user's own: the spec may use them too
    own = tuple(Path(p).resolve() for p in (out_dir, workdir) if p is not None)
    inputs = Inputs(src.path.parent.resolve(), inline, reader, allow=allowed_paths(allow) + own)
    plan = Planner(src, inputs, out_dir=out_dir, own_workdir=workdir is not None).run()
    if found:
        plan.diagnostics = sorted(found + plan.diagnostics, key=lambda d: (d.line, d.column))
        if any(d.severity == "error" for d in found):
            plan.stages, plan.shots = [], []
    if strict:
        plan.diagnostics = [dataclasses.replace(d, severity="error") for d in plan.diagnostics]
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


# the strength of an image on a smooth continuation, a guide just past the carried tail:
# mold's CHAIN_SOFT_ANCHOR_STRENGTH (mold-inference ltx2/pipeline.rs `render_chain_stage`),
# the default of `image_guide` (spec/schema.py), and a clip's own image's when that is 0
GUIDE_STRENGTH = 0.4


class Planner:
    def __init__(self, src: Source, inputs: Inputs, out_dir: Path | None = None, own_workdir=False):
        self.src, self.inputs = src, inputs
        self.own_workdir = own_workdir  # --workdir given: the user's own folder
        self.root = inputs.root
        self.out_dir = out_dir.resolve() if out_dir is not None else None
        self.check = Checker(src, inputs)
        self.settings: dict[str, Settings] = {}  # shot id -> its merged settings
        self._broken: dict[PathKey, set] = {}  # fields dropped for errors already reported

    def run(self) -> Plan:
        src = self.src
        data = src.data
        name = src.path.stem
        if not isinstance(data, dict):
            self.check.error(
                (),
                "a spec is a mapping with at least `version: 1` and `shots:` (see specs/README.md)",
            )
            return self._plan(name)
        if isinstance(data.get("name"), str):
            name = data["name"]
        try:
            Film.model_validate(data)  # every field-level error of the file, at once
        except ValidationError as e:
            self.check.diags += pydantic_diagnostics(src, (), e, _known_fields)
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
                self.check.error(
                    ("shots", i, "id"),
                    f"duplicate shot id '{shot.id}' (first used by "
                    f"shots[{seen[shot.id]}]): shot ids must be unique",
                )
                continue
            seen[shot.id] = i
            plan = self._plan_shot(i, shot, defaults)
            if plan is not None:
                plans.append(plan)
        self._check_out_folder(plans)
        output = None
        if isinstance(data.get("output"), str):
            output = rules.check_film_output(self.check, data["output"], plans, self.out_dir)
        plan = self._plan(name, plans, output)
        if plan.valid:
            plan.stages = film_stages(plans, self.settings, self.inputs, output)
        return plan

    @functools.cached_property
    def _out_folder(self) -> Path:
        """Where the shot files go: --out, else `renders/` beside the spec (symlinks followed,
        so that delivery writes into the folder itself, never through a link)."""
        return self.out_dir or (self.root / "renders").resolve()  # checked to be inside

    def _check_out_folder(self, plans) -> None:
        """The folders a render writes by default (beside the spec) must stay in the project:
        a checkout can make them symlinks to anywhere."""
        if not plans:
            return
        for given, name, what, option in (
            (self.out_dir is not None, "renders", "the shot files' folder renders/", "--out"),
            (self.own_workdir, ".moldbatch", "the work folder .moldbatch/", "--workdir"),
        ):
            if given:
                continue
            try:
                self.inputs.resolve(str(self.root / name))
            except InputError:
                self.check.error(
                    ("shots",),
                    self.inputs.outside(name, what) + f", or pass {option} DIR",
                    key=True,
                )

    def _plan(self, name, shots=(), output=None) -> Plan:
        # a finding about `defaults` is made once per shot that inherits it: say it once
        unique = list(dict.fromkeys(self.check.diags))
        diags = sorted(unique, key=lambda d: (d.line, d.column, d.severity != "error"))
        return Plan(
            self.src.file, self.src.path, name, list(shots), [], output, diags, self.inputs.inline
        )

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
        c = self.check
        before = c.error_count
        model = MODELS.get(s["model"])
        if model is None:
            c.error(
                s.where("model"),
                f"unknown model '{s['model']}'"
                + did_you_mean(s["model"], MODELS)
                + f" (known: {', '.join(MODELS)}; see `moldbatch models`)",
            )
            return None
        fps = float(s["fps"])
        fmt = s["format"]
        audio = rules.audio(c, s)

        pipeline = rules.choose_pipeline(c, s, model)
        width, height, rw, rh = rules.sizes(c, s, model, pipeline)
        temporal = rules.temporal_upscale(c, s, model)
        grid = FRAME_GRID * (2 if temporal else 1)  # each clip is rendered at half the frames

        chain = (
            explicit_chain(c, s, shot, model, grid)
            if shot.clips is not None
            else planned_chain(c, s, model, pipeline, fps, grid)
        )
        keyframes = rules.keyframes(c, s, chain.total, pipeline) if chain else []
        if chain is not None and temporal:
            rules.check_half_rate(c, s, chain, keyframes)
        rules.check_media(c, s, pipeline, model)
        if chain is not None and c.error_count == before:
            rules.pass_size(c, s, model, chain, bool(temporal))
        errors = c.error_count
        if chain is None and not errors:
            # never drop a shot without saying why
            c.error(s.shot_path, "this shot cannot be planned; see the warnings above")
        if errors > before or chain is None:
            return None

        self.settings[shot.id] = s
        render_fps = fps / 2 if temporal else fps
        clips = []
        for span, draft in zip(chain.spans, chain.drafts, strict=True):
            rendered = (span.frames - 1) // 2 + 1 if temporal else span.frames
            clip = ClipPlan(
                span.index, rendered, span.start, span.keep_from, draft.prompt, draft.seed
            )
            clip.image = str(draft.image) if draft.image is not None else None
            clip.negative_prompt = draft.negative_prompt
            if s["audio_file"] and pipeline == "a2vid":
                clip.audio_window = [span.start / fps, span.end / fps]
            clips.append(clip)
        for frame, path in keyframes:
            idx, local = locate_frame(chain.spans, frame)
            if temporal:
                local = local // 2
            clips[idx].keyframes.append({"frame": local, "image": str(path)})
        guide = s["image_guide"]
        shot_image = c.image_path(s, "image") if guide else None
        for clip, (kind, tail) in zip(clips[1:], chain.seams, strict=True):
            if kind != "smooth" or tail == 0:
                continue
            # mold's rule: the carried tail owns the first frames of a smooth continuation, so
            # an image there (the clip's own, else the shot's) is a soft guide at the first
            # frame past the tail: 8m + 1 output frames are (T - 1) / 2 + 1 rendered with x2
            image = clip.image or (str(shot_image) if shot_image is not None else None)
            if image is not None:
                at = rendered_tail(tail, bool(temporal))
                strength = guide or GUIDE_STRENGTH  # a clip's own image is never dropped
                clip.keyframes.append({"frame": at, "image": image, "strength": strength})
            clip.image = None
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
            overlap=seam_overlap(transition, chain.tail, s["fade_frames"]),
            motion_tail=chain.tail,
            fade_frames=s["fade_frames"],
            clips=clips,
            seams=[list(seam) for seam in chain.seams],
            frames_stitched=chain.stitched,
            spatial_upscale=s["spatial_upscale"],
            temporal_upscale=temporal,
            output_path=str(self._out_folder / f"{shot.id}.{fmt}"),
        )


__all__ = ["plan_file", "grid_ceil", "Settings"]
