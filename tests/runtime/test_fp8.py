"""fp8 transformer weights: scaled fp8 matmuls (`torch._scaled_mm`, which the CPU runs too)
on the real tiny LTX-2 transformer, and how a device picks its fp8 mode."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from moldbatch.runtime import Lora, Runtime, RuntimeLoadError
from moldbatch.runtime.fp8 import ENV, FP8, Fp8Linear, fp8_mode, use_fp8_linears
from moldbatch.runtime.tiny import random_lora

from conftest import tiny_clip

MODEL = "ltx-2-tiny:random"
REQ = tiny_clip()


@pytest.mark.parametrize("fp8_matmul", [True, False])
@pytest.mark.parametrize("size", [1.0, 0.005])  # small weights: the scale keeps them normal
def test_fp8_linear_matches_the_float_layer_within_fp8_precision(fp8_matmul, size) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    with torch.no_grad():
        linear.weight.mul_(size)
    fp8 = Fp8Linear(linear, torch.float32, fp8_matmul=fp8_matmul)
    assert fp8.weight.dtype == FP8 and fp8.weight.element_size() == 1
    x = torch.randn(2, 5, 64) * 3
    want, got = linear(x), fp8(x)
    assert got.shape == want.shape
    error = (got - want).norm() / want.norm()
    assert 0 < error < 0.05  # e4m3 keeps 3 mantissa bits: a few percent, never exact
    assert Fp8Linear.fits(linear) and not Fp8Linear.fits(torch.nn.Linear(60, 48))


@pytest.fixture(scope="module")
def plain() -> Runtime:
    return Runtime(MODEL)


@pytest.fixture(scope="module")
def scaled() -> Runtime:
    rt = Runtime(MODEL)
    rt.swapped = use_fp8_linears(rt.pipe.transformer, torch.float32)
    return rt


def test_tiny_transformer_renders_with_fp8_matmuls(plain: Runtime, scaled: Runtime) -> None:
    transformer = scaled.pipe.transformer
    assert scaled.swapped > 0
    swapped = [m for m in transformer.modules() if isinstance(m, Fp8Linear)]
    assert len(swapped) == scaled.swapped
    # only the blocks: the input and output projections keep their precision
    assert type(transformer.proj_in) is torch.nn.Linear
    assert type(transformer.proj_out) is torch.nn.Linear
    a, b = plain.render_clip(REQ), scaled.render_clip(REQ)
    assert b.frames.shape == a.frames.shape
    va, vb = a.video_latents.flatten(), b.video_latents.flatten()
    assert not torch.equal(va, vb)
    assert torch.corrcoef(torch.stack([va, vb]))[0, 1] > 0.99
    assert torch.equal(b.video_latents, scaled.render_clip(REQ).video_latents)  # deterministic


def test_loras_apply_on_top_of_fp8_layers(plain: Runtime, scaled: Runtime, tmp_path) -> None:
    pytest.importorskip("peft")
    path = tmp_path / "style.safetensors"
    save_file(random_lora(plain.pipe.transformer, "attn1.to_q", seed=3), path)
    styled = dataclasses.replace(REQ, loras=[Lora(str(path))])
    base, with_lora = scaled.render_clip(REQ), scaled.render_clip(styled)
    assert not torch.equal(base.video_latents, with_lora.video_latents)
    reference = plain.render_clip(styled).video_latents.flatten()
    got = with_lora.video_latents.flatten()
    assert torch.corrcoef(torch.stack([reference, got]))[0, 1] > 0.99
    assert torch.equal(scaled.render_clip(REQ).video_latents, base.video_latents)  # off again


def test_fp8_mode_per_device_and_override(monkeypatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.delenv(ENV, raising=False)
    assert fp8_mode(cpu) == "off"
    monkeypatch.setenv(ENV, "Scaled")
    assert fp8_mode(cpu) == "scaled"
    monkeypatch.setenv(ENV, "cast")
    assert fp8_mode(cpu) == "cast"
    monkeypatch.setenv(ENV, "fast")
    with pytest.raises(RuntimeLoadError, match="expected one of scaled, cast, off"):
        fp8_mode(cpu)


def _prequantized(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original-layout checkpoint as Lightricks ships the fp8 ones: the blocks' linear
    weights in fp8 with their scales, everything else bf16."""
    from conftest import as_shipped_fp8, original_key

    out = {}
    for key, value in state.items():
        name = original_key(key)
        if key.startswith("transformer_blocks.") and key.endswith(".weight") and value.ndim == 2:
            out |= as_shipped_fp8(name, value)
        else:
            out[name] = value.to(torch.bfloat16).contiguous()
    return out


