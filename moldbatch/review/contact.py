"""Contact sheets: the first, middle and last frame of every clip of a shot, one row per clip,
with the seams between clips marked. Drawn with Pillow from the stored clip artifacts (after
any upscale), so they show what each clip rendered, tails and all, before the stitch.

Needs the render install (numpy, safetensors, Pillow).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from safetensors import safe_open

from moldbatch.fsio import atomic_write

MEDIA = "media.safetensors"  # the media artifact of clip and upscale stages (execute/stages.py)
THUMB_W = 192
LABEL_W = 170
PAD = 8
CAPTION_H = 16
SEAM_H = 18
BG = (17, 20, 24)
TEXT = (230, 233, 238)
DIM = (141, 150, 163)
SEAM = (224, 82, 90)
OVERLAP = (123, 140, 255)


@dataclass
class Pick:
    local: int  # index in the artifact's frames
    shot_frame: int
    image: np.ndarray  # [H, W, 3] uint8
    in_overlap: bool


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _frames_at(path: Path, picks: list[int]) -> tuple[int, list[np.ndarray]]:
    """Only the frames asked for, without loading the whole clip."""
    with safe_open(str(path), framework="numpy") as f:
        sl = f.get_slice("frames")
        count = sl.get_shape()[0]
        return count, [np.asarray(sl[min(i, count - 1) : min(i, count - 1) + 1])[0] for i in picks]


def _final_stage(plan, shot_id: str, index: int):
    ids = {s.id: s for s in plan.stages_of(shot_id)}
    return (
        ids.get(f"{shot_id}/upscale-{index}")
        or ids.get(f"{shot_id}/refine-{index}")
        or ids.get(f"{shot_id}/clip-{index}")
    )


def clip_picks(plan, shot, store) -> list[tuple[object, list[Pick]]] | None:
    """(clip, its three picked frames) per clip; None when a clip's artifact is missing."""
    factor = 2 if shot.temporal_upscale else 1
    rows = []
    for clip in shot.clips:
        stage = _final_stage(plan, shot.id, clip.index)
        art = store.get(stage.key, verify=False) if stage is not None else None
        if art is None or not art.file(MEDIA).is_file():
            return None
        count = int(art.meta.get("frames") or 0)
        if not count:
            with safe_open(str(art.file(MEDIA)), framework="numpy") as f:
                count = f.get_slice("frames").get_shape()[0]
        locals_ = sorted({0, (count - 1) // 2, count - 1})
        _, images = _frames_at(art.file(MEDIA), locals_)
        step = factor if stage.kind != "upscale" else 1  # clip and refine: rendered rate
        picks = []
        for local, image in zip(locals_, images, strict=True):
            frame = clip.start + local * step
            picks.append(Pick(local, frame, image, clip.index > 0 and frame < clip.keep_from))
        rows.append((clip, picks))
    return rows


def _seam_text(shot, clip) -> str:
    seams = getattr(shot, "seams", None) or []
    kind, amount = (
        seams[clip.index - 1] if clip.index - 1 < len(seams) else (shot.transition, shot.overlap)
    )
    over = f", {amount} frames overlap" if amount and kind != "cut" else ""
    return f"seam at shot frame {clip.keep_from}: {kind}{over}"


def draw_contact_sheet(plan, shot, rows) -> Image.Image:
    h, w = rows[0][1][0].image.shape[:2]
    tw = min(THUMB_W, w * 2) if w < THUMB_W // 2 else THUMB_W
    th = max(1, round(h * tw / w))
    cols = max(len(p) for _, p in rows)
    width = LABEL_W + cols * (tw + PAD) + PAD
    row_h = th + CAPTION_H + PAD
    title_h = 26
    height = title_h + len(rows) * row_h + (len(rows) - 1) * SEAM_H + PAD
    sheet = Image.new("RGB", (width, height), BG)
    d = ImageDraw.Draw(sheet)
    big, small = _font(14), _font(11)
    d.text(
        (PAD, 6),
        f"{shot.id} · {shot.frames} frames · {shot.width}x{shot.height} @ {shot.fps:g} fps · "
        f"{len(rows)} clip{'s' if len(rows) > 1 else ''}",
        fill=TEXT,
        font=big,
    )
    y = title_h
    for n, (clip, picks) in enumerate(rows):
        if n > 0:  # the seam before this clip
            d.line([(PAD, y + SEAM_H // 2), (width - PAD, y + SEAM_H // 2)], fill=SEAM, width=2)
            text = _seam_text(shot, clip)
            tw_ = d.textlength(text, font=small)
            d.rectangle([LABEL_W - 4, y + 2, LABEL_W + tw_ + 4, y + SEAM_H - 2], fill=BG)
            d.text((LABEL_W, y + 3), text, fill=SEAM, font=small)
            y += SEAM_H
        end = clip.start + (clip.frames - 1) * (2 if shot.temporal_upscale else 1)
        d.text((PAD, y + 4), f"clip {clip.index}", fill=TEXT, font=big)
        d.text((PAD, y + 24), f"frames {clip.start}-{end}", fill=DIM, font=small)
        d.text((PAD, y + 38), f"seed {clip.seed}", fill=DIM, font=small)
        d.text(
            (PAD, y + 52),
            clip.prompt[:26] + ("..." if len(clip.prompt) > 26 else ""),
            fill=DIM,
            font=small,
        )
        for c, pick in enumerate(picks):
            x = LABEL_W + c * (tw + PAD)
            thumb = Image.fromarray(pick.image).resize((tw, th), Image.Resampling.BILINEAR)
            sheet.paste(thumb, (x, y))
            if pick.in_overlap:
                d.rectangle([x, y, x + tw - 1, y + th - 1], outline=OVERLAP, width=2)
            label = f"frame {pick.shot_frame}" + (" (overlap)" if pick.in_overlap else "")
            d.text((x, y + th + 2), label, fill=OVERLAP if pick.in_overlap else DIM, font=small)
        y += row_h
    return sheet


def write_contact_sheet(plan, shot, store, path: Path) -> Path | None:
    """`<shot>.contact.png`; None when the shot's clips are not all rendered."""
    rows = clip_picks(plan, shot, store)
    if not rows:
        return None
    buf = io.BytesIO()
    draw_contact_sheet(plan, shot, rows).save(buf, format="PNG", optimize=True)
    atomic_write(path, buf.getvalue())
    return path
