"""How each model family samples: guidance, the sigma schedule and the negative prompt of a
first pass, as Lightricks' reference pipelines run them (docs/reference-parity.md)."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from moldbatch.models import DISTILLED_STEPS, ModelInfo
from moldbatch.runtime.requests import ClipRequest

log = logging.getLogger(__name__)


def plain_guidance(info: ModelInfo, guidance: float) -> dict[str, Any]:
    """Plain CFG at `guidance` for video and audio: STG and modality isolation each add a
    transformer pass per step, so they stay off (the distilled and refine settings)."""
    return {
        "guidance_scale": guidance,
        "audio_guidance_scale": guidance,
        "stg_scale": 0.0,
        "audio_stg_scale": 0.0,
        "modality_scale": 1.0,
        "audio_modality_scale": 1.0,
        "guidance_rescale": 0.0,
        "audio_guidance_rescale": 0.0,
        "spatio_temporal_guidance_blocks": None,
        # the gates' rule of the reference; the scale/shift half is pipeline.py's (point 4)
        "use_cross_timestep": True,
    }


# LTX-2's reference schedule for guided sampling (ltx-core's default scheduler): a flow shift
# fixed at its 4096-token value, whatever the clip's size, stretched so the last step ends at
# sigma 0.1 before the final jump to 0. diffusers would shift by the clip's own token count
# instead, which for a full-size 97-frame clip leaves about a third of 30 steps above 0.97.
DEV_SHIFT = 2.05


DEV_TERMINAL = 0.1


def dev_sigmas(steps: int) -> list[float]:
    """The `steps` sigmas (the final 0 left implicit) of LTX-2's reference guided schedule."""
    t = np.linspace(1.0, 0.0, steps + 1)[:-1]
    with np.errstate(divide="ignore"):
        shifted = math.exp(DEV_SHIFT) / (math.exp(DEV_SHIFT) + (1.0 / t - 1.0))
    left = 1.0 - shifted
    if steps > 1 and left[-1] > 0:
        shifted = 1.0 - left * (1.0 - DEV_TERMINAL) / left[-1]
    return [float(x) for x in shifted]


def sampling_kwargs(info: ModelInfo, req: ClipRequest) -> dict[str, Any]:
    """Guidance and schedule settings of a first pass for this model family. A `sigmas` list
    is absolute: the pipeline must not shift it again (see `unshifted_schedule`)."""
    if info.built_in:
        return {**plain_guidance(info, req.guidance), "sigmas": None}
    if info.distilled:
        # Distilled checkpoints were trained to run without guidance on a fixed 8-step schedule.
        from diffusers.pipelines.ltx2.utils import DISTILLED_SIGMA_VALUES

        fixed = req.steps == DISTILLED_STEPS
        if not fixed:
            # Lightricks' distilled pipeline runs only its 8 sigmas (`utils/constants.py:15`)
            log.warning(
                "%s: %d steps leave the distilled model's 8-sigma schedule (the only one "
                "Lightricks' reference runs); diffusers' default schedule is used",
                info.name,
                req.steps,
            )
        return {
            **plain_guidance(info, 1.0),
            "sigmas": list(DISTILLED_SIGMA_VALUES) if fixed else None,
        }
    # Dev models: the request's CFG for video on the reference schedule; diffusers' recommended
    # audio CFG (7), STG, modality-isolation guidance (3) and rescaling (0.7) stay at the
    # pipeline defaults, which are Lightricks' too.
    return {
        "guidance_scale": req.guidance,
        "spatio_temporal_guidance_blocks": list(info.stg_blocks),
        "use_cross_timestep": True,  # see plain_guidance
        "sigmas": dev_sigmas(req.steps),
    }


def negative_prompt_for(info: ModelInfo, req: ClipRequest) -> str:
    """The clip's negative prompt; with guidance on (dev models) and none given, Lightricks'
    default one (diffusers' DEFAULT_NEGATIVE_PROMPT), as their pipelines use."""
    if req.negative_prompt or not info.guided:
        return req.negative_prompt
    from diffusers.pipelines.ltx2.utils import DEFAULT_NEGATIVE_PROMPT

    return DEFAULT_NEGATIVE_PROMPT


@contextlib.contextmanager
def unshifted_schedule(pipe: Any) -> Iterator[None]:
    """Within this block the pipeline's scheduler takes given sigmas as they are: the refine
    schedule is absolute, so no resolution-dependent shift may move it."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    kept = pipe.scheduler
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        kept.config, use_dynamic_shifting=False, shift=1.0, shift_terminal=None
    )
    try:
        yield
    finally:
        pipe.scheduler = kept
