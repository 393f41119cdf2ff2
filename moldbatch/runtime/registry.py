"""What the runtime needs to know to load each model name (no torch here).

The file names follow Lightricks' releases (see shared/reference/mold-facts.md). The
non-transformer components (VAEs, vocoder, connectors, scheduler, latent upsampler) come from a
diffusers-format repository of the same family; the transformer comes from the fp8 single file.
"""

from __future__ import annotations

from dataclasses import dataclass

TINY_MODEL = "ltx-2-tiny:random"
TEXT_ENCODER_REPO = "google/gemma-3-12b-it-qat-q4_0-unquantized"

# Distilled LTX-2 checkpoints were trained on this fixed 8-step schedule (diffusers' ltx2/utils.py).
DISTILLED_STEPS = 8


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "ltx-2" | "ltx-2.3" | "tiny"
    distilled: bool
    transformer_repo: str | None = None
    transformer_file: str | None = None
    diffusers_repo: str | None = None  # components other than the transformer, diffusers layout
    # Guidance defaults of the dev models (the distilled ones run without guidance terms).
    stg_blocks: tuple[int, ...] = ()
    use_cross_timestep: bool = True  # False is the LTX-2.0 behaviour, True LTX-2.3's
    max_sequence_length: int = 1024
    camera_lora_repo_prefix: str | None = None


MODEL_SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            "ltx-2-19b-dev:fp8",
            "ltx-2",
            distilled=False,
            transformer_repo="Lightricks/LTX-2",
            transformer_file="ltx-2-19b-dev-fp8.safetensors",
            diffusers_repo="Lightricks/LTX-2",
            stg_blocks=(29,),
            use_cross_timestep=False,
            camera_lora_repo_prefix="Lightricks/LTX-2-19b-LoRA-Camera-Control-",
        ),
        ModelSpec(
            "ltx-2-19b-distilled:fp8",
            "ltx-2",
            distilled=True,
            transformer_repo="Lightricks/LTX-2",
            transformer_file="ltx-2-19b-distilled-fp8.safetensors",
            diffusers_repo="Lightricks/LTX-2",
            use_cross_timestep=False,
            camera_lora_repo_prefix="Lightricks/LTX-2-19b-LoRA-Camera-Control-",
        ),
        ModelSpec(
            "ltx-2.3-22b-dev:fp8",
            "ltx-2.3",
            distilled=False,
            transformer_repo="Lightricks/LTX-2.3-fp8",
            transformer_file="ltx-2.3-22b-dev-fp8.safetensors",
            diffusers_repo="diffusers/LTX-2.3-Diffusers",
            stg_blocks=(28,),
        ),
        ModelSpec(
            "ltx-2.3-22b-distilled:fp8",
            "ltx-2.3",
            distilled=True,
            transformer_repo="Lightricks/LTX-2.3-fp8",
            transformer_file="ltx-2.3-22b-distilled-fp8.safetensors",
            diffusers_repo="diffusers/LTX-2.3-Distilled-Diffusers",
        ),
        ModelSpec(TINY_MODEL, "tiny", distilled=False, max_sequence_length=32),
    )
}


def model_spec(name: str) -> ModelSpec:
    try:
        return MODEL_SPECS[name]
    except KeyError:
        known = ", ".join(MODEL_SPECS)
        from moldbatch.runtime.errors import RuntimeLoadError

        raise RuntimeLoadError(f"unknown model {name!r}; known models: {known}") from None
