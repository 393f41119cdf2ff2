"""Building the pipeline for a model name: the tiny random model, or real weights on disk.

Real models are read from local files only, never downloaded here: `moldbatch pull` fetches
them (the list is `moldbatch.runtime.files.model_files`) into the Hugging Face cache or a
models folder (`MOLDBATCH_MODELS`), and a missing file is a RuntimeLoadError naming the
`moldbatch pull` command. (Not exercisable without a GPU and the weights; written to
diffusers' documented API.)

* text encoder: Gemma 3 12B, `google/gemma-3-12b-it-qat-q4_0-unquantized`;
* transformer: the fp8 single file of the model (`from_single_file`, with the architecture
  config of the family's diffusers-format repo), kept in fp8 storage on CUDA via layerwise casting;
* VAEs, vocoder, connectors and scheduler: the family's diffusers-format repo;
* latent upsampler (x2): the same repo's `latent_upsampler` folder, loaded on first use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moldbatch.runtime.errors import RuntimeFeatureError, RuntimeLoadError
from moldbatch.runtime.hub import hub_errors
from moldbatch.runtime.pipeline import MoldConditionPipeline
from moldbatch.runtime.registry import TEXT_ENCODER_REPO, ModelSpec

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """A model ready to render: the pipeline and how to get its latent upsampler."""

    pipe: MoldConditionPipeline
    latent_upsampler: Any | None  # None: load lazily with `load_latent_upsampler`


def load(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> Loaded:
    if spec.family == "tiny":
        return _load_tiny(device, dtype)
    return _load_real(spec, device, dtype)


def _load_tiny(device: torch.device, dtype: torch.dtype) -> Loaded:
    from moldbatch.runtime.tiny import build_components

    components = build_components()
    pipe = MoldConditionPipeline(**components.pipeline_kwargs())
    upsampler = components.latent_upsampler
    if dtype != torch.float32:  # built in float32; cast only when the device wants another dtype
        pipe.to(dtype=dtype)
        upsampler.to(dtype=dtype)
    pipe.to(device)
    upsampler.to(device)
    pipe.set_progress_bar_config(disable=True)
    return Loaded(pipe=pipe, latent_upsampler=upsampler)


def local_root(repo: str) -> str:
    """The folder `repo` is read from (models folder or Hugging Face cache snapshot)."""
    from moldbatch.runtime.files import repo_root

    root = repo_root(repo)
    if root is None:  # require_files said it was there; it went away since
        raise RuntimeLoadError(f"{repo} is no longer on this machine; pull the model again")
    return str(root)


def require_files(spec: ModelSpec, extras: list[str] | tuple[str, ...] = ()) -> None:
    """Raise a one-line RuntimeLoadError naming `moldbatch pull` when a file is missing."""
    from moldbatch.runtime.files import missing_message

    message = missing_message({spec.name: list(extras)})
    if message:
        raise RuntimeLoadError(message)


def _load_real(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> Loaded:
    from diffusers import FlowMatchEulerDiscreteScheduler, LTX2VideoTransformer3DModel
    from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

    assert spec.diffusers_repo and spec.transformer_repo and spec.transformer_file
    require_files(spec)
    text_root = local_root(TEXT_ENCODER_REPO)
    components = local_root(spec.diffusers_repo)
    checkpoint = str(Path(local_root(spec.transformer_repo)) / spec.transformer_file)

    with hub_errors(TEXT_ENCODER_REPO, "the Gemma 3 text encoder"):
        tokenizer = AutoTokenizer.from_pretrained(text_root, local_files_only=True)
        text_encoder = Gemma3ForConditionalGeneration.from_pretrained(
            text_root, dtype=dtype, local_files_only=True
        )

    with hub_errors(spec.diffusers_repo, "the transformer configuration"):
        transformer = LTX2VideoTransformer3DModel.from_single_file(
            checkpoint,
            config=components,
            subfolder="transformer",
            torch_dtype=dtype,
            local_files_only=True,
        )
    if device.type == "cuda":
        # Keep the 19B/22B weights in fp8 (as shipped) and compute in bf16, layer by layer.
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)

    with hub_errors(spec.diffusers_repo, "the VAEs, vocoder and text connectors"):
        pipe = MoldConditionPipeline.from_pretrained(
            components,
            transformer=transformer,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            # prompt-enhancer parts moldbatch does not use (and `pull` does not fetch)
            processor=None,
            prompt_enhancer=None,
            duration_head=None,
            torch_dtype=dtype,
            local_files_only=True,
        )
    if spec.distilled:
        # Distilled checkpoints take their fixed sigma schedule as given: no resolution shift.
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            pipe.scheduler.config, use_dynamic_shifting=False, shift=1.0, shift_terminal=None
        )
    pipe.to(device)
    # Full-size clips (1216x704x97) decode in tiles to bound VAE memory.
    pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=True)
    return Loaded(pipe=pipe, latent_upsampler=None)


def load_latent_upsampler(
    spec: ModelSpec, scale: float, device: torch.device, dtype: torch.dtype
) -> Any:
    """The family's spatial latent upsampler for `scale` (x2 only for now)."""
    if scale != 2.0:
        raise RuntimeFeatureError(
            f"spatial x{scale:g} latent upscaling is not available in this runtime (only x2 is); "
            "render at the final size instead"
        )
    from diffusers.pipelines.ltx2 import LTX2LatentUpsamplerModel

    assert spec.diffusers_repo
    require_files(spec, ["spatial-x2"])
    with hub_errors(spec.diffusers_repo, "the spatial x2 latent upsampler"):
        model = LTX2LatentUpsamplerModel.from_pretrained(
            local_root(spec.diffusers_repo),
            subfolder="latent_upsampler",
            torch_dtype=dtype,
            local_files_only=True,
        )
    return model.to(device).eval()
