"""What a plan costs: frames and latent tokens per stage, and an estimated GPU time.

A clip's denoising work is its latent tokens times its steps. A latent token is one position
of the video latent: latent frames x latent height x latent width, where the video VAE
compresses time 8x (frame 0 on its own: 97 frames -> 13 latent frames) and space 32x
(1216 x 704 -> 38 x 22). A 97-frame 1216 x 704 clip is therefore 13 x 22 x 38 = 10,868 tokens.

Estimated seconds = token-steps x the model's seconds per token-step (table below), where a
clip counts its steps plus one for decoding, and an upscale counts its output tokens once
(latent upsampler + decode) plus, after a spatial upscale, the 3 steps of its refine pass
(run without guidance: one transformer pass per step, where a dev rate counts ~3.5). A stage
on a smooth seam also encodes the previous clip's tail again (runtime/carry.py), counted as
one step over the tail's tokens. An encode runs the text encoder once over its padded prompt
(1024 tokens: ~2 x 12B x 1024 FLOPs for Gemma 3 12B, ~0.1 s at that throughput; its load,
once per render, is not counted). Stitch, export and join run on the CPU and count zero.

Where the numbers come from (an honest account): the four real-model rates are ESTIMATES,
not measurements. They come from the transformer's size (about 2 x parameters FLOPs per
token per transformer pass, plus attention at ~10k tokens), the guidance passes per step
(distilled: 1; dev: CFG + STG + modality guidance, about 3.5) and an assumed ~40 % of one
H100's dense bf16 throughput. They are good to a factor of two at best. The GPU benchmark
recalibrates them: it measures seconds and token-steps on a real card and writes a table
(`calibrate`), which `load_rates` merges over these defaults when `MOLDBATCH_COST_TABLE`
names it. The tiny model's rate was measured on a 2-core CPU (a clip of 17 frames at 64 x 64
in ~0.1 s) and is dominated by fixed per-call overhead.

Light install only: no torch here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from moldbatch.errors import format_seconds
from moldbatch.fsio import atomic_write
from moldbatch.models import latent_tokens

ENV_TABLE = "MOLDBATCH_COST_TABLE"
DECODE_STEPS = 1  # the VAE decode of a clip, counted as one step over its tokens
CARRY_STEPS = 1  # the encode of a smooth seam's carried tail, one step over its tokens
REFINE_STEPS = 3  # the refine pass after a spatial upscale: 3 steps, one pass each (no guidance)
REFERENCE_GPU = "NVIDIA H100 80GB"


@dataclass(frozen=True)
class Rate:
    seconds_per_token_step: float
    source: str
    passes_per_step: float = 1.0  # transformer passes per step the rate includes (guidance)


_ESTIMATE = f"estimate from model size and guidance passes at ~40% of one {REFERENCE_GPU}"
RATES: dict[str, Rate] = {
    "ltx-2-19b-distilled:fp8": Rate(1.0e-4, _ESTIMATE + " (1 pass per step)"),
    "ltx-2-19b-dev:fp8": Rate(3.5e-4, _ESTIMATE + " (CFG + STG + modality: ~3.5 passes)", 3.5),
    "ltx-2.3-22b-distilled:fp8": Rate(1.15e-4, _ESTIMATE + " (1 pass per step)"),
    "ltx-2.3-22b-dev:fp8": Rate(4.0e-4, _ESTIMATE + " (CFG + STG + modality: ~3.5 passes)", 3.5),
    "ltx-2-tiny:random": Rate(4.0e-3, "measured on a 2-core CPU (fixed overhead dominates)"),
}
UNKNOWN = Rate(4.0e-4, "no entry for this model: the slowest real model's rate")
ENCODE_SECONDS = {"ltx-2-tiny:random": 0.01}  # per prompt; the real models' text encoder:
ENCODE_SECONDS_REAL = 0.1


def load_rates(path: str | Path | None = None) -> dict[str, Rate]:
    """The built-in table with a calibration file merged over it: `path`, else the file named
    by $MOLDBATCH_COST_TABLE. The file is {model: {"seconds_per_token_step": x, "source": s}}
    (or {model: x}). A missing file means the built-in table."""
    rates = dict(RATES)
    path = path or os.environ.get(ENV_TABLE)
    if not path or not Path(path).is_file():
        return rates
    for model, entry in json.loads(Path(path).read_text()).items():
        passes = rates.get(model, UNKNOWN).passes_per_step
        if isinstance(entry, (int, float)):
            rates[model] = Rate(float(entry), f"calibrated ({path})", passes)
        else:
            rates[model] = Rate(
                float(entry["seconds_per_token_step"]),
                entry.get("source", f"calibrated ({path})"),
                passes,
            )
    return rates


def calibrate(
    model: str, seconds: float, token_steps: float, path: str | Path, source: str = ""
) -> Rate:
    """Record a measured rate (from the GPU benchmark) in the calibration file at `path`."""
    path = Path(path)
    table = json.loads(path.read_text()) if path.is_file() else {}
    rate = Rate(seconds / token_steps, source or f"measured: {seconds:.1f} s / {token_steps:.0f}")
    table[model] = {"seconds_per_token_step": rate.seconds_per_token_step, "source": rate.source}
    atomic_write(path, json.dumps(table, indent=2, sort_keys=True) + "\n")
    return rate


@dataclass
class StageCost:
    id: str
    kind: str
    frames: int  # frames this stage produces
    tokens: int = 0  # video latent tokens it works on
    steps: int = 0  # denoising steps (clips)
    token_steps: int = 0
    gpu_seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "frames": self.frames,
            "tokens": self.tokens,
            "steps": self.steps,
            "token_steps": self.token_steps,
            "gpu_seconds": round(self.gpu_seconds, 3),
        }


@dataclass
class PlanCost:
    stages: dict[str, StageCost] = field(default_factory=dict)
    rates: dict[str, Rate] = field(default_factory=dict)  # the models this plan uses

    @property
    def gpu_seconds(self) -> float:
        return sum(s.gpu_seconds for s in self.stages.values())

    def seconds_for(self, ids) -> float:
        return sum(self.stages[i].gpu_seconds for i in ids if i in self.stages)

    def to_json(self) -> dict:
        return {
            "gpu_seconds": round(self.gpu_seconds, 3),
            "reference_gpu": REFERENCE_GPU,
            "rates": {
                m: {"seconds_per_token_step": r.seconds_per_token_step, "source": r.source}
                for m, r in self.rates.items()
            },
            "stages": {i: s.to_json() for i, s in self.stages.items()},
        }


def estimate(plan, rates: dict[str, Rate] | None = None) -> PlanCost:
    """Frames, tokens and estimated GPU seconds of every stage of a valid plan."""
    rates = rates if rates is not None else load_rates()
    shots = {s.id: s for s in plan.shots}
    out = PlanCost()
    for st in plan.stages:
        p = st.params
        if st.kind == "encode":
            seconds = ENCODE_SECONDS.get(p.model, ENCODE_SECONDS_REAL)
            out.stages[st.id] = StageCost(st.id, "encode", 0, p.max_sequence_length, 1, 0, seconds)
        elif st.kind == "clip":
            rate = rates.get(p.model, UNKNOWN)
            out.rates[p.model] = rate
            tokens = latent_tokens(p.frames, p.width, p.height)
            ts = tokens * (p.steps + DECODE_STEPS) + _carry_tokens(p.conditions, p.width, p.height)
            out.stages[st.id] = StageCost(
                st.id, "clip", p.frames, tokens, p.steps, ts, ts * rate.seconds_per_token_step
            )
        elif st.kind in ("refine", "upscale"):
            rate = rates.get(p.model, UNKNOWN)
            src = out.stages[st.needs[0]].frames
            frames = (src - 1) * 2 + 1 if p.temporal else src
            tokens = latent_tokens(frames, p.width, p.height)
            seconds = tokens * rate.seconds_per_token_step
            steps = 0
            if p.refine:
                # at the size before any temporal x2, without guidance: one pass per step
                steps = REFINE_STEPS
                refined = latent_tokens(src, p.width, p.height)
                seconds += (
                    refined * steps * rate.seconds_per_token_step / max(rate.passes_per_step, 1.0)
                )
                seconds += _carry_tokens(p.refine, p.width, p.height) * rate.seconds_per_token_step
            out.stages[st.id] = StageCost(
                st.id, st.kind, frames, tokens, steps, tokens * (steps + 1), seconds
            )
        elif st.kind in ("stitch", "export"):
            out.stages[st.id] = StageCost(st.id, st.kind, shots[st.shot].frames)
        else:  # join
            frames = sum(shots[s].frames for s in p.shots if s in shots)
            out.stages[st.id] = StageCost(st.id, st.kind, frames)
    return out


def _carry_tokens(conditions, width: int, height: int) -> int:
    """Tokens of the VAE encode of the tail a stage holds (0 without a smooth seam)."""
    tail = conditions.carry_tail if conditions is not None else 0
    return latent_tokens(tail, width, height) * CARRY_STEPS if tail else 0


def over_budget(plan, workdir, max_gpu_minutes: float) -> str | None:
    """Why a render of what is not cached would go over `max_gpu_minutes`, or None. It counts
    the stages a render would actually run (`execute.store.resolve`: nothing upstream of a
    cached output), so a film whose intermediates were collected is not over-counted."""
    from moldbatch.execute.store import stages_to_run

    todo = [s.id for s in stages_to_run(plan, workdir)]
    seconds = estimate(plan).seconds_for(todo)
    if seconds <= max_gpu_minutes * 60:
        return None
    return (
        f"refusing to render: the {len(todo)} stages not cached need an estimated "
        f"{format_seconds(seconds)} of GPU time, over the budget of {max_gpu_minutes:g} min "
        f"(--max-gpu-minutes); nothing was rendered"
    )
