"""The runtime's view of the model registry, which lives in `moldbatch.models` (no torch here)."""

from __future__ import annotations

from moldbatch.models import DISTILLED_STEPS, MODELS, TEXT_ENCODER_REPO, TINY_MODEL
from moldbatch.models import ModelInfo as ModelSpec

MODEL_SPECS = MODELS

__all__ = [
    "DISTILLED_STEPS",
    "MODEL_SPECS",
    "ModelSpec",
    "TEXT_ENCODER_REPO",
    "TINY_MODEL",
    "model_spec",
]


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        from moldbatch.errors import RuntimeLoadError

        raise RuntimeLoadError(
            f"unknown model {name!r}; known models: {', '.join(MODELS)}"
        ) from None
