"""Shared fixtures: writing spec files next to real asset files."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "specs" / "conformance" / "assets"
# the head of a spec on the tiny model at the smallest size: renders in a fraction of a second
TINY_HEAD = """\
version: 1
defaults:
  model: ltx-2-tiny:random
  width: 64
  height: 64
  fps: 24
  steps: 2
"""


@pytest.fixture
def film_dir(tmp_path: Path) -> Path:
    """A folder with the corpus assets under assets/, for specs written by a test."""
    shutil.copytree(ASSETS, tmp_path / "assets")
    return tmp_path


@pytest.fixture(scope="session")
def solid(tmp_path_factory: pytest.TempPathFactory):
    """`solid((r, g, b))`: the path of a 64x64 PNG of that one colour."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("solid")
    # specs in other folders name these images: let them, as a user would with --allow-path
    from moldbatch.plan.inputs import ALLOW_ENV

    os.environ[ALLOW_ENV] = os.pathsep.join(
        p for p in (os.environ.get(ALLOW_ENV, ""), str(folder)) if p
    )

    def make(colour: tuple[int, int, int]) -> Path:
        path = folder / ("".join(f"{c:02x}" for c in colour) + ".png")
        if not path.exists():
            Image.fromarray(np.full((64, 64, 3), colour, np.uint8)).save(path)
        return path

    return make


def undecodable_png(path: Path) -> Path:
    """A PNG whose chunks are whole (planning checks them, and accepts it) in a colour type no
    decoder knows: the render's stage that reads it fails."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    head = struct.pack(">IIBBBBB", 8, 8, 8, 7, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", head)
        + chunk(b"IDAT", zlib.compress(b"\0" * 72))
        + chunk(b"IEND", b"")
    )
    return path


def shot_counts(doc: dict) -> Counter:
    """A plan, render or status document's stages by status, its text phase (the encode
    stages every distinct prompt adds) aside: the count a test of shots reasons about."""
    return Counter(s["status"] for s in doc["stages"] if s["kind"] != "encode")


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


TINY = "ltx-2-tiny:random"


def tiny_clip(**fields):
    """A ClipRequest on the tiny model: 17 frames at 64x64, 24 fps, 2 steps; `fields` override."""
    from moldbatch.runtime import ClipRequest

    base = dict(
        model=TINY,
        prompt="a red kite over dunes",
        width=64,
        height=64,
        frames=17,
        fps=24.0,
        seed=1,
        steps=2,
        guidance=1.0,
    )
    return ClipRequest(**{**base, **fields})


def render_spec(spec: Path, runtimes: dict):
    """Plan and render `spec` (it must be valid and render): (plan, its artifact store)."""
    from moldbatch.execute.executor import render_plan
    from moldbatch.execute.store import ArtifactStore
    from moldbatch.plan.planner import plan_file

    plan = plan_file(spec)
    assert plan.valid, [str(d) for d in plan.diagnostics]
    summary = render_plan(plan, progress=False, runtimes=runtimes)
    assert summary.ok, summary
    return plan, ArtifactStore(spec.parent / ".moldbatch")


# diffusers name -> original (ltx-core) name: the inverse of diffusers'
# `convert_ltx2_transformer_to_diffusers`. Order matters: longer names before their substrings.
TO_ORIGINAL = (
    ("audio_time_embed.", "audio_adaln_single."),
    ("time_embed.", "adaln_single."),
    ("av_cross_attn_video_scale_shift", "av_ca_video_scale_shift_adaln_single"),
    ("av_cross_attn_video_a2v_gate", "av_ca_a2v_gate_adaln_single"),
    ("av_cross_attn_audio_scale_shift", "av_ca_audio_scale_shift_adaln_single"),
    ("av_cross_attn_audio_v2a_gate", "av_ca_v2a_gate_adaln_single"),
    ("video_a2v_cross_attn_scale_shift_table", "scale_shift_table_a2v_ca_video"),
    ("audio_a2v_cross_attn_scale_shift_table", "scale_shift_table_a2v_ca_audio"),
    ("audio_proj_in.", "audio_patchify_proj."),
    ("proj_in.", "patchify_proj."),
    ("norm_q.", "q_norm."),
    ("norm_k.", "k_norm."),
    ("audio_prompt_adaln.", "audio_prompt_adaln_single."),  # LTX-2.3
    ("prompt_adaln.", "prompt_adaln_single."),
)


def original_key(key: str) -> str:
    for new, old in TO_ORIGINAL:
        if key.startswith(new) or f".{new}" in key:
            key = (
                key.replace(new, old) if key.startswith(new) else key.replace(f".{new}", f".{old}")
            )
    return "model.diffusion_model." + key


# diffusers -> original (ltx-core) names of the text connectors' weights; the loader's
# `_CONNECTOR_RENAMES` read backwards. LTX-2.3's per-modality projections first.
CONNECTOR_TO_ORIGINAL = (
    ("video_connector.", "video_embeddings_connector."),
    ("audio_connector.", "audio_embeddings_connector."),
    ("transformer_blocks.", "transformer_1d_blocks."),
    ("video_text_proj_in.", "text_embedding_projection.video_aggregate_embed."),
    ("audio_text_proj_in.", "text_embedding_projection.audio_aggregate_embed."),
    ("text_proj_in.", "text_embedding_projection.aggregate_embed."),
    (".norm_q.", ".q_norm."),
    (".norm_k.", ".k_norm."),
)


def original_connector_key(key: str, projection_outside: bool = True) -> str:
    """A connectors weight's name in the original single file: the connectors under the
    transformer's prefix, the text projection outside it (some files) or under it (others)."""
    for new, old in CONNECTOR_TO_ORIGINAL:
        key = key.replace(new, old)
    if projection_outside and key.startswith("text_embedding_projection."):
        return key
    return "model.diffusion_model." + key


def as_shipped_fp8(name: str, value):
    """One linear weight as Lightricks' fp8 files store it: float8 e4m3 with a per-tensor
    `.weight_scale` (and a static `.input_scale` for their own fp8 matmul)."""
    import torch

    scale = value.abs().amax().float() / 448.0
    stem = name.removesuffix(".weight")
    return {
        name: (value.float() / scale).to(torch.float8_e4m3fn).contiguous(),
        stem + ".weight_scale": scale.reshape(()),
        stem + ".input_scale": torch.tensor(0.01),
    }


def wait_until_rendered(proc, workdir: Path, count: int, *, encodes: bool = True) -> None:
    """Poll a render process's state database (`workdir`/state.sqlite) until `count` stages
    are rendered (the prompt encodes among them unless `encodes` is False), the process ends,
    or 90 s pass."""
    import sqlite3
    import time

    db = workdir / "state.sqlite"
    query = "SELECT COUNT(*) FROM stages WHERE status='rendered'"
    if not encodes:
        query += " AND kind != 'encode'"
    deadline = time.monotonic() + 90
    rendered = 0
    while rendered < count and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    rendered = con.execute(query).fetchone()[0]
            except sqlite3.Error:
                pass
