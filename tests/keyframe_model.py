"""A tiny LTX-2 that follows keyframes, so a test can see one in the decoded picture.

`ltx-2-tiny:random` cannot show a keyframe: its random transformer attends to the keyframe's
tokens but never learned to copy them, and its random VAE does not keep colours. This model
keeps the tiny text and audio stack and swaps two components, both real diffusers classes:

- `colour_vae`: an AutoencoderKLLTX2Video with no resnets and hand-set weights, so that a
  latent is exactly the mean colour of its cell (32x32 pixels, and 8 frames, or frame 0
  alone, as the real VAE groups them) and decodes back to that colour.
- `train_follower`: the tiny transformer, trained for about a minute on the CPU to copy a
  keyframe's tokens into the latent frame that holds the keyframe's pixel frame, and to
  denoise plain Gaussian latents everywhere else.

The training data places keyframes by the reference's rule (ltx-core's keyframe conditioning:
a keyframe at pixel frame k spans [k, k + 1) in time), written out here and not read from
moldbatch's runtime. A runtime that put a keyframe anywhere else shows it in the wrong frame,
or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch

from moldbatch import fsio
from moldbatch.runtime import Runtime, tiny
from moldbatch.runtime.carry import audio_latent_length

MODEL = "ltx-2-tiny:random"
# The geometry the follower is trained on (the keyframe tests' clip): 33 frames at 64x64.
FRAMES, FPS, SIZE = 33, 24.0, 64
FRAME_GRID, CELL = 8, 32  # pixel frames and pixels per latent cell
LATENT_FRAMES = (FRAMES - 1) // FRAME_GRID + 1
CELLS = (SIZE // CELL) ** 2  # tokens per latent frame
AUDIO_TOKENS = audio_latent_length(FRAMES, FPS, 25.0)  # 25 audio latents per second
TEXT_TOKENS = tiny.build_tokenizer().model_max_length  # the connectors' sequence length
TRAIN_SEED, TRAIN_STEPS = 0, 1500


def colour_vae(constant: float = 1000.0):
    """An LTX-2 video VAE whose latent channels 0-2 hold each cell's mean RGB (in [-1, 1]).

    The encoder averages (conv_in takes each colour's 16 patch pixels, the downsamplers' own
    residual path mean-pools when their convs are zero); the decoder copies each latent to
    every pixel of its cell (the upsamplers' convs replicate a channel into each sub-position).
    Both end in a per-pixel RMS norm and a SiLU: channel 3 carries a large `constant` so the
    norm is a fixed scale and the colours stay in SiLU's linear part (round trip within 0.3%).
    """
    from diffusers import AutoencoderKLLTX2Video

    vae = AutoencoderKLLTX2Video(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8),
        layers_per_block=(0, 0, 0, 0, 0),
        decoder_layers_per_block=(0, 0, 0, 0),
        upsample_residual=(False, False, False),
        upsample_factor=(1, 1, 1),
        spatial_compression_ratio=CELL,
        temporal_compression_ratio=FRAME_GRID,
    )
    # After the norm a colour c is c * sqrt(8) / constant; SiLU(x) ~ x / 2 there.
    gain = 2 * constant / math.sqrt(8)
    now, centre = 2, 1  # causal convs: the last time tap is the current frame
    patch = 16  # pixels per colour in a 4x4 patch, colour-major
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        enc, dec = vae.encoder, vae.decoder
        for c in range(3):
            enc.conv_in.conv.weight[c, c * patch : (c + 1) * patch, now, centre, centre] = 1 / patch
            enc.conv_out.conv.weight[c, c, now, centre, centre] = gain
            dec.conv_in.conv.weight[c, c, now, centre, centre] = 1.0
            dec.conv_out.conv.weight[c * patch : (c + 1) * patch, c, now, centre, centre] = gain
        enc.conv_in.conv.bias[3] = constant
        dec.conv_in.conv.bias[3] = constant
        for block in dec.up_blocks:
            weight = block.upsamplers[0].conv.conv.weight  # [8 channels x 8 sub-positions, 8]
            subs = weight.shape[0] // weight.shape[1]
            for c in range(weight.shape[1]):
                weight[c * subs : (c + 1) * subs, c, now, centre, centre] = 1.0
    return vae.eval().requires_grad_(False)


def latent_frame_of(frame: torch.Tensor) -> torch.Tensor:
    """The latent frame holding pixel `frame`: 0 alone, then groups of 8 (1..8 -> 1)."""
    return (frame + FRAME_GRID - 1) // FRAME_GRID


def _keyframe_coords(transformer, frames: list[torch.Tensor]) -> torch.Tensor:
    """RoPE bounds of one image's tokens per keyframe: the cells' pixel bounds, and in time
    [k, k + 1) / fps, ltx-core's placement of a one-frame keyframe at pixel frame k."""
    batch = frames[0].shape[0]
    grid = transformer.rope.prepare_video_coords(
        batch, 1, SIZE // CELL, SIZE // CELL, torch.device("cpu"), fps=FPS
    )
    out = []
    for k in frames:
        coords = grid.clone()
        coords[:, 0, :, 0] = k[:, None].float() / FPS
        coords[:, 0, :, 1] = (k[:, None].float() + 1) / FPS
        out.append(coords)
    return torch.cat(out, dim=2)


def _batch(transformer, size: int, keyframes: int, gen: torch.Generator):
    """Transformer inputs for `size` clips at random noise levels with `keyframes` keyframes
    each: (inputs, noise, clean latents, loss weight per video token). The keyframes' frames
    weigh four times: everywhere else the target is unpredictable noise."""
    video_tokens = LATENT_FRAMES * CELLS
    rows = torch.arange(size)
    x0 = torch.randn(size, LATENT_FRAMES, CELLS, 8, generator=gen)
    weight = torch.ones(size, LATENT_FRAMES, CELLS, 1)
    # distinct latent frames per clip, each keyframe at a random pixel frame of its group
    groups = torch.argsort(torch.rand(size, LATENT_FRAMES, generator=gen), dim=1)[:, :keyframes]
    frames, guides = [], []
    for j in groups.unbind(1):
        first = torch.where(j == 0, 0, FRAME_GRID * j - FRAME_GRID + 1)
        span = torch.where(j == 0, 1, FRAME_GRID)
        k = first + (torch.rand(size, generator=gen) * span).long()
        # keyframe tokens: Gaussian, or (half of them) what the colour VAE makes of an image
        tokens = torch.randn(size, CELLS, 8, generator=gen)
        colour = torch.rand(size, generator=gen) < 0.5
        tokens[colour] = 0.0
        tokens[colour, :, :3] = torch.rand(int(colour.sum()), CELLS, 3, generator=gen) * 2 - 1
        x0[rows, latent_frame_of(k)] = tokens
        weight[rows, latent_frame_of(k)] = 4.0
        frames.append(k)
        guides.append(tokens)
    x0 = x0.reshape(size, video_tokens, 8)
    sigma = torch.rand(size, generator=gen) * 0.98 + 0.02
    noise = torch.randn(x0.shape, generator=gen)
    noisy = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
    guide = torch.cat(guides, dim=1)
    t = sigma * 1000  # the pipeline's timesteps: sigma on a 1000 scale, 0 for clean tokens
    audio_t = torch.rand(size, generator=gen) * 1000
    audio_tokens, text_tokens = AUDIO_TOKENS, TEXT_TOKENS
    text_dim = transformer.config.caption_channels
    side = SIZE // CELL
    cpu = torch.device("cpu")
    inputs = dict(
        hidden_states=torch.cat([noisy, guide], dim=1),
        audio_hidden_states=torch.randn(
            size, audio_tokens, transformer.config.audio_in_channels, generator=gen
        ),
        encoder_hidden_states=torch.randn(size, text_tokens, text_dim, generator=gen),
        audio_encoder_hidden_states=torch.randn(size, text_tokens, text_dim, generator=gen),
        timestep=torch.cat(
            [t[:, None].expand(size, video_tokens), t.new_zeros(size, guide.shape[1])], 1
        ),
        audio_timestep=audio_t,
        sigma=t,
        audio_sigma=audio_t,
        encoder_attention_mask=torch.ones(size, text_tokens),
        audio_encoder_attention_mask=torch.ones(size, text_tokens),
        num_frames=LATENT_FRAMES,
        height=side,
        width=side,
        fps=FPS,
        audio_num_frames=audio_tokens,
        video_coords=torch.cat(
            [
                transformer.rope.prepare_video_coords(
                    size, LATENT_FRAMES, side, side, cpu, fps=FPS
                ),
                _keyframe_coords(transformer, frames),
            ],
            dim=2,
        ),
        audio_coords=transformer.audio_rope.prepare_audio_coords(size, audio_tokens, cpu),
        use_cross_timestep=True,  # as the runtime calls the tiny model
        return_dict=False,
    )
    return inputs, noise, x0, weight.reshape(size, video_tokens, 1)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Train on one thread: results depend less on the machine, and nothing slows down when
    another process shares the cores (two processes of two spinning threads on two cores ran
    ~20x slower); one thread costs ~15% here."""
    kept = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(kept)


def train_follower(transformer, steps: int = TRAIN_STEPS, seed: int = TRAIN_SEED) -> float:
    """Train `transformer` in place to follow keyframes (flow matching: the velocity is
    noise - clean); returns its `copy_error` afterwards."""
    gen = torch.Generator().manual_seed(seed)
    transformer.train().requires_grad_(True)
    opt = torch.optim.AdamW(transformer.parameters(), lr=5e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-3, total_steps=steps, pct_start=0.1)
    video_tokens = LATENT_FRAMES * CELLS
    with _one_thread():
        for step in range(steps):
            inputs, noise, x0, weight = _batch(transformer, 32, 1 + step % 2, gen)
            velocity = transformer(**inputs)[0][:, :video_tokens]
            loss = (weight * (velocity - (noise - x0)) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
            opt.step()
            schedule.step()
    transformer.eval().requires_grad_(False)
    return copy_error(transformer)


@torch.no_grad()
def copy_error(transformer, clips: int = 64) -> float:
    """Mean squared error of the transformer's clean estimate of a keyframe's latent frame
    from pure noise (sigma 1), where only the keyframe tells what is there. Untrained: ~2."""
    inputs, noise, x0, weight = _batch(transformer, clips, 1, torch.Generator().manual_seed(10_000))
    video_tokens = LATENT_FRAMES * CELLS
    inputs["hidden_states"][:, :video_tokens] = noise
    inputs["timestep"][:, :video_tokens] = 1000.0
    inputs["sigma"][:] = 1000.0
    estimate = noise - transformer(**inputs)[0][:, :video_tokens]
    keyed = weight[..., 0] > 1
    return float(((estimate - x0) ** 2)[keyed].mean())


def _cache_key(transformer) -> str:
    """What the trained weights depend on: this file, the tiny transformer's config and
    initial weights' seed, and the libraries' versions."""
    import diffusers

    source = inspect.getsource(inspect.getmodule(_cache_key))
    # (diffusers' private entries, such as `_use_default_values`, vary in order per process)
    public = {k: v for k, v in transformer.config.items() if not k.startswith("_")}
    config = json.dumps(public, sort_keys=True, default=str)
    versions = [torch.__version__, diffusers.__version__, str(tiny.TINY_SEED)]
    return hashlib.sha256("\n".join([source, config, *versions]).encode()).hexdigest()[:16]


def _cached(transformer, path: Path | None) -> dict[str, torch.Tensor] | None:
    """The weights an earlier run left at `path`, if they fit `transformer` (else None: a
    damaged or stale file is trained again)."""
    from safetensors.torch import load

    if path is None or not path.exists():
        return None
    try:
        state = load(path.read_bytes())
    except (OSError, ValueError, RuntimeError):
        return None
    own = transformer.state_dict()
    fits = set(state) == set(own) and all(state[k].shape == v.shape for k, v in own.items())
    return state if fits else None


def follower_runtime(cache: Path | None = None) -> Runtime:
    """A tiny-model Runtime whose pipeline has the colour VAE and the trained transformer.
    The weights are trained once and kept in `cache` (a folder) for later runs."""
    from safetensors.torch import save

    rt = Runtime.load(MODEL)
    transformer = rt.pipe.transformer
    path = (
        None if cache is None else Path(cache) / f"follower-{_cache_key(transformer)}.safetensors"
    )
    state = _cached(transformer, path)
    if state is not None:
        transformer.load_state_dict(state)
    else:
        error = train_follower(transformer)
        if error > 0.05:  # the training itself failed: say so rather than blame the runtime
            raise AssertionError(f"the tiny follower did not learn to copy keyframes ({error:.3f})")
        if path is not None:
            state = {k: v.contiguous() for k, v in transformer.state_dict().items()}
            fsio.atomic_write(path, save(state))
    rt.pipe.vae = colour_vae()
    return rt