def test_a_prequantized_fp8_checkpoint_loads_with_its_scales_and_runs_with_fp8_matmuls(
    plain: Runtime, tmp_path
) -> None:
    from moldbatch.runtime import tiny
    from moldbatch.runtime.loading import load_transformer

    transformer = tiny.build_components().transformer
    state = transformer.state_dict()
    checkpoint = _prequantized(state)
    assert sum(k.endswith(".weight_scale") for k in checkpoint) > 20
    save_file(checkpoint, tmp_path / "tiny-fp8.safetensors")
    transformer.save_config(tmp_path / "components" / "transformer")

    loaded = load_transformer(
        tmp_path / "tiny-fp8.safetensors", tmp_path / "components", torch.float32
    )
    # every weight is back at its scale (read raw, the fp8 ones would be ~448 / amax too large)
    for key, value in loaded.state_dict().items():
        want = state[key]
        assert (value - want).norm() <= 0.06 * want.norm() + 1e-6, key

    loaded = load_transformer(
        tmp_path / "tiny-fp8.safetensors", tmp_path / "components", torch.float32, fp8="scaled"
    )
    assert any(isinstance(m, Fp8Linear) and m.fp8_matmul for m in loaded.modules())
    reference = plain.render_clip(REQ).video_latents.flatten()
    own = plain.pipe.transformer
    plain.pipe.transformer = loaded.eval().requires_grad_(False)
    try:
        got = plain.render_clip(REQ).video_latents.flatten()
    finally:
        plain.pipe.transformer = own
    # fp8 weights and matmuls, bf16 norms: close to the float32 model, not equal
    assert torch.corrcoef(torch.stack([reference, got]))[0, 1] > 0.98


@pytest.mark.parametrize("mode", ["scaled", "cast"])
def test_exactly_the_layers_the_file_stores_in_fp8_use_its_own_bytes_and_scales(
    tmp_path, mode
) -> None:
    """ltx-core quantization/fp8_scaled_mm.py:136-164: only layers stored as F8_E4M3 with a
    `weight_scale` become fp8, with the file's codes and scale (nothing re-quantized);
    quantization/fp8_cast.py:122-143, 290-301: the attention gates stay in bf16. The file
    here stores the feed-forward outputs in bf16 and (unlike Lightricks') the gates in fp8."""
    from diffusers import LTX2VideoTransformer3DModel
    from safetensors import safe_open

    from moldbatch.runtime import tiny
    from moldbatch.runtime.loading import load_transformer

    from conftest import as_shipped_fp8, original_key

    config = {k: v for k, v in tiny.build_components().transformer.config.items() if k[0] != "_"}
    config.update(gated_attn=True, audio_gated_attn=True)  # LTX-2.3's attention gates
    torch.manual_seed(1)
    model = LTX2VideoTransformer3DModel.from_config(config)
    state = model.state_dict()
    stored_fp8, stored_bf16 = set(), set()
    checkpoint = {}
    for key, value in state.items():
        name = original_key(key)
        linear = (
            key.startswith("transformer_blocks.") and key.endswith(".weight") and value.ndim == 2
        )
        if linear and ".ff.net.2." not in key:
            checkpoint |= as_shipped_fp8(name, value)
            stored_fp8.add(key.removesuffix(".weight"))
        else:
            checkpoint[name] = value.to(torch.bfloat16).contiguous()
            if linear:
                stored_bf16.add(key.removesuffix(".weight"))
    gates = {n for n in stored_fp8 if n.endswith("to_gate_logits")}
    assert gates and stored_bf16
    save_file(checkpoint, tmp_path / "mixed.safetensors")
    model.save_config(tmp_path / "components" / "transformer")

    loaded = load_transformer(
        tmp_path / "mixed.safetensors", tmp_path / "components", torch.float32, fp8=mode
    )
    modules = dict(loaded.named_modules())
    fp8 = {n for n, m in modules.items() if isinstance(m, Fp8Linear)}
    assert fp8 == stored_fp8 - gates
    with safe_open(str(tmp_path / "mixed.safetensors"), framework="pt") as f:
        for name in fp8:
            original = original_key(name + ".weight")
            codes = f.get_tensor(original)
            scale = f.get_tensor(original.removesuffix(".weight") + ".weight_scale")
            layer = modules[name]
            assert layer.weight.dtype == FP8
            assert torch.equal(layer.weight.view(torch.uint8), codes.view(torch.uint8)), name
            assert torch.equal(layer.weight_scale.reshape(()), scale.float()), name
            assert layer.fp8_matmul is (mode == "scaled")
        for name in gates:  # folded into the compute dtype, never fp8
            original = original_key(name + ".weight")
            layer = modules[name]
            assert type(layer) is torch.nn.Linear and layer.weight.dtype == torch.float32
            scale = f.get_tensor(original.removesuffix(".weight") + ".weight_scale")
            torch.testing.assert_close(
                layer.weight, f.get_tensor(original).float() * scale.float(), rtol=0, atol=0
            )
    for name in stored_bf16:  # as stored: bf16 values, a plain Linear
        layer = modules[name]
        assert type(layer) is torch.nn.Linear
        assert torch.equal(layer.weight, state[name + ".weight"].bfloat16().float())


