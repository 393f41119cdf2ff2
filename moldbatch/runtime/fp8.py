"""fp8 weights for the 19B / 22B transformers, run one of two ways.

The published checkpoints store the transformer blocks' linear weights in fp8 (e4m3), each
with a per-tensor scale. On a GPU those layers keep their weights in fp8 with a per-tensor
scale (`Fp8Linear`), one byte per parameter, and multiply either

* **scaled**: in fp8 with `torch._scaled_mm`, the activations quantized per row on the fly
  (GPUs with fp8 tensor cores: compute capability 8.9+, Ada and Hopper, and a torch that runs
  the row-wise kernel there, which is probed once), the result in the compute dtype; or
* **cast**: with the weight upcast to the compute dtype (bf16) for each call (older GPUs).

Embeddings, norms and the input and output projections stay in the compute dtype.
`MOLDBATCH_FP8=scaled|cast|off` overrides the choice (`off`: plain bf16 weights, twice the
memory). On the CPU the transformer runs in the compute dtype unless `MOLDBATCH_FP8` says
otherwise (the CPU runs both forms: the tests use them).
"""

from __future__ import annotations

import functools
import logging
import os

import torch
from torch import nn

from moldbatch.errors import RuntimeLoadError

log = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
ENV = "MOLDBATCH_FP8"
MODES = ("scaled", "cast", "off")
_GRID = 16  # fp8 matmuls want both matrix dimensions in multiples of 16


def has_fp8_matmul(device: torch.device) -> bool:
    """True where fp8 matmuls run: fp8 tensor cores (compute capability 8.9 and up) and a torch
    whose row-wise scaled kernel works on them (tried once on a 16 x 16 product)."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        return False
    return _scaled_mm_works(str(device))


@functools.cache
def _scaled_mm_works(device: str) -> bool:
    try:
        a = torch.ones(_GRID, _GRID, device=device).to(FP8)
        scale = torch.ones(_GRID, 1, device=device)
        torch._scaled_mm(a, a.t(), scale_a=scale, scale_b=scale.t(), out_dtype=torch.bfloat16)
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means: use the cast form
        log.warning(
            "fp8 matmul unavailable on %s (%s); using fp8 storage with bf16 matmuls", device, exc
        )
        return False


def fp8_mode(device: torch.device) -> str:
    """How this device runs fp8 weights: `MOLDBATCH_FP8`, else scaled or cast on CUDA, off on CPU."""
    chosen = os.environ.get(ENV, "").strip().lower()
    if chosen:
        if chosen not in MODES:
            raise RuntimeLoadError(f"{ENV}={chosen!r}: expected one of {', '.join(MODES)}")
        if chosen == "scaled" and device.type == "cuda" and not has_fp8_matmul(device):
            raise RuntimeLoadError(
                f"{ENV}=scaled needs fp8 tensor cores (compute capability 8.9+) and a torch "
                f"that runs fp8 matmuls on them; use {ENV}=cast on this GPU"
            )
        return chosen
    if device.type != "cuda":
        return "off"
    return "scaled" if has_fp8_matmul(device) else "cast"


class Fp8Linear(nn.Linear):
    """A Linear whose weight is fp8 with a per-tensor scale: y = x (W8 * sw)^T + b.

    With `fp8_matmul`, the input is quantized per row (its absolute maximum over 448) and
    `torch._scaled_mm` multiplies in fp8 and rescales; otherwise the weight is upcast to
    `compute_dtype` for the call. An nn.Linear, so that PEFT can put LoRAs on it.
    """

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype, fp8_matmul: bool = True):
        nn.Module.__init__(self)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.compute_dtype = compute_dtype
        self.fp8_matmul = fp8_matmul
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
        if not self.fp8_matmul:
            weight = self.weight.to(self.compute_dtype) * self.weight_scale.to(self.compute_dtype)
            out = nn.functional.linear(x.to(self.compute_dtype), weight, self.bias)
            return out.to(x.dtype)
        shape = x.shape
        rows = x.reshape(-1, self.in_features).float()
        count = rows.shape[0]
        pad = -count % _GRID  # fp8 matmul kernels want every dimension in multiples of 16
        if pad:
            rows = nn.functional.pad(rows, (0, 0, 0, pad))
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
        how = "fp8 matmul" if self.fp8_matmul else "upcast matmul"
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3, {how}"


def use_fp8_linears(
    transformer: nn.Module, compute_dtype: torch.dtype, fp8_matmul: bool = True
) -> int:
    """Swap the linear layers of the transformer blocks for Fp8Linear, in place; the
    embeddings, norms and the input and output projections stay as they are. Returns how
    many layers were swapped."""
    blocks = [
        m for name, m in transformer.named_children() if name in ("transformer_blocks", "blocks")
    ]
    swapped = 0
    for container in blocks:
        for parent in list(container.modules()):
            for name, child in list(parent.named_children()):
                if Fp8Linear.fits(child):
                    setattr(parent, name, Fp8Linear(child, compute_dtype, fp8_matmul))
                    swapped += 1
    return swapped


def prepare_transformer(transformer: nn.Module, device: torch.device, dtype: torch.dtype) -> str:
    """Put the loaded (compute-dtype) transformer in this device's fp8 form; returns the mode."""
    mode = fp8_mode(device)
    if mode != "off":
        use_fp8_linears(transformer, dtype, fp8_matmul=mode == "scaled")
    return mode
