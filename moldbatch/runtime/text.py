"""Text encoding apart from denoising: the text encoder (Gemma 3) loads on first use, encodes a
prompt into what the connectors read, and is released again (GPU and host memory) when the
memory tier says so, before the transformer denoises.

The stored form of a prompt is the text encoder's packed all-layer hidden states trimmed to the
prompt's real tokens: [tokens, hidden x (layers + 1)] in the encoder's dtype (bf16 on GPUs; Gemma
3 12B: 49 x 3840 values a token, 376 kB in bf16). At use it is padded back on the left to the
model's `max_sequence_length` with zeros, with the matching attention mask. The connectors never
read the padded positions' values (LTX-2.0's masked mean/range normalisation `masked_fill`s them,
LTX-2.3's per-token RMS norm is followed by a `where` on the mask, and the learnable registers
replace them), so the stored path renders bitwise what encoding in the pipeline call renders
(tests/runtime/test_text_phase.py). The connectors run per clip, with the clip's LoRAs.
"""

from __future__ import annotations

import gc
import logging
from types import SimpleNamespace
from typing import Any

import torch

from moldbatch.errors import RuntimeFeatureError
from moldbatch.models import DEFAULT_NEGATIVE

log = logging.getLogger(__name__)


def resolve_prompt(prompt: str | None, default: str | None) -> str:
    """An encode stage's text: its prompt, or the one its symbolic `default` names."""
    if prompt is not None:
        return prompt
    if default == DEFAULT_NEGATIVE:
        from diffusers.pipelines.ltx2.utils import DEFAULT_NEGATIVE_PROMPT

        return DEFAULT_NEGATIVE_PROMPT
    raise RuntimeFeatureError(f"unknown symbolic prompt {default!r}")


class TextEncoding:
    """The text half of a Runtime (mixed into it): `encode_text`, `release_text_encoder`, and
    the pipeline arguments of a clip's prompts."""

    _text_encoder: Any = None
    text_encodes = 0  # prompts this runtime encoded (each one a text encoder forward)

    @property
    def text_encoder_loaded(self) -> bool:
        return self._text_encoder is not None

    def _ensure_text_encoder(self) -> Any:
        from moldbatch.runtime.loading import load_text_encoder

        if self._text_encoder is None:
            self._before_text_phase()
            # streamed: the layers stay on the host and stream in (MemoryTier._after_text_load)
            where = torch.device("cpu") if self.memory == "streamed" else self.device
            self._text_encoder = load_text_encoder(self.info, where, self.dtype)
            self._after_text_load(self._text_encoder)
            log.info("text encoder of %s loaded", self.model)
        return self._text_encoder

    def _before_text_phase(self) -> None:
        """Hook: make room for the text encoder (the memory tier's)."""

    def _after_text_load(self, text_encoder: Any) -> None:
        """Hook: the tier's placement of a freshly loaded text encoder."""

    @torch.no_grad()
    def encode_text(self, prompt: str) -> torch.Tensor:
        """`prompt` -> its stored form [tokens, hidden x (layers + 1)] (cpu, the encoder's dtype),
        exactly what the pipeline computes for it (same call, same padded length), trimmed."""
        from moldbatch.runtime.pipeline import MoldConditionPipeline

        encoder = self._ensure_text_encoder()
        length = self.info.max_sequence_length
        # Gemma's base model: the same hidden states as the full model, without its logits
        # (1024 x 262k of them for Gemma 3 12B), which the pipeline never reads
        shim = SimpleNamespace(
            tokenizer=self.tokenizer,
            text_encoder=text_model(encoder),
            _execution_device=self.device,
        )
        embeds, mask = MoldConditionPipeline._get_gemma_prompt_embeds(
            shim, prompt, max_sequence_length=length, device=self.device
        )
        self.text_encodes += 1
        tokens = int(mask[0].sum())
        if tokens and not bool(mask[0, length - tokens :].all()):
            raise RuntimeFeatureError("the tokenizer did not pad on the left")
        return embeds[0, length - tokens :].detach().to("cpu").contiguous()

    def release_text_encoder(self) -> bool:
        """Drop the text encoder: its parameters leave the GPU and host memory (the module is
        emptied in place, so a reference kept elsewhere holds no weights). True if one was held."""
        encoder = self._text_encoder
        if encoder is None:
            return False
        self._text_encoder = None
        _empty(encoder)
        del encoder
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        log.info("text encoder of %s released", self.model)
        return True

    def padded(self, stored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A stored prompt -> (prompt_embeds [1, L, D], prompt_attention_mask [1, L]) as the
        pipeline's own encoding has them, the padded positions zero (never read)."""
        length = self.info.max_sequence_length
        tokens = stored.shape[0]
        if tokens > length:
            raise RuntimeFeatureError(
                f"stored prompt of {tokens} tokens is longer than {length}: not this model's"
            )
        embeds = torch.zeros((1, length, stored.shape[1]), dtype=stored.dtype, device=self.device)
        embeds[0, length - tokens :] = stored.to(self.device)
        mask = torch.zeros((1, length), dtype=torch.long, device=self.device)
        mask[0, length - tokens :] = 1
        return embeds, mask

    def prompt_kwargs(
        self,
        prompt: str,
        negative: str | None,
        stored: torch.Tensor | None = None,
        stored_negative: torch.Tensor | None = None,
        guided: bool = False,
    ) -> dict[str, Any]:
        """The pipeline's text arguments for a clip: its stored prompts, padded (a prompt not
        given stored is encoded now). `guided`: the call runs classifier-free guidance, so it
        needs the negative prompt too."""
        encodes = self.text_encodes
        if stored is None:
            stored = self.encode_text(prompt)
        embeds, mask = self.padded(stored)
        out: dict[str, Any] = {"prompt_embeds": embeds, "prompt_attention_mask": mask}
        if guided:
            if stored_negative is None:
                stored_negative = self.encode_text(negative or "")
            neg, neg_mask = self.padded(stored_negative)
            out.update(negative_prompt_embeds=neg, negative_prompt_attention_mask=neg_mask)
        if self.text_encodes != encodes and self.memory != "resident":
            # encoded here, in a denoising call: one large model at a time all the same
            self.release_text_encoder()
            self.pipe  # noqa: B018 - back on the device if it waited on the host meanwhile
        return out


def text_model(encoder: Any) -> Any:
    """The part of a Gemma 3 text encoder that computes its hidden states (its base model)."""
    return getattr(encoder, "model", encoder)


def _empty(module: torch.nn.Module) -> None:
    """Free a module's weights whoever still references it: every parameter and buffer becomes
    an empty tensor (storage released)."""
    with torch.no_grad():
        for p in list(module.parameters()) + list(module.buffers()):
            p.data = torch.empty(0, dtype=p.dtype, device="cpu")


def stored_megabytes(tokens: int, hidden: int = 3840, layers: int = 48, itemsize: int = 2) -> float:
    """MB of one stored prompt: tokens x hidden x (layers + 1) values (Gemma 3 12B in bf16)."""
    return tokens * hidden * (layers + 1) * itemsize / 1e6
