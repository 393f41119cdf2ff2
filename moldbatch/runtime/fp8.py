"""fp8 weights for the 19B / 22B transformers, run one of two ways.

The published checkpoints store most of the transformer blocks' linear weights in fp8 (e4m3),
each with a per-tensor `weight_scale`, and the rest in bf16. As Lightricks' fp8-scaled-mm
path (ltx-core `quantization/fp8_scaled_mm.py:136-164`), exactly the layers the file stores
as F8_E4M3 with a `weight_scale` become `Fp8Linear`, holding the file's own fp8 bytes and
scale (`Fp8Linear.stored`, `loading.load_transformer`); a layer the file stores in bf16 stays
a bf16 Linear, and the gates' `to_gate_logits` (LTX-2.3) stay in bf16 whatever the file does
(ltx-core `quantization/fp8_cast.py:122-143, 290-301`). Nothing is re-quantized. Layers
multiply either

* **scaled**: in fp8 with `torch._scaled_mm`, the activations quantized per row on the fly
  (GPUs with fp8 tensor cores: compute capability 8.9+, Ada and Hopper, and a torch that runs
  the row-wise kernel there, which is probed once), the result in the compute dtype; or
* **cast**: with the weight upcast to the compute dtype (bf16) for each call (older GPUs).

Deliberate difference: activations are quantized per row on the fly, not with the file's
static `input_scale` (finer; the reference clamps to the static scale). `cast` upcasts the
file's codes times its scale, where the reference's fp8-cast re-casts bf16 weights without one.

Embeddings, norms and the input and output projections stay in the compute dtype.
`MOLDBATCH_FP8=scaled|cast|off` overrides the choice (`off`: the file's fp8 weights folded with
their scales into bf16, twice the memory). On the CPU the transformer runs in the compute dtype
unless `MOLDBATCH_FP8` says otherwise (the CPU runs both forms: the tests use them).
`use_fp8_linears` quantizes a float model's block linears itself (tests, bf16 checkpoints).
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
# Linears that stay in the compute dtype even when a file stores them in fp8 (the reference's
# fp8 subset leaves LTX-2.3's attention gates out).
KEEP_PRECISION = ("to_gate_logits",)


def keeps_precision(name: str) -> bool:
    """Whether the layer (or weight) `name` stays in the compute dtype."""
    return any(part in name.split(".") for part in KEEP_PRECISION)


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

    def __init__(
        self,
        linear: nn.Linear,
        compute_dtype: torch.dtype,
        fp8_matmul: bool = True,
        *,
        codes: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ):
        """Quantize `linear`'s weight (amax / 448 scale), or, given `codes` (e4m3) and their
        per-tensor `scale`, take those as they are (the file's own: see `stored`)."""
        nn.Module.__init__(self)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.compute_dtype = compute_dtype
        # the fp8 kernels want every dimension in multiples of 16: others upcast
        self.fp8_matmul = (
            fp8_matmul and self.in_features % _GRID == 0 and self.out_features % _GRID == 0
        )
        if codes is None:
            weight = linear.weight.detach().float()
            scale = weight.abs().amax().clamp(min=1e-12) / FP8_MAX
            codes = (weight / scale).to(FP8)
        elif codes.dtype != FP8 or tuple(codes.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"fp8 codes {codes.dtype} {tuple(codes.shape)} do not fit a "
                f"{self.in_features} -> {self.out_features} e4m3 layer"
            )
        assert scale is not None
        self.register_buffer("weight", codes.contiguous())
        self.register_buffer("weight_scale", scale.detach().float().reshape(1, 1))
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(compute_dtype), False)

    @classmethod
    def stored(
        cls,
        linear: nn.Linear,
        codes: torch.Tensor,
        scale: torch.Tensor,
        compute_dtype: torch.dtype,
        fp8_matmul: bool = True,
    ) -> Fp8Linear:
        """The layer with a checkpoint's own fp8 `codes` and per-tensor `scale` (its weight may
        be an empty placeholder: only its shape and bias are read)."""
        return cls(linear, compute_dtype, fp8_matmul, codes=codes, scale=scale)

    @classmethod
    def fits(cls, module: nn.Module, name: str = "") -> bool:
        return (
            type(module) is nn.Linear
            and not keeps_precision(name)
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
    """Quantize the linear layers of the transformer blocks into Fp8Linear, in place (for a
    float model: the shipped fp8 files keep their own codes, `swap_stored`); the embeddings,
    norms, the input and output projections and the attention gates stay as they are.
    Returns how many layers were swapped."""
    blocks = [
        m for name, m in transformer.named_children() if name in ("transformer_blocks", "blocks")
    ]
    swapped = 0
    for container in blocks:
        for parent in list(container.modules()):
            for name, child in list(parent.named_children()):
                if Fp8Linear.fits(child, name):
                    setattr(parent, name, Fp8Linear(child, compute_dtype, fp8_matmul))
                    swapped += 1
    return swapped


def swap_stored(
    transformer: nn.Module,
    stored: dict[str, tuple[torch.Tensor, torch.Tensor]],
    compute_dtype: torch.dtype,
    fp8_matmul: bool = True,
) -> int:
    """Replace each Linear named in `stored` (module name -> the file's fp8 codes and
    per-tensor scale) by an Fp8Linear holding them; returns how many were swapped."""
    for name, (codes, scale) in stored.items():
        parent_name, _, attr = name.rpartition(".")
        parent = transformer.get_submodule(parent_name) if parent_name else transformer
        linear = getattr(parent, attr)
        if not isinstance(linear, nn.Linear):
            raise RuntimeLoadError(f"{name} is stored in fp8 but is not a linear layer")
        setattr(parent, attr, Fp8Linear.stored(linear, codes, scale, compute_dtype, fp8_matmul))
    return len(stored)
