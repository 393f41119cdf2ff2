"""What each kind of stage does: encode a prompt, render a clip, refine or upscale it, stitch
a shot, export, join.

Each handler reads the artifacts of the stages it needs and writes its own into `out` (an
ArtifactWriter); it never touches a final output path. Only this module and the runtime
import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from moldbatch.execute.context import StageContext
from moldbatch.execute.store import Artifact, ArtifactWriter, Pending
from moldbatch.models import FRAME_GRID, SIZE_GRID
from moldbatch.plan.types import ClipParams, Conditions, Stage, encode_needs, media_needs

MEDIA = "media.safetensors"
LATENTS = "latents.safetensors"
TEXT = "text.safetensors"  # an encode stage's stored prompt (runtime/text.py)


def run_encode(stage: Stage, ctx: StageContext, out: ArtifactWriter) -> None:
    """A prompt's stored form (runtime/text.py), for every stage that reads the prompt."""
    from moldbatch.runtime.text import resolve_prompt

    p = stage.params
    embeds = ctx.runtime(p.model).encode_text(resolve_prompt(p.prompt, p.default))
    out.put(TEXT, {"embeds": embeds})
    out.meta.update(tokens=int(embeds.shape[0]), bytes=embeds.numel() * embeds.element_size())


def _text_fields(stage: Stage, ctx: StageContext) -> dict:
    """ClipRequest fields of a clip's stored prompts: its prompt's, then its negative's."""
    names = ("prompt_embeds", "negative_prompt_embeds")
    return {name: embeds for name, embeds in zip(names, _texts(stage, ctx), strict=False)}


def _texts(stage: Stage, ctx: StageContext) -> list:
    """The stored prompts a stage needs, in its needs' order (prompt, then negative)."""
    return [ctx.inputs[n].tensors(TEXT, "pt")["embeds"] for n in encode_needs(stage.needs)]


def save_media(
    out: ArtifactWriter,
    frames: np.ndarray,
    audio: np.ndarray | None,
    sample_rate: int | None,
    fps: float,
) -> None:
    tensors = {"frames": np.ascontiguousarray(frames, dtype=np.uint8)}
    if audio is not None:
        tensors["audio"] = np.ascontiguousarray(audio, dtype=np.float32)
    out.put(MEDIA, tensors)
    out.meta.update(
        frames=int(frames.shape[0]),
        height=int(frames.shape[1]),
        width=int(frames.shape[2]),
        fps=fps,
        sample_rate=sample_rate,
        audio=audio is not None,
    )


def load_media(art: Artifact | Pending) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    t = art.tensors(MEDIA)
    return t["frames"], t.get("audio"), art.meta.get("sample_rate")


def load_audio(art: Artifact | Pending) -> tuple[np.ndarray | None, int | None]:
    """The media artifact's audio alone (its frames are not read)."""
    return art.tensors(MEDIA, only="audio").get("audio"), art.meta.get("sample_rate")


def save_latents(out: ArtifactWriter, result) -> None:
    """A model stage's latents (video, and audio when it has them), for the stages above it."""
    latents = {"video": result.video_latents.contiguous()}
    if result.audio_latents is not None:
        latents["audio"] = result.audio_latents.contiguous()
    out.put(LATENTS, latents)


def run_clip(stage: Stage, ctx: StageContext, out: ArtifactWriter) -> None:
    from moldbatch.runtime.requests import ClipRequest

    p: ClipParams = stage.params
    c = p.conditions
    carry = None
    if c.carry_tail and stage.needs:
        # the previous clip's delivered frames and sound, encoded again (runtime/carry.py)
        frames, audio, rate = load_media(ctx.inputs[stage.needs[0]])
        carry = ctx.runtime(p.model).carry_from(
            frames, audio if p.audio else None, rate, tail_frames=c.carry_tail, fps=p.fps
        )
    req = ClipRequest(
        model=p.model,
        prompt=c.prompt,
        negative_prompt=c.negative_prompt,
        width=p.width,
        height=p.height,
        frames=p.frames,
        fps=p.fps,
        seed=c.seed,
        steps=p.steps,
        guidance=p.guidance,
        audio=p.audio,
        image=Path(c.image.path) if c.image else None,
        keyframes=[(k.frame, Path(k.image.path), k.strength) for k in c.keyframes],
        loras=_loras(c),
        carry=carry,
        image_strength=c.image_strength if c.image_strength is not None else 1.0,
        **_clip_media(p),
        **_text_fields(stage, ctx),
    )
    result = ctx.runtime(p.model).render_clip(req, on_step=ctx.on_step)
    save_latents(out, result)
    save_media(out, result.frames, result.audio, result.sample_rate, p.fps)