def test_ltx_2_3_names_load_and_a_wrong_checkpoint_is_refused(tmp_path) -> None:
    from diffusers import LTX2VideoTransformer3DModel

    from moldbatch.runtime import tiny
    from moldbatch.runtime.loading import load_transformer

    config = {k: v for k, v in tiny.build_components().transformer.config.items() if k[0] != "_"}
    config.update(cross_attn_mod=True, audio_cross_attn_mod=True)  # as LTX-2.3
    torch.manual_seed(0)
    model = LTX2VideoTransformer3DModel.from_config(config)
    state = model.state_dict()
    assert any(k.startswith("prompt_adaln.") for k in state)
    checkpoint = _prequantized(state)
    assert any(".prompt_adaln_single." in k for k in checkpoint)
    save_file(checkpoint, tmp_path / "tiny-23.safetensors")
    model.save_config(tmp_path / "components" / "transformer")
    loaded = load_transformer(
        tmp_path / "tiny-23.safetensors", tmp_path / "components", torch.float32
    )
    for key in ("prompt_adaln.linear.weight", "audio_prompt_adaln.linear.weight"):
        if key in state:
            torch.testing.assert_close(loaded.state_dict()[key], state[key].bfloat16().float())

    del checkpoint[next(k for k in checkpoint if k.endswith("attn1.to_q.bias"))]
    save_file(checkpoint, tmp_path / "broken.safetensors")
    with pytest.raises(
        RuntimeLoadError, match=r"1 weights missing \(e.g. transformer_blocks.*to_q.bias"
    ):
        load_transformer(tmp_path / "broken.safetensors", tmp_path / "components", torch.float32)


def test_loras_apply_on_fp8_storage_with_upcast_layers(plain: Runtime, tmp_path) -> None:
    """The "cast" form (GPUs without fp8 matmuls): weights stored in fp8 with their scale,
    upcast per call. A LoRA loaded afterwards computes in the compute dtype, not in fp8."""
    pytest.importorskip("peft")
    rt = Runtime(MODEL)
    assert use_fp8_linears(rt.pipe.transformer, torch.float32, fp8_matmul=False) > 0
    path = tmp_path / "style.safetensors"
    save_file(random_lora(plain.pipe.transformer, "attn1.to_q", seed=3), path)
    base = rt.render_clip(REQ)
    styled = rt.render_clip(dataclasses.replace(REQ, loras=[Lora(str(path))]))
    assert not torch.equal(base.video_latents, styled.video_latents)
    lora = [p for n, p in rt.pipe.transformer.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)
