"""GPU benchmark: the real LTX-2 19B and LTX-2.3 22B transformers at full size, random weights.

    python benchmarks/gpu.py              # on a CUDA machine (about 45 GB of GPU memory)
    python benchmarks/gpu.py --dry-run    # anywhere: print the configs and shapes, build nothing
    python benchmarks/gpu.py --smoke      # anywhere: the same code on a shrunk config, on CPU

Nothing is downloaded: the architectures are diffusers' LTX2VideoTransformer3DModel with the
configs of the LTX-2.0 and LTX-2.3 diffusers conversions, written out below, and random
weights, built in bf16 straight on the GPU. For each model it reports:

* seconds per transformer forward at 1216x704x97 (latent 13x22x38 = 10868 video tokens, plus
  101 audio tokens for 97 frames at 24 fps), batch 1 (a distilled step) and batch 2 (a
  guided step: conditional + unconditional), then per 97-frame clip: 8 steps for the distilled
  model, 30 guided steps for the dev model (spatio-temporal guidance adds one more batch-1
  pass per step on top). Transformer only: no text encoder, no VAE decode.
* the same with fp8 weights in both of the runtime's forms (`moldbatch/runtime/fp8.py`):
  fp8 storage upcast to bf16 per call ("cast", for GPUs without fp8 tensor cores) and fp8
  matmuls (`torch._scaled_mm`, "scaled", what an H100 runs);
* peak GPU memory of each;
* the executor's overhead: a tiny-model film rendered through `render_plan` on the GPU, its
  wall time against the time spent inside the runtime's calls (the bare pipeline work);
* the runtime's share of a 4-shot full-size film's wall (1216x704, 97-frame clips, 548
  frames, with a chain): the tiny model renders each clip at that size on the GPU and the
  clip then takes as long as this run's measured distilled clip of the first model
  (`--clip-seconds` to give one), so the executor's real work (text phase, carries,
  decodes, write-behind commits, stitches, x264, the film's join) meets the GPU lane it
  would meet; the issue's bar is >= 98%;
* the memory tiers (`moldbatch/runtime/memory.py`, README "Which GPU"): a full-size
  random-weight Gemma 3 12B (text model, bf16) encoding one 1024-token prompt, then the
  transformer (bf16) denoising one 97-frame 1216x704 clip (8 steps distilled at batch 1, 30
  guided dev steps at batch 2), placed as each tier places them: `resident` (both on the GPU),
  `sequential` (the text encoder on the GPU, then moved off before the transformer moves
  on), `streamed` (both under diffusers' block-level group offloading, prefetched on a CUDA
  stream). Reported per tier: peak GPU memory and seconds per clip, weight moves included.
  The VAE decode is not in them (tiled in every tier; `models.DECODE_GB` estimates it).

Without CUDA it prints one line, "skipped: no CUDA GPU", and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

# The video VAE compresses 8x in time and 32x in space; the audio latents run at
# sampling_rate / hop_length / audio_scale_factor = 16000 / 160 / 4 = 25 per second.
WIDTH, HEIGHT, FRAMES, FPS = 1216, 704, 97, 24
LATENT = ((FRAMES - 1) // 8 + 1, HEIGHT // 32, WIDTH // 32)  # (13, 22, 38)
AUDIO_TOKENS = round(FRAMES / FPS * 16000 / 160 / 4)  # 101
TEXT_TOKENS = 1024  # max_sequence_length of the real models

_COMMON = {
    "in_channels": 128,
    "out_channels": 128,
    "patch_size": 1,
    "patch_size_t": 1,
    "num_attention_heads": 32,
    "attention_head_dim": 128,
    "cross_attention_dim": 4096,
    "vae_scale_factors": (8, 32, 32),
    "pos_embed_max_pos": 20,
    "base_height": 2048,
    "base_width": 2048,
    "audio_in_channels": 128,
    "audio_out_channels": 128,
    "audio_patch_size": 1,
    "audio_patch_size_t": 1,
    "audio_num_attention_heads": 32,
    "audio_attention_head_dim": 64,
    "audio_cross_attention_dim": 2048,
    "audio_scale_factor": 4,
    "audio_pos_embed_max_pos": 20,
    "audio_sampling_rate": 16000,
    "audio_hop_length": 160,
    "num_layers": 48,
    "activation_fn": "gelu-approximate",
    "qk_norm": "rms_norm_across_heads",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "caption_channels": 3840,
    "attention_bias": True,
    "attention_out_bias": True,
    "rope_theta": 10000.0,
    "rope_double_precision": True,
    "causal_offset": 1,
    "timestep_scale_multiplier": 1000,
    "cross_attn_timestep_scale_multiplier": 1000,
    "rope_type": "split",
}
# LTX-2.0 (19B): text features go through the transformer's caption projection.
LTX2_19B = {
    **_COMMON,
    "gated_attn": False,
    "cross_attn_mod": False,
    "audio_gated_attn": False,
    "audio_cross_attn_mod": False,
    "use_prompt_embeddings": True,
    "perturbed_attn": False,
}
# LTX-2.3 (22B): gated attention, timestep-modulated cross-attention; the connectors project
# text to each modality's width, so the transformer has no caption projection.
LTX23_22B = {
    **_COMMON,
    "gated_attn": True,
    "cross_attn_mod": True,
    "audio_gated_attn": True,
    "audio_cross_attn_mod": True,
    "use_prompt_embeddings": False,
    "perturbed_attn": True,
}
MODELS = {
    "ltx-2-19b": {"config": LTX2_19B, "cross_timestep": False, "steps": (8, 30)},
    "ltx-2.3-22b": {"config": LTX23_22B, "cross_timestep": True, "steps": (8, 30)},
}

TINY_FILM = """\
version: 1
name: gpu-overhead
defaults: {model: ltx-2-tiny:random, width: 128, height: 96, fps: 24, steps: 4}
shots:
  - {id: one, prompt: rain on a neon window, frames: 49}
  - id: chain
    frames: 120
    clip_frames: 49
    motion_tail: 9
    prompts: [a forest path, a lake, fireflies]