def _clip_media(p: ClipParams) -> dict:
    """ClipRequest fields for the media a clip follows: the audio of a2vid (the whole file,
    the clip starting at its `audio_window`), the source of a retake (the clip's own
    frames of it, its audio, and the retake window in clip-local seconds), or the reference
    video of an IC-LoRA clip (its own frames of it)."""
    from moldbatch.media.probe import read_audio

    if p.pipeline == "a2vid" and p.audio_file:
        audio, rate = read_audio(p.audio_file.path)
        window = p.audio_window or (0.0, p.frames / p.fps)
        return {"audio_input": audio, "audio_input_rate": rate, "audio_input_start": window[0]}
    if p.pipeline == "retake" and p.video and p.retake:
        frames, audio, rate, start = _source_stretch(p.video.path, p.source_window, p.fps, p.frames)
        media = {
            "source_frames": frames,
            "retake_window": (p.retake.start - start, p.retake.end - start),
        }
        if audio is not None and audio.shape[1] > 0:
            media.update(audio_input=audio, audio_input_rate=rate, audio_input_start=start)
        return media
    if p.pipeline == "ic-lora" and p.video:
        return {
            "reference_frames": _source_stretch(p.video.path, p.source_window, p.fps, p.frames)[0]
        }
    return {}


def _source_stretch(path: str, window, fps: float, count: int):
    """A clip's stretch of the shot's source video (shot time is source time), frame by frame
    at the render rate `fps`: the source frame showing at each of the clip's `count` frames'
    times, from `window[0]` seconds. Returns (frames, the source's whole audio or None, its
    rate, the clip's start in seconds)."""
    import math

    from moldbatch.media.probe import probe, read_video

    frames, audio, rate = read_video(path)
    source_fps = float(probe(path).fps) or fps
    start = (window or (0.0,))[0]
    index = [
        min(math.floor((start + i / fps) * source_fps + 0.5), len(frames) - 1) for i in range(count)
    ]
    return frames[index], audio, rate, start


def run_upscale(stage: Stage, ctx: StageContext, out: ArtifactWriter) -> None:
    """Latent upscale of one clip (`needs[0]`): spatial, refine, temporal, decode. With a
    refine on a smooth seam, `needs[1]` is the previous clip's stage at this step, whose
    refined tail is held at the start, as the first pass held the rendered one. A `refine`
    stage (the two-stage pipelines' x2 + refine) runs here too."""
    from moldbatch.runtime.requests import Refine

    p = stage.params
    needs = media_needs(stage.needs)
    source = ctx.inputs[needs[0]]
    rt = ctx.runtime(p.model)
    audio, rate = load_audio(source)  # the upscale works on the latents: no frames needed
    refine = None
    if p.refine is not None:
        r = p.refine
        carry = None
        if r.carry_tail and len(needs) > 1:
            # the previous clip's refined frames and sound at the rate the clips render at (half
            # the output rate before a temporal x2), encoded again
            frames, tail_audio, tail_rate = _refined(ctx.inputs[needs[1]], rt)
            render_fps = p.fps / 2 if p.temporal else p.fps
            carry = rt.carry_from(
                frames,
                tail_audio if p.audio else None,
                tail_rate,
                tail_frames=r.carry_tail,
                fps=render_fps,
            )
        refine = Refine(
            prompt=r.prompt,
            negative_prompt=r.negative_prompt,
            seed=r.seed,
            loras=_loras(r),
            image=Path(r.image.path) if r.image else None,
            image_strength=r.image_strength if r.image_strength is not None else 1.0,
            keyframes=[(k.frame, Path(k.image.path), k.strength) for k in r.keyframes],
            carry=carry,
            audio=p.refine_audio or "refine",
            prompt_embeds=next(iter(_texts(stage, ctx)), None),
        )
    latents = source.tensors(LATENTS, "pt")
    result = rt.upscale(
        latents["video"],
        audio_latents=latents.get("audio"),
        spatial=p.spatial,
        temporal=p.temporal,
        audio=audio,
        sample_rate=rate,
        width=p.width,
        height=p.height,
        fps=p.fps,
        refine=refine,
        on_step=ctx.on_step,
    )
    save_latents(out, result)
    frames = result.frames
    if p.retake_source is not None:
        frames = _keep_the_source(frames, p)
    save_media(out, frames, result.audio, result.sample_rate, p.fps)


def _refined(art: Artifact | Pending, rt):
    """A refine or upscale stage's refined clip before any temporal x2: its frames (its media,
    or with a temporal x2 its kept latents decoded) and sound."""
    latents = art.tensors(LATENTS, "pt", only="video")["video"]
    _, _, count, height, width = latents.shape
    frames, audio, rate = load_media(art)
    size = SIZE_GRID  # (a spatial x1.5 of an odd latent size is cropped in the media)
    if frames.shape[:3] != ((count - 1) * FRAME_GRID + 1, height * size, width * size):
        frames = rt.decode_video(latents)
    return frames, audio, rate


