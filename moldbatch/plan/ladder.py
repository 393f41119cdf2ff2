"""A planned shot as stages with their keys: each clip's ladder (clip -> refine -> upscale),
the shot's stitch and export, and the film's join.

A clip's first pass renders at half size on the two-stage pipelines, whose `refine` stage
upsamples it x2 in latent space and refines it at the render size; a shot's own spatial or
temporal upscale follows as an `upscale` stage. On a smooth seam each step holds the previous
clip's tail at the same step, so it needs that stage too.

Before them all, the film's text encodes: one `encode` stage per distinct prompt (per text
encoder and length), which every stage reading that prompt needs (a clip its prompt's, then,
when it runs classifier-free guidance, its negative prompt's; a refine its prompt's).
"""

from __future__ import annotations

from moldbatch.models import (
    DEFAULT_NEGATIVE,
    MEDIA_PIPELINES,
    MODELS,
    ModelInfo,
    first_pass_size,
    format_of,
    rendered_tail,
)
from moldbatch.plan.inputs import Inputs
from moldbatch.plan.keys import content_key
from moldbatch.plan.rules import Settings
from moldbatch.plan.types import (
    ClipParams,
    Conditions,
    EncodeParams,
    ExportParams,
    FileRef,
    JoinParams,
    KeyframeRef,
    LoraRef,
    RetakeSource,
    ShotPlan,
    Stage,
    StitchParams,
    UpscaleParams,
    Window,
)


class Encodes:
    """The film's encode stages, one per distinct (text encoder, prompt, length), in the order
    of first use."""

    def __init__(self) -> None:
        self.stages: dict[str, Stage] = {}  # key -> stage
        self._asked: dict[tuple, Stage] = {}  # (text encoder, prompt, default, length) -> stage

    def of(self, model: ModelInfo, prompt: str | None, default: str | None = None) -> Stage:
        asked = (model.text_encoder, prompt, default, model.max_sequence_length)
        stage = self._asked.get(asked)
        if stage is None:
            params = EncodeParams(*asked, model=model.name)
            key = content_key("encode", params, [])
            stage = self.stages.get(key)
            if stage is None:
                stage = Stage(f"encode/{key[:12]}", "encode", None, [], key, params)
                self.stages[key] = stage
            self._asked[asked] = stage
        return stage

    def for_clip(self, model: ModelInfo, params: ClipParams) -> list[Stage]:
        """A first pass's encodes: its prompt, and its negative prompt when it is guided (a
        dev model's; the tiny model's above guidance 1) (runtime sampling_kwargs)."""
        c = params.conditions
        out = [self.of(model, c.prompt)]
        if model.guided:
            negative = c.negative_prompt or None
            out.append(self.of(model, negative, None if negative else DEFAULT_NEGATIVE))
        elif model.built_in and (params.guidance or 0) > 1:
            out.append(self.of(model, c.negative_prompt or ""))
        return out


def film_stages(
    shots: list[ShotPlan], settings: dict[str, Settings], inputs: Inputs, output: str | None
) -> list[Stage]:
    stages: list[Stage] = []
    encodes = Encodes()
    for shot in shots:
        stages += shot_stages(shot, settings[shot.id], inputs, encodes)
    stages = list(encodes.stages.values()) + stages  # the text phase first
    if output is not None and shots:
        fmt = format_of(output)
        copy_video = fmt == "mp4" and all(p.format == "mp4" for p in shots)
        needs = [f"{p.id}/stitch" for p in shots]
        if copy_video:
            needs += [f"{p.id}/export" for p in shots]
        keys = {st.id: st.key for st in stages}
        params = JoinParams(
            format=fmt,
            audio=fmt == "mp4" and any(p.audio for p in shots),
            fps=shots[0].fps,
            shots=tuple(p.id for p in shots),
            copy_video=copy_video,
        )
        key = content_key("join", params, [keys[n] for n in needs])
        stages.append(Stage("film/join", "join", None, needs, key, params, output))
    return stages