"""


def shrink(config: dict) -> dict:
    """The same architecture flags at toy width and depth, for --smoke."""
    return {
        **config,
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": 16,
        "audio_num_attention_heads": 2,
        "audio_attention_head_dim": 4,
        "audio_cross_attention_dim": 8,
        "caption_channels": 16,
        "num_layers": 1,
    }


def context_dims(config: dict) -> tuple[int, int]:
    """Widths of the video and audio text features the transformer takes."""
    if config.get("use_prompt_embeddings", True):
        return config["caption_channels"], config["caption_channels"]
    return config["cross_attention_dim"], config["audio_cross_attention_dim"]


def inputs(config: dict, latent, audio_tokens, text_tokens, batch, device, dtype, cross) -> dict:
    import torch

    f, h, w = latent
    n = f * h * w
    vdim, adim = context_dims(config)
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    sigma = torch.full((batch,), 0.5, device=device, dtype=dtype)
    t = sigma * config["timestep_scale_multiplier"]
    kw = {
        "hidden_states": rand(batch, n, config["in_channels"]),
        "audio_hidden_states": rand(batch, audio_tokens, config["audio_in_channels"]),
        "encoder_hidden_states": rand(batch, text_tokens, vdim),
        "audio_encoder_hidden_states": rand(batch, text_tokens, adim),
        "timestep": t[:, None].expand(batch, n),
        "audio_timestep": t,
        "encoder_attention_mask": torch.ones(batch, text_tokens, device=device, dtype=dtype),
        "audio_encoder_attention_mask": torch.ones(batch, text_tokens, device=device, dtype=dtype),
        "num_frames": f,
        "height": h,
        "width": w,
        "fps": float(FPS),
        "audio_num_frames": audio_tokens,
        "use_cross_timestep": cross,
        "return_dict": False,
    }
    if cross:
        kw["sigma"] = sigma
    return kw


def time_forward(model, kw: dict, repeat: int, sync) -> float:
    import torch

    with torch.inference_mode():
        model(**kw)  # warm-up: kernels, autotuning, layerwise-casting hooks
        sync()
        t = time.perf_counter()
        for _ in range(repeat):
            model(**kw)
        sync()
    return (time.perf_counter() - t) / repeat


def bench_model(name: str, spec: dict, args, device: str, smoke: bool) -> dict:
    import torch
    from diffusers import LTX2VideoTransformer3DModel

    config = shrink(spec["config"]) if smoke else spec["config"]
    latent = (2, 2, 3) if smoke else LATENT
    audio_tokens = 4 if smoke else AUDIO_TOKENS
    text_tokens = 8 if smoke else TEXT_TOKENS
    dtype = torch.float32 if smoke else torch.bfloat16
    cuda = device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def build():
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # parameters born in bf16 on the GPU: no fp32 copy
        try:
            with torch.device(device):
                return LTX2VideoTransformer3DModel(**config).eval()
        finally:
            torch.set_default_dtype(previous)

    model = build()
    out = {
        "model": name,
        "params_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
        "video_tokens": latent[0] * latent[1] * latent[2],
        "audio_tokens": audio_tokens,
        "text_tokens": text_tokens,
    }
    distilled_steps, dev_steps = spec["steps"]
    modes = ["bf16"] if args.no_fp8 else ["bf16", "fp8", "fp8_scaled"]
    for label in modes:
        if label != "bf16":
            # a fresh model per fp8 form (each changes the layers in place)
            del model
            model = build()
            try:
                from moldbatch.runtime.fp8 import use_fp8_linears

                # "fp8": fp8 storage, bf16 matmuls (the runtime's "cast");
                # "fp8_scaled": fp8 matmuls with torch._scaled_mm (the runtime's "scaled")
                out[f"{label}_layers"] = use_fp8_linears(
                    model, dtype, fp8_matmul=label == "fp8_scaled"
                )
            except Exception as exc:  # noqa: BLE001 - report and go on: bf16 numbers stand alone
                out[f"{label}_error"] = f"{type(exc).__name__}: {exc}"
                continue
            if cuda:
                torch.cuda.empty_cache()
        out[f"{label}_weights_gib"] = round(
            sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**30, 3
        )
        for batch in (1, 2):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            kw = inputs(
                config,
                latent,
                audio_tokens,
                text_tokens,
                batch,
                device,
                dtype,
                spec["cross_timestep"],
            )
            try:
                seconds = time_forward(model, kw, args.repeat, sync)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory at batch 2: keep the rest
                out[f"{label}_b{batch}_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                del kw
                continue
            out[f"{label}_b{batch}_s_per_forward"] = round(seconds, 4)
            if cuda:
                out[f"{label}_b{batch}_peak_gib"] = round(
                    torch.cuda.max_memory_allocated() / 2**30, 2
                )
            del kw
        b1 = out.get(f"{label}_b1_s_per_forward")
        b2 = out.get(f"{label}_b2_s_per_forward")
        if b1 is not None:
            out[f"{label}_distilled_s_per_step"] = b1
            out[f"{label}_distilled_s_per_clip"] = round(b1 * distilled_steps, 2)
        if b2 is not None:
            out[f"{label}_dev_s_per_step"] = b2
            out[f"{label}_dev_s_per_clip"] = round(b2 * dev_steps, 2)
            if b1 is not None:
                out[f"{label}_dev_stg_s_per_clip"] = round((b2 + b1) * dev_steps, 2)
    del model
    if cuda:
        torch.cuda.empty_cache()
    return out


class Timed:
    """Wraps a runtime and adds up the seconds spent inside its calls (synchronised)."""

    TIMED = (
        "encode_text",
        "render_clip",
        "decode_video",
        "decode_audio",
        "upscale",
        "upscale_spatial",
    )

    def __init__(self, runtime, sync):
        self.runtime, self.sync, self.seconds, self.calls = runtime, sync, 0.0, 0

    def __getattr__(self, name):
        value = getattr(self.runtime, name)
        if name not in self.TIMED or not callable(value):
            return value

        def timed(*a, **kw):
            self.sync()
            t = time.perf_counter()
            try:
                return value(*a, **kw)
            finally:
                self.sync()
                self.seconds += time.perf_counter() - t
                self.calls += 1

        return timed


def _render_film(device: str, text: str, wrap):
    """Render the film `text` on the tiny model on `device`, its runtime wrapped by
    `wrap(runtime, sync)` (a Timed): (plan, summary, the wrapped runtime, seconds to make it,
    seconds of render_plan)."""
    import torch

    from moldbatch.execute.executor import render_plan
    from moldbatch.plan.planner import plan_file
    from moldbatch.runtime import Runtime

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as d:
        spec = Path(d) / "film.yaml"
        spec.write_text(text)
        plan = plan_file(spec)
        assert plan.valid, [str(x) for x in plan.diagnostics]
        t = time.perf_counter()
        runtime = wrap(Runtime("ltx-2-tiny:random", device=device), sync)
        load = time.perf_counter() - t
        t = time.perf_counter()
        summary = render_plan(
            plan, progress=False, device=device, runtimes={plan.shots[0].model: runtime}
        )
        wall = time.perf_counter() - t
    return plan, summary, runtime, load, wall


def bench_overhead(device: str) -> dict:
    plan, summary, runtime, load, _ = _render_film(device, TINY_FILM, Timed)
    wall = summary.seconds
    return {
        "device": device,
        "clips": sum(1 for s in plan.stages if s.kind == "clip"),
        "runtime_load_s": round(load, 3),
        "render_wall_s": round(wall, 3),
        "inside_runtime_s": round(runtime.seconds, 3),
        "runtime_calls": runtime.calls,
        "executor_overhead_s": round(wall - runtime.seconds, 3),
        "executor_overhead_pct": round(100 * (wall - runtime.seconds) / wall, 1) if wall else None,
    }


# A 4-shot film at the real size (97-frame clips at 1216x704, a chain of three among them):
# the executor's share of its wall at real clip durations (bench_film)
FULL_FILM = """\
version: 1
name: gpu-film
defaults: {model: ltx-2-tiny:random, width: WIDTH, height: HEIGHT, fps: 24, steps: 8}
output: film.mp4
shots:
  - {id: open, prompt: rain on a neon window, frames: 97}
  - id: walk
    frames: 257
    clip_frames: 97
    motion_tail: 17
    prompts: [a forest path, a lake at dusk, fireflies over the water]
  - {id: bay, prompt: thunder over the bay, frames: 97}
  - {id: close, prompt: a lantern goes out, frames: 97}
