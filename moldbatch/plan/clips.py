"""A shot's clips: split from `frames` / `duration` by the chain arithmetic, or given one by one
as a `clips:` list; with each clip's prompt, seed and image, and the seams between them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from moldbatch.models import ModelInfo, grid_ceil, grid_neighbours, on_frame_grid, seam_overlap
from moldbatch.plan.chain import ClipSpan, chain_clips
from moldbatch.plan.rules import Checker, Settings, clip_frames, length, motion_tail, prompts
from moldbatch.spec.schema import Shot

MAX_CLIPS = 1000  # per shot: far beyond any real chain, and it bounds a plan's size


@dataclass
class Draft:
    """What one clip says before it becomes a ClipPlan."""

    prompt: str
    seed: int
    image: Path | None
    negative_prompt: str | None


@dataclass
class Chain:
    spans: list[ClipSpan]
    drafts: list[Draft]
    seams: list[tuple[str, int]]  # the boundary before clips 1..n-1: (transition, overlap)
    total: int  # the shot's frames after the stitch and trim
    stitched: int  # frames the stitch yields before the trim
    tail: int = 0  # the shot's motion tail (rules.motion_tail)


def planned_chain(
    c: Checker, s: Settings, model: ModelInfo, pipeline: str, fps: float, grid: int
) -> Chain | None:
    """A shot of `frames`/`duration` split into clips by the chain arithmetic."""
    total, exact = length(c, s, fps, pipeline)
    clip = clip_frames(c, s, model, grid)
    if total is None and exact:
        total = clip
    transition = s["transition"]
    # (a shot of one clip: that clip is the shortest)
    tail = motion_tail(c, s, clip if total is None else min(clip, grid_ceil(total, grid)), grid)
    overlap = seam_overlap(transition, tail, s["fade_frames"])
    if transition == "smooth" and not 0 <= overlap < clip:
        below = grid_neighbours(clip - 1, grid)[0] if clip > 1 else 0
        c.error(
            s.where("motion_tail"),
            f"motion_tail must be below clip_frames "
            f"({clip}) so every clip adds fresh frames; try {below}",
        )
        overlap = 0
    if transition == "fade" and overlap >= clip:
        c.error(
            s.where("fade_frames"),
            f"fade_frames must be below clip_frames ({clip}); try {min(8, clip - 1)}",
        )
        overlap = 0
    if total is None:
        return None
    if total <= clip and exact and not (on_frame_grid(total) and (total - 1) % grid == 0):
        lo, hi = grid_neighbours(total, grid)
        c.error(
            s.where("frames"),
            f"{total} frames is off the {grid}k+1 frame grid: use "
            f"{lo} or {hi} (or give `duration` to have the shot trimmed exactly)",
        )
    count = 1 if total <= clip else 1 + math.ceil((total - clip) / (clip - overlap))
    if count > MAX_CLIPS:
        c.error(
            s.where("frames") if s["frames"] is not None else s.where("duration"),
            f"this shot would need {count} clips; at most {MAX_CLIPS} per shot: "
            "raise clip_frames, lower motion_tail, or split it into shots",
        )
        return None
    spans = chain_clips(total, clip, overlap, s["last_clip"], grid)
    if transition == "fade" and len(spans) > 2 and 2 * overlap > clip:
        # an inner clip fades in from its predecessor and out into its successor
        c.error(
            s.where("fade_frames"),
            f"fade_frames must be at most half of clip_frames ({clip}) so an inner clip "
            f"can fade in and out; try {clip // 2}",
        )
    texts = prompts(c, s, len(spans))
    image = c.image_path(s, "image")
    if texts is None:
        return None
    drafts = [
        Draft(texts[i], s["seed"] + i, image if i == 0 else None, None) for i in range(len(spans))
    ]
    seams = [(transition, overlap)] * (len(spans) - 1)
    return Chain(spans, drafts, seams, total, spans[-1].end, tail)


def explicit_chain(
    c: Checker, s: Settings, shot: Shot, model: ModelInfo, grid: int
) -> Chain | None:
    """A shot given as `clips`: each clip its own length, prompt, image and seam."""
    base = s.shot_path + ("clips",)
    for name, instead in (("frames", "frames"), ("duration", "frames"), ("prompts", "prompts")):
        if getattr(shot, name) is not None:
            c.error(
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
    tail = motion_tail(c, s, min(clip.frames for clip in shot.clips), grid)
    for i, clip in enumerate(shot.clips):
        where = base + (i,)
        if not on_frame_grid(clip.frames) or (clip.frames - 1) % grid:
            lo, hi = grid_neighbours(clip.frames, grid)
            c.error(
                where + ("frames",),
                f"{clip.frames} frames is off the {grid}k+1 frame grid: use {lo} or {hi}",
            )
            ok = False
        elif clip.frames > model.clip_cap:
            c.error(
                where + ("frames",),
                f"{clip.frames} frames is above "
                f"{model.name}'s cap of {model.clip_cap} frames per clip; split "
                "it into more clips (mold does not cap a stage's frames; moldbatch "
                "holds every clip to its model's cap)",
            )
            ok = False
        if i == 0:
            seam = None
        else:
            kind = clip.transition or s["transition"]
            amount = seam_overlap(kind, tail, clip.fade_frames or s["fade_frames"])
            seam = (kind, amount)
            seams.append(seam)
            start = spans[-1].end - amount
            if amount >= clip.frames:
                what = "motion_tail" if kind == "smooth" else "fade_frames"
                c.error(
                    where + ("frames",),
                    f"clip {i} has {clip.frames} frames: its "
                    f"{kind} seam overlaps {amount} ({what}); every clip must add "
                    "fresh frames",
                )
                ok = False
            elif kind != "cut" and amount > spans[-1].frames:
                # the clip before is the short one (mold refuses it too)
                what, does = {
                    "smooth": ("motion_tail", "the smooth seam into clip {i} carries"),
                    "fade": ("fade_frames", "the fade into clip {i} blends"),
                }[kind]
                c.error(
                    base + (i - 1, "frames"),
                    f"clip {i - 1} has {spans[-1].frames} frames, fewer than the "
                    f"{amount} {does.format(i=i)} ({what}): lengthen clip {i - 1} or "
                    f"lower {what}",
                )
                ok = False
        keep_from = start if seam is None or seam[0] == "cut" else start + seam[1]
        spans.append(ClipSpan(i, clip.frames, start, keep_from))
        prompt = clip.prompt if clip.prompt is not None else s["prompt"]
        if prompt is None:
            c.error(where, "missing `prompt`: give this clip a prompt, or the shot one")
            ok = False
        image = None
        if clip.image is not None:
            image = c.image_at(where + ("image",), clip.image)
        elif i == 0:
            image = c.image_path(s, "image")
        seed = s["seed"] ^ clip.seed_offset if clip.seed_offset is not None else s["seed"] + i
        drafts.append(Draft(prompt, seed, image, clip.negative_prompt))
    # a clip's frames must hold the overlap before it and the fade after it (the stitch's rule)
    for i in range(1, len(spans) - 1):
        head = seams[i - 1][1] if seams[i - 1][0] != "cut" else 0
        tail = seams[i][1] if seams[i][0] == "fade" else 0
        if head and tail and head + tail > spans[i].frames:
            c.error(
                base + (i, "frames"),
                f"clip {i} has {spans[i].frames} frames, "
                f"fewer than the {head + tail} its seams need ({head} overlapping "
                f"the clip before, {tail} fading into the clip after; mold would let "
                "the fade reach into the clip before, moldbatch refuses)",
            )
            ok = False
    if not ok:
        return None
    total = spans[-1].end
    return Chain(spans, drafts, seams, total, total, tail)
