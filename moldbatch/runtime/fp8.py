"""fp8 weights for the 19B / 22B transformers, run one of two ways.

The published checkpoints store the transformer in fp8 (e4m3). On a GPU:

* **scaled** (GPUs with fp8 tensor cores: compute capability 8.9+, Ada and Hopper): the linear
  layers of the transformer blocks keep their weights in fp8 with a per-tensor scale and
  multiply in fp8 with `torch._scaled_mm`, the activations quantized per row on the fly
  (`ScaledFp8Linear`); the result comes out in the compute dtype (bf16).
* **cast** (older GPUs): diffusers' layerwise casting keeps every weight in fp8 storage and
  upcasts it to bf16 for its layer's matmul.

Either way the weights take one byte per parameter. `MOLDBATCH_FP8=scaled|cast|off` overrides
the choice (`off`: plain bf16 weights, twice the memory). On the CPU the transformer runs in
the compute dtype unless a caller asks for `scaled` (which the CPU supports too: the tests use it).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from moldbatch.runtime.errors import RuntimeLoadError

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
ENV = "MOLDBATCH_FP8"
MODES = ("scaled", "cast", "off")
_GRID = 16  # fp8 matmuls want both matrix dimensions in multiples of 16


def has_fp8_matmul(device: torch.device) -> bool:
    """True on CUDA GPUs with fp8 tensor cores (compute capability 8.9 and up)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_mode(device: torch.device) -> str:
    """How this device runs fp8 weights: `MOLDBATCH_FP8`, else scaled or cast on CUDA, off on CPU."""
    chosen = os.environ.get(ENV, "").strip().lower()
    if chosen:
        if chosen not in MODES:
            raise RuntimeLoadError(f"{ENV}={chosen!r}: expected one of {', '.join(MODES)}")
        if chosen == "scaled" and device.type == "cuda" and not has_fp8_matmul(device):
            raise RuntimeLoadError(
                f"{ENV}=scaled needs fp8 tensor cores (compute capability 8.9+); "
                f"use {ENV}=cast on this GPU"
            )
        return chosen
    if device.type != "cuda":
        return "off"
    return "scaled" if has_fp8_matmul(device) else "cast"


class ScaledFp8Linear(nn.Linear):
    """A Linear whose weight is fp8 with a per-tensor scale and whose matmul runs in fp8.

    y = (x / sx) (W / sw)^T * sx * sw + b, where sx is the per-row scale of the input (its
    absolute maximum over 448) and sw the weight's per-tensor one; `torch._scaled_mm` does the
    multiplication and the rescale, and returns `compute_dtype`.
    """

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype):
        nn.Module.__init__(self)  # (an nn.Linear, so that PEFT can put LoRAs on it)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.compute_dtype = compute_dtype
        weight = linear.weight.detach().float()
        scale = weight.abs().amax().clamp(min=1e-12) / FP8_MAX
        self.register_buffer("weight", (weight / scale).to(FP8))
        self.register_buffer("weight_scale", scale.reshape(1, 1))
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(compute_dtype), False)

    @classmethod
    def fits(cls, module: nn.Module) -> bool:
        return (
            type(module) is nn.Linear
            and module.in_features % _GRID == 0
            and module.out_features % _GRID == 0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features).float()
        count = rows.shape[0]
        pad = -count % _GRID  # fp8 matmul kernels want every dimension in multiples of 16
        if pad:
            rows = torch.nn.functional.pad(rows, (0, 0, 0, pad))
        scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
        out = torch._scaled_mm(
            (rows / scale).to(FP8),
            self.weight.t(),  # column-major, as the fp8 matmul wants its second operand
            scale_a=scale,
            scale_b=self.weight_scale.expand(1, self.out_features).contiguous(),
            out_dtype=self.compute_dtype,
        )[:count]
        if self.bias is not None:  # added here: not every fp8 kernel takes a bias
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3"


def use_scaled_fp8(transformer: nn.Module, compute_dtype: torch.dtype) -> int:
    """Swap the linear layers of the transformer blocks for ScaledFp8Linear, in place; the
    embeddings, norms and the input and output projections stay as they are. Returns how
    many layers were swapped."""
    blocks = [
        m for name, m in transformer.named_children() if name in ("transformer_blocks", "blocks")
    ]
    swapped = 0
    for container in blocks:
        for parent in list(container.modules()):
            for name, child in list(parent.named_children()):
                if ScaledFp8Linear.fits(child):
                    setattr(parent, name, ScaledFp8Linear(child, compute_dtype))
                    swapped += 1
    return swapped


def prepare_transformer(transformer: nn.Module, device: torch.device, dtype: torch.dtype) -> str:
    """Put the loaded (compute-dtype) transformer in this device's fp8 form; returns the mode."""
    mode = fp8_mode(device)
    if mode == "scaled":
        use_scaled_fp8(transformer, dtype)
    elif mode == "cast":
        transformer.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=dtype)
    return mode