"""


class Paced(Timed):
    """A tiny runtime whose clips take as long as the real model's (`clip_seconds`): each
    render_clip call runs the tiny pipeline at the film's real size (its decode, its frames'
    copy to the host), then waits out the rest of a real clip's denoising time on this thread,
    as the GPU lane waits on CUDA: the CPU lane's work meets the GPU lane it would meet."""

    def __init__(self, runtime, sync, clip_seconds: float):
        super().__init__(runtime, sync)
        self.clip_seconds = clip_seconds

    def __getattr__(self, name):
        timed = super().__getattr__(name)
        if name != "render_clip":
            return timed

        def paced(*a, **kw):
            t = time.perf_counter()
            result = timed(*a, **kw)
            rest = self.clip_seconds - (time.perf_counter() - t)
            if rest > 0:
                time.sleep(rest)
                self.seconds += rest
            return result

        return paced


def bench_film(device: str, clip_seconds: float, smoke: bool = False) -> dict:
    """The runtime's share of a 4-shot full-size film's wall (issue: >= 98%), with each clip
    taking the measured seconds of a real distilled clip (`clip_seconds`, from this run's
    transformer timing): everything else (the text phase, the carries' encodes, decodes,
    write-behind commits, stitches, x264, the film's join) is the executor's real work at
    1216x704. --smoke: the same at 128x96 on the CPU."""
    import dataclasses

    from moldbatch import models

    width, height = (128, 96) if smoke else (WIDTH, HEIGHT)
    text = FULL_FILM.replace("WIDTH", str(width)).replace("HEIGHT", str(height))
    tiny = models.MODELS[models.TINY_MODEL]
    # the tiny model's cap keeps CPU renders of untrusted specs short; on a GPU it renders a
    # real clip's 10868 tokens in well under a second
    models.MODELS[models.TINY_MODEL] = dataclasses.replace(tiny, max_latent_tokens=16384)
    try:
        plan, summary, runtime, _, wall = _render_film(
            device, text, lambda rt, sync: Paced(rt, sync, clip_seconds)
        )
    finally:
        models.MODELS[models.TINY_MODEL] = tiny
    join = next(o.seconds for o in summary.stages if o.id == "film/join")
    return {
        "film": f"{len(plan.shots)} shots, {sum(s.kind == 'clip' for s in plan.stages)} clips, "
        f"{sum(s.frames for s in plan.shots)} frames at {width}x{height}",
        "clip_s": round(clip_seconds, 3),
        "wall_s": round(wall, 3),
        "inside_runtime_s": round(runtime.seconds, 3),
        "runtime_pct_of_wall": round(100 * runtime.seconds / wall, 1),
        "cpu_lane_s": round(summary.cpu_seconds, 3),
        "join_s": round(join, 3),
    }