def shot_stages(
    shot: ShotPlan, s: Settings, inputs: Inputs, encodes: Encodes | None = None
) -> list[Stage]:
    """A shot's stages; the encodes its stages need are added to `encodes` (the film's)."""
    encodes = encodes if encodes is not None else Encodes()

    def ref(value: str | None) -> FileRef | None:
        if value is None:
            return None
        path = inputs.resolve(value)
        return FileRef(str(path), inputs.digest(path))

    loras = tuple(LoraRef(ref(lo.path), lo.scale) for lo in s["loras"])
    model = MODELS[shot.model]
    two_stage = model.renders_in_two_stages(shot.pipeline)
    retake = Window(s["retake"].start, s["retake"].end) if s["retake"] is not None else None
    out: list[Stage] = []
    finals = []
    last: dict[str, Stage] = {}  # the previous clip's stage of each step of the ladder
    memo: dict = {}  # key docs of what the shot's stages share (alive as long as `out`)
    for clip in shot.clips:
        seam = shot.seams[clip.index - 1] if clip.index > 0 else None
        carry_tail = 0
        if seam is not None and seam[0] == "smooth" and seam[1] > 0:
            # the seam carries the previous clip's tail: this clip needs its frames (in
            # rendered frames: with temporal x2 a tail of 16m + 1 frames is 8m + 1 rendered,
            # which the x2 turns back into exactly those 16m + 1)
            carry_tail = rendered_tail(seam[1], bool(shot.temporal_upscale))
        image = ref(clip.image)
        conditions = Conditions(
            prompt=clip.prompt,
            negative_prompt=(
                clip.negative_prompt if clip.negative_prompt is not None else s["negative_prompt"]
            ),
            seed=clip.seed,
            loras=loras,
            camera_control=s["camera_control"],
            image=image,
            # mold's rule: `image_strength` holds the first clip's image; a cut or fade starts
            # afresh from its image at full strength
            image_strength=(
                (s["image_strength"] if clip.index == 0 else 1.0) if image is not None else None
            ),
            keyframes=tuple(
                KeyframeRef(k["frame"], ref(k["image"]), k.get("strength", 1.0))
                for k in clip.keyframes
            ),
            carry_tail=carry_tail,
        )
        source_window = None
        if shot.pipeline in ("retake", "ic-lora"):
            # the seconds of the source this clip follows (shot time is source time)
            begin = clip.start / shot.fps
            source_window = (begin, begin + clip.frames / shot.render_fps)
        params = ClipParams(
            model=shot.model,
            pipeline=shot.pipeline if shot.pipeline in MEDIA_PIPELINES else "generate",
            width=first_pass_size(shot.render_width) if two_stage else shot.render_width,
            height=first_pass_size(shot.render_height) if two_stage else shot.render_height,
            fps=shot.render_fps,
            frames=clip.frames,
            steps=s["steps"] or model.default_steps,
            guidance=s["guidance"],
            audio=shot.audio,
            conditions=conditions,
            audio_file=ref(s["audio_file"]),
            audio_window=tuple(clip.audio_window) if clip.audio_window is not None else None,
            video=ref(s["video"]),
            source_window=source_window,
            retake=retake,
        )
        texts = encodes.for_clip(model, params)
        final = _step(shot, "clip", clip.index, params, None, last, out, memo, texts)
        # a refine pass has the clip's prompt, seed, LoRAs and conditions; an IC-LoRA works
        # with its reference tokens, which the refine pass has not
        refine = conditions
        if shot.pipeline == "ic-lora":
            refine = Conditions(**{**vars(conditions), "loras": ()})
        audio_mode = refine_audio(model, shot.pipeline, clip.keyframes)
        if two_stage:
            # stage 2: x2 latent upsample to the render size and a refine pass
            up = UpscaleParams(
                shot.model, "x2", None, shot.render_width, shot.render_height,
                shot.render_fps, shot.audio, refine, audio_mode,
            )  # fmt: skip
            texts = [encodes.of(model, refine.prompt)]
            final = _step(shot, "refine", clip.index, up, final, last, out, memo, texts)
        if shot.spatial_upscale or shot.temporal_upscale:
            is_retake = shot.pipeline == "retake"
            up = UpscaleParams(
                model=shot.model,
                spatial=shot.spatial_upscale,
                temporal=shot.temporal_upscale,
                width=shot.width,
                height=shot.height,
                fps=shot.fps,
                audio=shot.audio,
                # a refine would re-noise the frames a retake keeps: it pastes them instead
                refine=refine if shot.spatial_upscale and not is_retake else None,
                refine_audio=audio_mode if shot.spatial_upscale and not is_retake else None,
                retake_source=(
                    RetakeSource(params.video, source_window, retake) if is_retake else None
                ),
            )
            texts = [encodes.of(model, refine.prompt)] if up.refine is not None else []
            final = _step(shot, "upscale", clip.index, up, final, last, out, memo, texts)
        finals.append(final)
    stitch = StitchParams(
        seams=tuple((kind, n) for kind, n in shot.seams),
        frames=shot.frames,
        fps=shot.fps,
        audio=shot.audio,
        width=shot.width,
        height=shot.height,
    )
    st = Stage(
        f"{shot.id}/stitch",
        "stitch",
        shot.id,
        [f.id for f in finals],
        content_key("stitch", stitch, [f.key for f in finals]),
        stitch,
    )
    out.append(st)
    export = ExportParams(shot.format, shot.fps, shot.audio)
    key = content_key("export", export, [st.key])
    out.append(
        Stage(f"{shot.id}/export", "export", shot.id, [st.id], key, export, shot.output_path)
    )
    return out


def refine_audio(model, pipeline: str, keyframes: list[dict]) -> str:
    """What a clip's refine does with its first pass's audio (runtime.requests.Refine.audio), as
    the Lightricks pipeline that renders such a clip (docs/reference-parity.md). Like the
    clip's key, it follows the model and the inputs, not the pipeline's name: a2vid holds the
    audio it follows (`a2vid_two_stage.py`); a distilled model (`distilled.py`), keyframes
    (`keyframe_interpolation.py`) and an IC-LoRA (`ic_lora.py`) keep the refined audio; a dev
    model's text/image-to-video (`ti2vid_two_stages.py`) denoises it with the video but keeps
    the first pass's sound. (A smooth continuation's guide image is no keyframe.)"""
    if pipeline == "a2vid":
        return "hold"
    if model.distilled or pipeline == "ic-lora" or any("strength" not in k for k in keyframes):
        return "refine"
    return "keep"


def _step(
    shot: ShotPlan,
    step: str,
    index: int,
    params: ClipParams | UpscaleParams,
    source: Stage | None,
    last: dict[str, Stage],
    out: list[Stage],
    memo: dict,
    texts: list[Stage],
) -> Stage:
    """One clip's stage at one step of its ladder: it needs its `source` (the step below), on
    a carrying seam the previous clip's stage at the same step, whose tail it holds (a clip
    needs its latents; a refine its refined latents), and last its prompts' encodes."""
    needs = [source] if source is not None else []
    refine = params.conditions if step == "clip" else params.refine
    if refine is not None and refine.carry_tail and step in last:
        needs.append(last[step])
    needs += texts
    stage = Stage(
        f"{shot.id}/{step}-{index}",
        step,
        shot.id,
        [n.id for n in needs],
        content_key(step, params, [n.key for n in needs], memo),
        params,
    )
    out.append(stage)
    last[step] = stage
    return stage


__all__ = ["Encodes", "film_stages", "shot_stages"]