def _keep_the_source(frames: np.ndarray, p) -> np.ndarray:
    """An upscaled retake clip with the source's own frames (at the output size and rate)
    outside the retake window, as the clip itself had them at the render size."""
    from moldbatch.runtime import sources

    r = p.retake_source
    count = frames.shape[0]
    source, _, _, start = _source_stretch(r.video.path, r.source_window, p.fps, count)
    window = (r.retake.start - start, r.retake.end - start)
    keep = sources.kept_frames(sources.retake_pixel_window(window, p.fps, count), count)
    out = frames.copy()
    fitted = sources.fit_frames(source, frames.shape[2], frames.shape[1])
    out[keep] = fitted[keep]
    return out


def _loras(c: Conditions) -> list:
    """The clip's LoRAs with their scales, and its camera preset's LoRA."""
    from moldbatch.runtime.requests import Lora

    loras = [Lora(lo.file.path, lo.scale) for lo in c.loras]
    if c.camera_control:
        loras.append(Lora(f"camera-control:{c.camera_control}", 1.0))
    return loras


def run_stitch(stage: Stage, ctx: StageContext, out: ArtifactWriter) -> None:
    from moldbatch.media.stitch import stitch_audio, stitch_frames

    p = stage.params
    clips = [load_media(ctx.inputs[n]) for n in stage.needs]
    seams = [tuple(seam) for seam in p.seams]
    frames = stitch_frames([c[0] for c in clips], "cut", 0, 0, p.frames, seams=seams)
    audio, rate = None, None
    if p.audio:
        rate = clips[0][2]
        audio = stitch_audio(
            [c[1] for c in clips],
            "cut",
            0,
            0,
            p.fps,
            rate,
            p.frames,
            clip_frames=[c[0].shape[0] for c in clips],
            seams=seams,
        )
    save_media(out, frames, audio, rate, p.fps)


def run_export(stage: Stage, ctx: StageContext, out: ArtifactWriter) -> None:
    from moldbatch.media.encode import write_video

    p = stage.params
    frames, audio, rate = load_media(ctx.inputs[stage.needs[0]])
    name = f"shot.{p.format}"
    write_video(
        out.path(name),
        frames,
        p.fps,
        audio=audio if p.audio else None,
        sample_rate=rate,
        format=p.format,
    )
    out.meta.update(file=name)


def run_join(stage: Stage, ctx: StageContext, out: ArtifactWriter) -> None:
    """The film: its shots' sound laid end to end on the frame grid, with their video copied
    from the shot files (an mp4 of mp4 shots, whose streams match), else their stitched
    frames encoded again."""
    from moldbatch.media.encode import CannotRemux, remux_mp4, write_video
    from moldbatch.media.stitch import film_audio, join

    p = stage.params
    stitches = [ctx.inputs[f"{shot}/stitch"] for shot in p.shots]
    name = f"film.{p.format}"
    if p.copy_video:
        sounds = [load_audio(art) for art in stitches]
        rate = _film_rate(sounds)
        counts = [art.meta["frames"] for art in stitches]
        audio = None
        if p.audio:
            audio = film_audio(counts, [_at(a, r, rate) for a, r in sounds], p.fps, rate)
        parts = [ctx.inputs[f"{shot}/export"] for shot in p.shots]
        try:
            remux_mp4(
                out.path(name),
                [art.file(art.meta["file"]) for art in parts],
                p.fps,
                audio=audio,
                sample_rate=rate,
            )
            out.meta.update(file=name, video="copied")
            return
        except CannotRemux:
            pass  # shot files of another coding: their frames are encoded again, as below
    shots = [load_media(art) for art in stitches]
    rate = _film_rate([(a, r) for _, a, r in shots])
    parts = [(frames, _at(a, r, rate) if p.audio else None) for frames, a, r in shots]
    frames, audio = join(parts, p.fps, rate)
    write_video(out.path(name), frames, p.fps, audio=audio, sample_rate=rate, format=p.format)
    out.meta.update(file=name, video="encoded")


def _film_rate(sounds) -> int | None:
    """The film's sample rate: its first shot with sound's."""
    return next((r for a, r in sounds if a is not None and r), None)


def _at(audio, rate, film_rate):
    """A shot's audio at the film's sample rate."""
    from moldbatch.media.encode import resample_audio

    if audio is not None and rate != film_rate:
        return resample_audio(audio, rate, film_rate)
    return audio


def _named_oom(handler: Callable) -> Callable:
    """A model stage whose CUDA memory runs out fails with one line naming the stage, the
    memory tier and what to try (runtime/memory.py); what is done stays cached."""

    def run(stage: Stage, ctx: StageContext, out: ArtifactWriter) -> None:
        import torch

        from moldbatch.errors import MoldbatchError
        from moldbatch.runtime.memory import oom_message

        try:
            handler(stage, ctx, out)
        except torch.cuda.OutOfMemoryError as e:
            raise MoldbatchError(oom_message(stage.id, ctx.memory)) from e

    return run


HANDLERS = {
    "encode": _named_oom(run_encode),
    "clip": _named_oom(run_clip),
    "refine": _named_oom(run_upscale),
    "upscale": _named_oom(run_upscale),
    "stitch": run_stitch,
    "export": run_export,
    "join": run_join,
}
