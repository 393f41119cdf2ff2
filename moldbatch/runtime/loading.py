"""Building the pipeline for a model name: the tiny random model, or real weights on disk.

Real models are read from local files only, never downloaded here: `moldbatch pull` fetches
them (the list is `moldbatch.weights.files.model_files`) into the Hugging Face cache or a
models folder (`MOLDBATCH_MODELS`), and a missing file is a RuntimeLoadError naming the
`moldbatch pull` command. The real weights need a GPU; the path itself runs on the CPU
with tiny weights in the shipped layouts (tests/runtime/test_real_layout.py).

* text encoder: Gemma 3 12B, `google/gemma-3-12b-it-qat-q4_0-unquantized`;
* transformer: the fp8 single file of the model (`from_single_file`, with the architecture
  config of the family's diffusers-format repo), kept in fp8 on CUDA: fp8 matmuls on GPUs
  that have them, fp8 storage upcast per call on the others (`runtime/fp8.py`);
* text connectors: the same single file (`load_connectors`; they are trained with the
  transformer), the diffusers-format repo's only when the file has none;
* VAEs, vocoder and scheduler: the family's diffusers-format repo;
* latent upsamplers, loaded on first use from Lightricks' single upsampler files
  (`load_latent_upsampler`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from moldbatch.errors import RuntimeFeatureError, RuntimeLoadError
from moldbatch.models import TEXT_ENCODER_REPO, ModelInfo
from moldbatch.runtime.fp8 import FP8, fp8_mode, keeps_precision, swap_stored
from moldbatch.runtime.pipeline import MoldConditionPipeline
from moldbatch.weights.hub import hub_errors

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """A model ready to render: the pipeline and the latent upsamplers already built."""

    pipe: MoldConditionPipeline
    # role ("spatial-x2", "spatial-x1.5", "temporal-x2") -> LTX2LatentUpsamplerModel; a role
    # not here is loaded lazily with `load_latent_upsampler`
    upsamplers: dict[str, Any] = field(default_factory=dict)


def load(
    info: ModelInfo, device: torch.device, dtype: torch.dtype, keep_on_host: tuple[str, ...] = ()
) -> Loaded:
    """The denoiser (everything but the text encoder) on `device`; the components named in
    `keep_on_host` stay on the CPU (the streamed tier offloads them itself)."""
    if info.built_in:
        return _load_tiny(device, dtype, keep_on_host)
    return _load_real(info, device, dtype, keep_on_host)


def _place(pipe: Any, device: torch.device, keep_on_host: tuple[str, ...]) -> None:
    if not keep_on_host:
        pipe.to(device)
        return
    for name, part in pipe.components.items():
        if isinstance(part, torch.nn.Module) and name not in keep_on_host:
            part.to(device)


def _load_tiny(device: torch.device, dtype: torch.dtype, keep_on_host: tuple[str, ...]) -> Loaded:
    from moldbatch.runtime.tiny import build_components

    components = build_components()
    # the text encoder loads apart, when a prompt is encoded (load_text_encoder)
    pipe = MoldConditionPipeline(**{**components.pipeline_kwargs(), "text_encoder": None})
    upsamplers = {
        "spatial-x2": components.latent_upsampler,
        "spatial-x1.5": components.spatial_upsampler_x1_5,
        "temporal-x2": components.temporal_upsampler,
    }
    if dtype != torch.float32:  # built in float32; cast only when the device wants another dtype
        pipe.to(dtype=dtype)
        for upsampler in upsamplers.values():
            upsampler.to(dtype=dtype)
    _place(pipe, device, keep_on_host)
    for upsampler in upsamplers.values():
        upsampler.to(device)
    finish_pipeline(pipe)
    return Loaded(pipe=pipe, upsamplers=upsamplers)


def finish_pipeline(pipe: MoldConditionPipeline) -> None:
    """What every loaded pipeline gets, tiny or real, as Lightricks' pipelines run:

    * the vocoder in float32 whatever the compute dtype (ltx-core
      `model/audio_vae/vocoder.py:572-609`, 63fd9a4: bf16 degrades its spectra);
    * no separate `audio_scheduler`: the audio copies the video's scheduler, so the schedule
      the runtime sets (distilled sigmas unshifted, the dev schedule, the refine's) is the
      audio's too (a repo's own audio scheduler would keep its own shift);
    * the video VAE untiled: conditioning images encode whole (ltx-pipelines
      `utils/helpers.py:147`); decoding and the encoding of videos (a retake's source, an
      IC-LoRA's reference) tile inside `pipeline.reference_tiling`, at the reference's sizes.
    """
    torch.nn.Module.to(pipe.vocoder, torch.float32)  # (ModelMixin.to warns about fp32 modules)
    if getattr(pipe, "audio_scheduler", None) is not None:
        pipe.audio_scheduler = None
    pipe.vae.use_tiling = False
    pipe.vae.use_framewise_encoding = False
    pipe.vae.use_framewise_decoding = False
    pipe.set_progress_bar_config(disable=True)


def local_root(repo: str) -> str:
    """The folder `repo` is read from (models folder or Hugging Face cache snapshot)."""
    from moldbatch.weights.files import repo_root

    root = repo_root(repo)
    if root is None:  # require_files said it was there; it went away since
        raise RuntimeLoadError(f"{repo} is no longer on this machine; pull the model again")
    return str(root)


def require_files(info: ModelInfo, extras: list[str] | tuple[str, ...] = ()) -> None:
    """Raise a one-line RuntimeLoadError naming `moldbatch pull` when a file is missing."""
    from moldbatch.weights.files import missing_message

    message = missing_message({info.name: list(extras)})
    if message:
        raise RuntimeLoadError(message)


ORIGINAL_PREFIX = "model.diffusion_model."  # the transformer's keys in the original single file
# LTX-2.3 names diffusers' single-file converter (0.42) does not rename yet; the conversion
# script does (`LTX_2_3_TRANSFORMER_KEYS_RENAME_DICT`). Longer names first.
_RENAMES_2_3 = (
    ("audio_prompt_adaln_single.", "audio_prompt_adaln."),
    ("prompt_adaln_single.", "prompt_adaln."),
)


# The text connectors (and their text projection) ship in the same single file as the
# transformer, which LTX-2's diffusers-format repos hold only for one variant each (the 19B
# repo's `connectors/` are the dev model's). Their keys are under the transformer's prefix, or
# (the projection, in some files) at the top level.
_CONNECTOR_PARTS = (
    "video_embeddings_connector.",
    "audio_embeddings_connector.",
    "text_embedding_projection.",
    "connectors.",
)
# original -> diffusers names of LTX2TextConnectors' weights (diffusers' conversion script's
# table); the LTX-2.3 per-modality projections before LTX-2.0's single one.
_CONNECTOR_RENAMES = (
    ("connectors.", ""),
    ("video_embeddings_connector.", "video_connector."),
    ("audio_embeddings_connector.", "audio_connector."),
    ("transformer_1d_blocks.", "transformer_blocks."),
    ("text_embedding_projection.video_aggregate_embed.", "video_text_proj_in."),
    ("text_embedding_projection.audio_aggregate_embed.", "audio_text_proj_in."),
    ("text_embedding_projection.aggregate_embed.", "text_proj_in."),
    (".q_norm.", ".norm_q."),
    (".k_norm.", ".norm_k."),
)


def _is_connector(name: str) -> bool:
    """Whether an original key (its transformer prefix removed) belongs to the text connectors."""
    return name.startswith(_CONNECTOR_PARTS)


def read_original(
    checkpoint: str | Path,
    dtype: torch.dtype,
    part: Literal["transformer", "connectors"] = "transformer",
    fp8: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """One part ("transformer" or "connectors") of an original (ltx-core) single file, in
    `dtype`, with the original key names (the transformer's keep their `model.diffusion_model.`
    prefix, the connectors' lose it). Pre-quantized fp8 files store each fp8 weight with a
    `.weight_scale` (and a static `.input_scale` for their own fp8 matmul): the weight is
    `fp8 * weight_scale`, so it is folded here (read raw, weights come out ~1000x too large).
    Input scales are dropped: our fp8 path scales activations per row on the fly. The file's
    other components (VAEs, vocoder) are left out.

    Given an `fp8` dict, the weights the file stores as float8 e4m3 with a per-tensor
    `weight_scale` (except those that keep their precision, `fp8.keeps_precision`) are not
    folded: their codes and scale go to `fp8[key]` as stored, and the returned dict holds an
    empty (meta) placeholder of their shape for them."""
    from safetensors import safe_open

    if part not in ("transformer", "connectors"):
        raise ValueError(f"part must be 'transformer' or 'connectors', not {part!r}")

    def wanted(key: str) -> bool:
        inner = key.removeprefix(ORIGINAL_PREFIX)
        if part == "connectors":
            return _is_connector(inner)
        return key.startswith(ORIGINAL_PREFIX) and not _is_connector(inner)

    out: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    with safe_open(str(checkpoint), framework="pt") as f:
        keys = [k for k in f.keys() if wanted(k)]
        present = set(keys)
        for key in keys:
            if key.endswith("_scale") and key.removesuffix("_scale") in present:
                scales[key.removesuffix("_scale")] = f.get_tensor(key).float()
            elif key.endswith(".input_scale"):
                continue
            else:
                out[key] = f.get_tensor(key)
    for key, value in out.items():
        scale = scales.get(key)
        if scale is not None:
            if scale.numel() != 1:
                raise RuntimeLoadError(
                    f"{Path(checkpoint).name}: {key}_scale has shape {tuple(scale.shape)}; "
                    "only per-tensor fp8 scales are supported"
                )
            if (
                fp8 is not None
                and value.dtype == FP8
                and key.endswith(".weight")
                and not keeps_precision(key)
            ):
                fp8[key] = (value, scale.reshape(()))
                out[key] = torch.empty(value.shape, dtype=dtype, device="meta")
                continue
            value = value.float() * scale.reshape(())
        out[key] = value.to(dtype)
    if part == "connectors":
        # a name both under the prefix and at the top level: the prefixed one (as diffusers)
        ordered = sorted(out.items(), key=lambda kv: kv[0].startswith(ORIGINAL_PREFIX))
        out = {k.removeprefix(ORIGINAL_PREFIX): v for k, v in ordered}
    return out


def _strict_load(model: Any, state: dict[str, torch.Tensor], checkpoint: Path, what: str) -> None:
    """Load `state` into the (empty) `model`; a missing or unknown weight is a one-line error."""
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeLoadError(
            f"{checkpoint.name} does not fit {what}: "
            f"{len(missing)} weights missing (e.g. {', '.join(missing[:3]) or '-'}), "
            f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3]) or '-'}); "
            "is it the checkpoint of this model?"
        )


def load_connectors(checkpoint: str | Path, config_root: str | Path, dtype: torch.dtype) -> Any:
    """The text connectors stored in the model's own single file (LTX2TextConnectors, with the
    architecture of `config_root/connectors/config.json`), or None when the file has none.
    They are trained with the transformer: a distilled transformer needs its own."""
    from accelerate import init_empty_weights
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    original = read_original(checkpoint, dtype, part="connectors")
    if not original:
        return None
    state = {}
    for key, value in original.items():
        for old, new in _CONNECTOR_RENAMES:
            key = key.replace(old, new)
        state[key] = value
    config = LTX2TextConnectors.load_config(
        str(config_root), subfolder="connectors", local_files_only=True
    )
    with init_empty_weights(include_buffers=False):
        connectors = LTX2TextConnectors.from_config(config)
    _strict_load(connectors, state, Path(checkpoint), f"the text connectors of {config_root}")
    return connectors.to(dtype).eval()


def load_transformer(
    checkpoint: str | Path,
    config_root: str | Path,
    dtype: torch.dtype,
    fp8: str = "off",
) -> Any:
    """The LTX-2 transformer from its original single-file checkpoint, read locally.

    `checkpoint` holds the original (ltx-core) key names, `model.diffusion_model.*`, which
    diffusers' single-file converter renames (plus the LTX-2.3 names it does not know yet).
    `fp8` is the device's fp8 mode (`fp8.fp8_mode`): "off" folds the fp8 weights with their
    scales into `dtype`; "scaled" or "cast" makes exactly the layers the file stores in fp8
    (with a `weight_scale`) Fp8Linear layers holding the file's own bytes and scale, as
    Lightricks' fp8-scaled-mm loader (`quantization/fp8_scaled_mm.py:136-164`); bf16 layers
    and the attention gates stay in `dtype`. `config_root` is a diffusers-format folder whose
    `transformer/config.json` gives the architecture. The model is built without allocating
    weights and loaded strictly: a missing or unknown weight is an error, never a silently
    random layer. Nothing is downloaded.
    """
    from accelerate import init_empty_weights
    from diffusers import LTX2VideoTransformer3DModel

    config = LTX2VideoTransformer3DModel.load_config(
        str(config_root), subfolder="transformer", local_files_only=True
    )
    if fp8 not in ("off", "scaled", "cast"):
        raise ValueError(f"fp8 must be 'off', 'scaled' or 'cast', not {fp8!r}")
    stored: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = {} if fp8 != "off" else None
    state = _diffusers_names(read_original(checkpoint, dtype, fp8=stored))
    with init_empty_weights(include_buffers=False):
        model = LTX2VideoTransformer3DModel.from_config(config)
    _strict_load(model, state, Path(checkpoint), f"the transformer of {config_root}")
    model = model.to(dtype)
    if stored:
        # the same renames as the weights: diffusers module name -> (codes, scale)
        layers = {}
        for key, value in stored.items():
            (name,) = _diffusers_names({key: value[0]})
            layers[name.removesuffix(".weight")] = value
        swap_stored(model, layers, dtype, fp8_matmul=fp8 == "scaled")
    return model.eval()


def _diffusers_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original transformer key names -> diffusers' (the converter's renames and LTX-2.3's)."""
    from diffusers.loaders.single_file_utils import convert_ltx2_transformer_to_diffusers

    state = convert_ltx2_transformer_to_diffusers(state)
    for old, new in _RENAMES_2_3:
        for key in [k for k in state if k.startswith(old) or f".{old}" in k]:
            renamed = (
                new + key[len(old) :] if key.startswith(old) else key.replace(f".{old}", f".{new}")
            )
            state[renamed] = state.pop(key)
    return state


def _load_real(
    info: ModelInfo, device: torch.device, dtype: torch.dtype, keep_on_host: tuple[str, ...]
) -> Loaded:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import AutoTokenizer

    assert info.diffusers_repo and info.transformer_repo and info.transformer_file
    require_files(info)
    text_root = local_root(TEXT_ENCODER_REPO)
    components = local_root(info.diffusers_repo)
    checkpoint = str(Path(local_root(info.transformer_repo)) / info.transformer_file)

    with hub_errors(TEXT_ENCODER_REPO, "the Gemma 3 tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(text_root, local_files_only=True)

    # Keep the 19B/22B weights in fp8, as shipped (the file's own bytes and scales): fp8
    # matmuls where the GPU has them, else fp8 storage upcast to bf16 per call (runtime/fp8.py).
    mode = fp8_mode(device)
    with hub_errors(info.diffusers_repo, "the transformer configuration"):
        transformer = load_transformer(checkpoint, components, dtype, fp8=mode)
    log.info("transformer weights: fp8 %s", mode)

    with hub_errors(info.diffusers_repo, "the text connectors' configuration"):
        connectors = load_connectors(checkpoint, components, dtype)
    own = {}
    if connectors is not None:
        own["connectors"] = connectors
    else:  # a checkpoint without them: the diffusers-format repo's
        log.info(
            "%s holds no text connectors; using %s's", info.transformer_file, info.diffusers_repo
        )

    with hub_errors(info.diffusers_repo, "the VAEs, vocoder and text connectors"):
        pipe = MoldConditionPipeline.from_pretrained(
            components,
            transformer=transformer,
            **own,
            text_encoder=None,  # loaded apart, when a prompt is encoded (load_text_encoder)
            tokenizer=tokenizer,
            # prompt-enhancer parts moldbatch does not use (and `pull` does not fetch)
            processor=None,
            prompt_enhancer=None,
            duration_head=None,
            dtype=dtype,
            local_files_only=True,
        )
    if info.distilled:
        # Distilled checkpoints take their fixed sigma schedule as given: no resolution shift.
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            pipe.scheduler.config, use_dynamic_shifting=False, shift=1.0, shift_terminal=None
        )
    _place(pipe, device, keep_on_host)
    finish_pipeline(pipe)  # (clips decode in the reference's tiles: pipeline.reference_tiling)
    return Loaded(pipe=pipe)


def load_tokenizer(info: ModelInfo) -> Any:
    """The text encoder's tokenizer (small: loaded with the runtime, whatever the tier)."""
    if info.built_in:
        from moldbatch.runtime.tiny import build_tokenizer

        return build_tokenizer()
    from transformers import AutoTokenizer

    require_files(info)
    with hub_errors(TEXT_ENCODER_REPO, "the Gemma 3 tokenizer"):
        return AutoTokenizer.from_pretrained(local_root(TEXT_ENCODER_REPO), local_files_only=True)


def load_text_encoder(info: ModelInfo, device: torch.device, dtype: torch.dtype) -> Any:
    """The text encoder alone (Gemma 3 12B, or the tiny model's), on `device` in `dtype`: the
    runtime loads it for the text phase and may release it before the transformer runs."""
    if info.built_in:
        from moldbatch.runtime.tiny import build_text_encoder

        encoder = build_text_encoder()
        if dtype != torch.float32:
            encoder.to(dtype=dtype)
        return encoder.to(device)
    from transformers import Gemma3ForConditionalGeneration

    require_files(info)
    text_root = local_root(TEXT_ENCODER_REPO)
    with hub_errors(TEXT_ENCODER_REPO, "the Gemma 3 text encoder"):
        encoder = Gemma3ForConditionalGeneration.from_pretrained(
            text_root, dtype=dtype, local_files_only=True
        )
    return encoder.to(device).eval().requires_grad_(False)


def load_latent_upsampler(
    info: ModelInfo, role: str, device: torch.device, dtype: torch.dtype
) -> Any:
    """The family's latent upsampler for `role`: "spatial-x2", "spatial-x1.5" or "temporal-x2",
    from Lightricks' single upsampler file (the registry's extra of that name), read into
    diffusers' LTX2LatentUpsamplerModel (`_upsampler_from_file`). The single files are what
    every family publishes; the LTX-2.3 diffusers repos carry no `latent_upsampler` folder."""
    if role not in info.files:
        raise RuntimeFeatureError(
            f"{role} latent upscaling is not available for {info.name}"
            + (" (x1.5 exists for ltx-2.3 models only)" if role == "spatial-x1.5" else "")
        )
    require_files(info, [role])
    from moldbatch.weights.files import locate, split_ref

    repo, name = split_ref(info.files[role], info.transformer_repo or "")
    path = locate(repo, name)
    if path is None:
        raise RuntimeLoadError(f"{repo}/{name} is no longer on this machine; pull the model again")
    model = _upsampler_from_file(path, role)
    return model.to(device=device, dtype=dtype).eval()


def _upsampler_from_file(path: Path, role: str) -> Any:
    """An LTX2LatentUpsamplerModel with the weights of one original-format upsampler file."""
    import json

    from diffusers.pipelines.ltx2 import LTX2LatentUpsamplerModel
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        weights = load_file(str(path))
    except Exception as exc:
        raise RuntimeLoadError(f"cannot read the {role} latent upsampler {path}: {exc}") from exc
    config = json.loads(meta["config"]) if "config" in meta else {}
    if "initial_conv.weight" not in weights:
        raise RuntimeLoadError(f"{path.name} is not an LTX-2 latent upsampler (no initial_conv)")
    first = weights["initial_conv.weight"]
    blocks = {k.split(".")[1] for k in weights if k.startswith("res_blocks.")}
    kwargs = {
        "in_channels": int(config.get("in_channels", first.shape[1])),
        "mid_channels": int(config.get("mid_channels", first.shape[0])),
        "num_blocks_per_stage": int(config.get("num_blocks_per_stage", len(blocks))),
        "dims": int(config.get("dims", first.ndim - 2)),
        "spatial_upsample": role.startswith("spatial"),
        "temporal_upsample": role.startswith("temporal"),
    }
    if role.startswith("spatial"):
        # LTX-2.0's x2 and every x1.5 upsample with a rational resampler (`upsampler.conv`),
        # LTX-2.3's x2 with a plain conv + pixel shuffle (`upsampler.0`): the weights say which.
        kwargs.update(
            rational_spatial_scale=1.5 if role == "spatial-x1.5" else 2.0,
            use_rational_resampler=any(k.startswith("upsampler.conv.") for k in weights),
        )
    model = LTX2LatentUpsamplerModel(**kwargs)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # The blur kernel of the rational resampler is a fixed buffer a file may leave out.
    missing = [k for k in missing if not k.endswith("blur_down.kernel")]
    if missing or unexpected:
        raise RuntimeLoadError(
            f"the {role} latent upsampler {path.name} does not fit diffusers' "
            f"LTX2LatentUpsamplerModel (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model