# Gemma 3 12B's text model (google/gemma-3-12b-it's text_config): 48 layers of 3840, 49
# hidden states (the embeddings and each layer's), what the connectors read
GEMMA3_12B = {
    "vocab_size": 262208,
    "hidden_size": 3840,
    "intermediate_size": 15360,
    "num_hidden_layers": 48,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
    "sliding_window": 1024,
    "max_position_embeddings": 131072,
    "rope_theta": 1000000.0,
}
TIERS = ("resident", "sequential", "streamed")


def shrink_gemma(config: dict) -> dict:
    return {
        **config,
        "vocab_size": 64,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 8,
        "query_pre_attn_scalar": 8,
        "sliding_window": 8,
        "max_position_embeddings": 64,
    }


def _built(make, device: str, dtype):
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # weights born in bf16 on the device: no fp32 copy
    try:
        with torch.device(device):
            return make().eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(previous)


def bench_tiers(name: str, spec: dict, args, device: str, smoke: bool) -> dict:
    """Peak GPU memory and seconds per clip of one model in each memory tier (module doc)."""
    import torch
    from diffusers import LTX2VideoTransformer3DModel
    from diffusers.hooks import apply_group_offloading
    from transformers import Gemma3TextConfig, Gemma3TextModel

    cuda = device == "cuda"
    dtype = torch.float32 if smoke else torch.bfloat16
    config = shrink(spec["config"]) if smoke else spec["config"]
    gemma = shrink_gemma(GEMMA3_12B) if smoke else GEMMA3_12B
    latent = (2, 2, 3) if smoke else LATENT
    audio_tokens = 4 if smoke else AUDIO_TOKENS
    text_tokens = 8 if smoke else TEXT_TOKENS
    tiers = [t for t in (args.tiers or ",".join(TIERS)).split(",") if t]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    encoder = _built(lambda: Gemma3TextModel(Gemma3TextConfig(**gemma)), device, dtype).cpu()
    transformer = _built(lambda: LTX2VideoTransformer3DModel(**config), device, dtype).cpu()
    if cuda:
        torch.cuda.empty_cache()
    ids = torch.randint(0, gemma["vocab_size"], (1, text_tokens), generator=None)
    out = {
        "model": name,
        "tiers": {},
        "text_encoder_gib": round(sum(p.numel() * 2 for p in encoder.parameters()) / 2**30, 2),
        "transformer_gib": round(sum(p.numel() * 2 for p in transformer.parameters()) / 2**30, 2),
        "dtype": str(dtype).removeprefix("torch."),
        "covers": "text encoder + transformer (no VAE decode)",
    }
    distilled_steps, dev_steps = spec["steps"]
    for tier in tiers:
        row: dict = {}
        for label, steps, batch in (("distilled", distilled_steps, 1), ("dev", dev_steps, 2)):
            if smoke:
                steps = 1
            try:
                seconds, peak = _one_clip(
                    tier, encoder, transformer, ids, steps, batch, device, sync, apply_group_offloading,
                    lambda b: inputs(
                        config, latent, audio_tokens, text_tokens, b, device, dtype,
                        spec["cross_timestep"],
                    ),
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: keep the other tiers
                row[f"{label}_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                if cuda:
                    torch.cuda.empty_cache()
                continue
            row[f"{label}_s_per_clip"] = round(seconds, 4)  # a shrunk smoke run takes ms
            if peak is not None:
                row[f"{label}_peak_gib"] = round(peak / 2**30, 2)
        out["tiers"][tier] = row
    return out


def _one_clip(tier, encoder, transformer, ids, steps, batch, device, sync, offload, make_inputs):
    """One clip in `tier`: the prompt's encode, then `steps` transformer passes at `batch`;
    (seconds, peak GPU bytes or None). Leaves both models on the host, unhooked."""
    import torch

    cuda = device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    streamed = tier == "streamed"
    sync()
    t = time.perf_counter()
    if streamed:
        for module in (encoder, transformer):
            offload(
                module,
                onload_device=torch.device(device),
                offload_device=torch.device("cpu"),
                offload_type="block_level",
                num_blocks_per_group=1,
                use_stream=cuda,
                low_cpu_mem_usage=True,  # as the runtime's (no pinned copy of every weight)
            )
    else:
        encoder.to(device)
        if tier == "resident":
            transformer.to(device)
    with torch.inference_mode():
        hidden = encoder(
            input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
            output_hidden_states=True,
        ).hidden_states  # fmt: skip
        packed = torch.stack(hidden, dim=-1).flatten(2, 3)
        del hidden, packed
        if tier == "sequential":
            encoder.to("cpu")
            if cuda:
                torch.cuda.empty_cache()
            transformer.to(device)
        kw = make_inputs(batch)
        for _ in range(steps):
            transformer(**kw)
        del kw
    sync()
    seconds = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() if cuda else None
    if streamed:
        from diffusers.hooks import HookRegistry

        for module in (encoder, transformer):
            for sub in module.modules():
                registry = getattr(sub, "_diffusers_hook", None)
                if isinstance(registry, HookRegistry):
                    for hook in list(registry.hooks):
                        registry.remove_hook(hook, recurse=False)
    encoder.to("cpu")
    transformer.to("cpu")
    return seconds, peak


def dry_run(names: list[str]) -> None:
    f, h, w = LATENT
    print(
        f"clip: {WIDTH}x{HEIGHT}x{FRAMES} at {FPS} fps -> latent {f}x{h}x{w} = {f * h * w} video "
        f"tokens, {AUDIO_TOKENS} audio tokens, {TEXT_TOKENS} text tokens"
    )
    for name in names:
        spec = MODELS[name]
        vdim, adim = context_dims(spec["config"])
        print(
            f"{name}: LTX2VideoTransformer3DModel, text features {vdim}/{adim} (video/audio), "
            f"use_cross_timestep={spec['cross_timestep']}, steps per clip "
            f"{spec['steps'][0]} distilled / {spec['steps'][1]} dev"
        )
        print(json.dumps(spec["config"], sort_keys=True))
    layers = GEMMA3_12B["num_hidden_layers"]
    print(
        f"tiers: {', '.join(TIERS)}; text encoder Gemma 3 12B text model ({layers} layers x "
        f"{GEMMA3_12B['hidden_size']}), one {TEXT_TOKENS}-token prompt per clip; a stored "
        f"prompt is {layers + 1} x {GEMMA3_12B['hidden_size']} bf16 values a token "
        f"({(layers + 1) * GEMMA3_12B['hidden_size'] * 2 / 1e6:.3f} MB)"
    )


def _clip_seconds(rows: list[dict]) -> float | None:
    for row in rows:
        for label in ("fp8_scaled", "fp8", "bf16"):
            if f"{label}_distilled_s_per_clip" in row:
                return row[f"{label}_distilled_s_per_clip"]
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the configs; build nothing")
    ap.add_argument(
        "--smoke", action="store_true", help="run the code path on shrunk configs on CPU"
    )
    ap.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS)
    )
    ap.add_argument("--repeat", type=int, default=3, help="timed forwards per measurement")
    ap.add_argument("--no-fp8", action="store_true", help="skip the fp8-storage runs")
    ap.add_argument("--no-overhead", action="store_true", help="skip the executor-overhead run")
    ap.add_argument("--no-film", action="store_true", help="skip the full-size film run")
    ap.add_argument(
        "--clip-seconds",
        type=float,
        help="a real clip's seconds for the film run (default: this run's distilled clip)",
    )
    ap.add_argument("--no-tiers", action="store_true", help="skip the memory-tier runs")
    ap.add_argument("--tiers", help="comma-separated tiers to run (default: all)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    if args.dry_run:
        dry_run(names)
        return 0
    try:
        import torch
    except ImportError:
        print("skipped: no CUDA GPU (torch is not installed)")
        return 0
    if args.smoke:
        device = "cpu"
    elif not torch.cuda.is_available():
        print("skipped: no CUDA GPU")
        return 0
    else:
        device = "cuda"
        torch.backends.cuda.matmul.allow_tf32 = True
    results: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    results["models"] = []
    for name in names:
        r = bench_model(name, MODELS[name], args, device, args.smoke)
        results["models"].append(r)
        print(json.dumps(r))
        sys.stdout.flush()
    if not args.no_tiers:
        results["tiers"] = []
        for name in names:
            r = bench_tiers(name, MODELS[name], args, device, args.smoke)
            results["tiers"].append(r)
            print(json.dumps(r))
            sys.stdout.flush()
    if not args.no_overhead:
        results["overhead"] = bench_overhead(device)
        print(json.dumps(results["overhead"]))
    if not args.no_film:
        # a real distilled clip's seconds: the first model's fp8 (else bf16) transformer steps
        clip = args.clip_seconds or _clip_seconds(results["models"]) or 10.0
        results["film"] = bench_film(device, clip, smoke=args.smoke)
        print(json.dumps(results["film"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
