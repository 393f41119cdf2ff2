"""Memory tiers: where a Runtime keeps its models between and during stages.

* `resident`: the denoiser (transformer, connectors, VAEs, vocoder) loads with the runtime and
  stays; the text encoder loads on the first prompt encoded and stays too.
* `sequential`: one large model at a time. The text encoder loads for the text phase and is
  released (GPU and host memory) before the denoiser loads, which is not loaded before it is
  first needed; an encode after that parks the denoiser on the host meanwhile (on a GPU).
* `streamed`: as sequential, and the transformer's blocks and the text encoder's layers live on
  the host, each group copied to the GPU just before it runs (diffusers' group offloading,
  prefetched on a CUDA stream). The VAE decodes in tiles in every tier (the reference's).

Every tier computes the same thing in the same order: the outputs are byte-identical
(tests/runtime/test_memory_tiers.py). `auto` is resolved by `choose_tier` before a render.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from moldbatch.errors import MoldbatchError
from moldbatch.models import MEMORY_TIERS, ModelInfo, tier_for

log = logging.getLogger(__name__)
MEMORY_ENV = "MOLDBATCH_MEMORY"


def requested_tier(memory: str | None) -> str:
    """The tier asked for: the argument, else MOLDBATCH_MEMORY, else "auto"."""
    tier = memory or os.environ.get(MEMORY_ENV) or "auto"
    if tier != "auto" and tier not in MEMORY_TIERS:
        raise MoldbatchError(
            f"memory tier {tier!r}: expected auto or one of {', '.join(MEMORY_TIERS)}"
        )
    return tier


def device_memory(device: str | None) -> tuple[int, int] | None:
    """(free, total) bytes of the GPU a render would use, or None off CUDA."""
    if not torch.cuda.is_available() or (device is not None and not device.startswith("cuda")):
        return None
    index = torch.device(device or "cuda").index
    return torch.cuda.mem_get_info(index if index is not None else torch.cuda.current_device())


def choose_tier(
    memory: str | None, needs: list[tuple[ModelInfo, int, int, int]], device: str | None
) -> str:
    """The tier a render runs in. `needs`: (model, width, height, frames) of its largest
    denoising passes. `auto` takes the fastest tier whose estimate fits the GPU's free memory
    (resident off CUDA); a film that fits no tier is refused here, before anything runs."""
    tier = requested_tier(memory)
    free = device_memory(device)
    if free is None or not needs:
        return "resident" if tier == "auto" else tier
    fits = tier_for([n for n in needs], free[0])
    if tier == "auto":
        if fits is None:
            raise MoldbatchError(_too_big(needs, free[0]))
        log.info("memory tier %s for %.1f GB free", fits, free[0] / 1e9)
        return fits
    if fits is None or MEMORY_TIERS.index(fits) > MEMORY_TIERS.index(tier):
        log.warning(  # asked for: it runs, the estimate may be pessimistic
            "the %s tier is estimated not to fit the %.1f GB free; %s",
            tier,
            free[0] / 1e9,
            f"--memory {fits} would" if fits else _too_big(needs, free[0]),
        )
    return tier


def _too_big(needs, free: int) -> str:
    from moldbatch.models import peak_bytes

    worst = max(needs, key=lambda n: peak_bytes(n[0], "streamed", *n[1:]))
    gb = peak_bytes(worst[0], "streamed", *worst[1:]) / 1e9
    return (
        f"{worst[0].name} at {worst[1]}x{worst[2]}x{worst[3]} needs ~{gb:.0f} GB even streamed; "
        f"the GPU has {free / 1e9:.1f} GB free: render smaller clips, or free the GPU"
    )


def oom_message(stage: str, tier: str) -> str:
    """The one line a CUDA out-of-memory in a stage becomes."""
    lower = {"resident": "sequential", "sequential": "streamed"}.get(tier)
    hint = (
        f"try --memory {lower}"
        if lower
        else "render at a smaller size or fewer frames per clip, or free the GPU"
    )
    return f"{stage}: out of GPU memory in the {tier} memory tier; {hint} (done stages are kept)"


class MemoryTier:
    """The model placement half of a Runtime (mixed into it): the lazily loaded denoiser
    (`pipe`), and the hooks of the text phase (runtime/text.py)."""

    memory = "resident"
    _pipe: Any = None
    _parked = False  # sequential on a GPU: the denoiser waits on the host during a text phase

    @property
    def pipe(self) -> Any:
        if self._pipe is None:
            self._load_denoiser()
        elif self._parked:
            self.release_text_encoder()
            self._pipe.to(self.device)
            self._parked = False
        return self._pipe

    @pipe.setter
    def pipe(self, value: Any) -> None:
        self._pipe = value

    @property
    def denoiser_loaded(self) -> bool:
        return self._pipe is not None

    def _load_denoiser(self) -> None:
        from moldbatch.runtime.loading import load
        from moldbatch.runtime.lora import LoraSwitch

        if self.memory != "resident":
            self.release_text_encoder()  # one large model at a time
        started = time.perf_counter()
        host = ("transformer",) if self.memory == "streamed" else ()
        loaded = load(self.info, self.device, self.dtype, keep_on_host=host)
        pipe = loaded.pipe
        if self.memory == "streamed":
            stream(pipe.transformer, self.device)
        self._upsamplers.update(loaded.upsamplers)
        self._lora_switch = LoraSwitch(pipe, self.info)
        if self.compiled:
            self._compile(pipe)
        self._pipe = pipe
        self.load_seconds += time.perf_counter() - started
        log.info("loaded %s on %s in %.1f s", self.model, self.device, self.load_seconds)

    @property
    def _loras(self) -> Any:
        self.pipe  # noqa: B018 - loads the denoiser when it is not yet
        return self._lora_switch

    def _before_text_phase(self) -> None:
        # (streamed: the transformer is on the host already, and the text encoder streams)
        if self.memory == "sequential" and self._pipe is not None and self.device.type == "cuda":
            self._pipe.to("cpu")
            self._parked = True
            torch.cuda.empty_cache()

    def _after_text_load(self, text_encoder: Any) -> None:
        if self.memory == "streamed":
            from moldbatch.runtime.text import text_model

            base = text_model(text_encoder)
            stream(getattr(base, "language_model", base), self.device)


def stream(module: Any, device: torch.device) -> None:
    """Group offloading of `module`'s blocks: kept on the host, each block copied to `device`
    just before it runs (on a CUDA stream, prefetching the next). On the CPU the same hooks
    run (host to host), so the tier's code path is the one the tests render through."""
    from diffusers.hooks import apply_group_offloading

    cuda = device.type == "cuda"
    module.to("cpu")
    apply_group_offloading(
        module,
        onload_device=device,
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=cuda,
        # pin each group as it streams rather than a pinned copy of every weight up front
        # (which would double the host memory the tier exists to save)
        low_cpu_mem_usage=True,
    )
