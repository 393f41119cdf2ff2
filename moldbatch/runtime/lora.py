"""LoRAs as PEFT adapters on the shared pipeline: loaded once, switched per clip.

Each distinct file becomes one named adapter the first time a clip asks for it and stays loaded
for the run; a clip activates exactly its own adapters with their scales (`set_adapters`), and
a clip without LoRAs runs the base weights (`disable_lora`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from moldbatch.errors import RuntimeFeatureError, RuntimeLoadError
from moldbatch.models import ModelInfo
from moldbatch.runtime.requests import Lora

CAMERA_PREFIX = "camera-control:"
# The dev models' distilled LoRA (the registry's "distilled-lora" file), used by the refine pass.
DISTILLED_LORA = "distilled-lora"


def camera_lora_location(info: ModelInfo, preset: str) -> tuple[str, str]:
    """(repo, file) of a camera-control LoRA preset; LTX-2 19B only (see files.py)."""
    from moldbatch.weights.files import UnknownExtra, camera_location

    try:
        return camera_location(info, preset)
    except UnknownExtra as exc:
        raise RuntimeFeatureError(str(exc)) from None


def reference_downscale_factor(loras: list[Lora]) -> int:
    """How much smaller than the render an IC-LoRA wants its reference video: the
    `reference_downscale_factor` its file's metadata records (the first LoRA that has one),
    else 1."""
    from safetensors import safe_open

    for lora in loras:
        file = Path(lora.path).expanduser()
        if lora.path.startswith(CAMERA_PREFIX) or lora.path == DISTILLED_LORA or not file.is_file():
            continue
        try:
            with safe_open(str(file), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as exc:
            raise RuntimeLoadError(f"cannot read LoRA {lora.path}: {exc}") from exc
        temporal = meta.get("reference_temporal_scale_factor", "1")
        if temporal.strip() not in ("1", "1.0"):
            # a reference at another frame rate than the clip: diffusers' in-context pipeline
            # has no way to place it, and a misplaced reference would silently misguide
            raise RuntimeFeatureError(
                f"LoRA {lora.path} wants its reference at 1/{temporal} of the clip's frames "
                "(reference_temporal_scale_factor); such IC-LoRAs are not supported yet"
            )
        value = meta.get("reference_downscale_factor")
        if value is not None:
            try:
                return max(1, int(value))
            except ValueError:
                raise RuntimeLoadError(
                    f"LoRA {lora.path}: reference_downscale_factor {value!r} is not a whole number"
                ) from None
    return 1


class LoraSwitch:
    """Keeps the pipeline's active adapters equal to what the current clip asks for."""

    def __init__(self, pipe: Any, info: ModelInfo):
        self._pipe = pipe
        self._info = info
        self._adapters: dict[str, str] = {}  # resolved file -> adapter name
        self._active: tuple[tuple[str, float], ...] = ()

    @property
    def loaded(self) -> dict[str, str]:
        return dict(self._adapters)

    def apply(self, loras: list[Lora]) -> None:
        wanted = tuple((self._adapter_for(lora.path), float(lora.scale)) for lora in loras)
        if wanted == self._active:
            return
        if not wanted:
            self._pipe.disable_lora()
        else:
            self._pipe.enable_lora()
            self._pipe.set_adapters(
                [name for name, _ in wanted], adapter_weights=[w for _, w in wanted]
            )
        self._active = wanted

    def unload(self) -> None:
        if self._adapters:
            self._pipe.unload_lora_weights()
        self._adapters.clear()
        self._active = ()

    def _adapter_for(self, path: str) -> str:
        file = self._resolve(path)
        name = self._adapters.get(file)
        if name is None:
            # A stable name from the path, so logs and adapter lists read the same in every process.
            name = f"lora_{Path(file).stem[:40]}_{hashlib.sha1(file.encode()).hexdigest()[:8]}"
            weights: Any = file
            if path == DISTILLED_LORA and self._info.built_in:
                from moldbatch.runtime.tiny import distilled_lora

                weights = distilled_lora(self._pipe.transformer)
            try:
                self._pipe.load_lora_weights(weights, adapter_name=name)
            except ImportError as exc:  # diffusers raises this when peft is missing
                raise RuntimeLoadError(
                    f"LoRAs need the `peft` package: pip install peft ({exc})"
                ) from exc
            self._adapters[file] = name
        return name

    def _resolve(self, path: str) -> str:
        if path == DISTILLED_LORA:
            return self._distilled()
        if path.startswith(CAMERA_PREFIX):
            preset = path[len(CAMERA_PREFIX) :]
            repo, filename = camera_lora_location(self._info, preset)
            from moldbatch.weights.files import locate, missing_message

            found = locate(repo, filename)
            if found is None:  # never downloaded at render time: `moldbatch pull` fetches it
                raise RuntimeLoadError(
                    missing_message({self._info.name: [f"camera:{preset}"]})
                    or f"camera LoRA {repo}/{filename} is not on this machine"
                )
            return str(found)
        file = Path(path).expanduser()
        if file.suffix != ".safetensors":
            raise RuntimeFeatureError(f"LoRA {path!r} must be a .safetensors file")
        if not file.is_file():
            raise RuntimeLoadError(f"LoRA file not found: {path}")
        return str(file.resolve())

    def _distilled(self) -> str:
        """The distilled LoRA's file (a name standing for the tiny model's in-memory one)."""
        if self._info.built_in:
            return f"{self._info.name}:{DISTILLED_LORA}"
        if DISTILLED_LORA not in self._info.files:
            raise RuntimeFeatureError(f"{self._info.name} has no distilled LoRA (it needs none)")
        from moldbatch.weights.files import locate, missing_message, split_ref

        repo, filename = split_ref(
            self._info.files[DISTILLED_LORA], self._info.transformer_repo or ""
        )
        found = locate(repo, filename)
        if found is None:  # never downloaded at render time: `moldbatch pull` fetches it
            raise RuntimeLoadError(
                missing_message({self._info.name: [DISTILLED_LORA]})
                or f"the distilled LoRA {repo}/{filename} is not on this machine"
            )
        return str(found)
