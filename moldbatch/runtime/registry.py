"""The runtime's view of the model registry, which lives in `moldbatch.models` (no torch here)."""

from __future__ import annotations

from moldbatch.errors import RuntimeLoadError
from moldbatch.models import MODELS, ModelInfo


def model_info(name: str) -> ModelInfo:
    """The registry's entry for `name`; RuntimeLoadError for a name it does not know."""
    try:
        return MODELS[name]
    except KeyError:
        raise RuntimeLoadError(
            f"unknown model {name!r}; known models: {', '.join(MODELS)}"
        ) from None
