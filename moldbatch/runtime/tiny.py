"""`ltx-2-tiny:random`: the real diffusers LTX-2 pipeline classes with tiny random weights.

Everything is built in memory, offline, from a fixed seed, so every process gets bitwise the
same weights. The components keep the real model's geometry where the runtime depends on it:
the video VAE compresses 8x in time and 32x in space, the audio path has the real LTX-2 rates
(16 kHz mel frames every 10 ms, 4x latent compression -> 25 audio latents per second, a 24 kHz
vocoder), and the text stack (Gemma 3 -> connectors -> transformer) is wired like the real one.
Only the widths are toy-sized, so a 17-frame 64x64 clip renders in well under a second on a CPU.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

import torch

# Seed used for every tiny weight; changing it changes every tiny render.
TINY_SEED = 20260101

# Geometry shared between the components; the comments say which other value each must match.
_TEXT_HIDDEN = (
    32  # Gemma hidden size == connectors' caption_channels == transformer caption_channels
)
_TEXT_LAYERS = (
    2  # connectors' text_proj_in_factor == layers + 1 (embeddings are a hidden state too)
)
_VIDEO_LATENT_CHANNELS = 8  # video VAE latent channels == transformer in/out channels
_AUDIO_LATENT_CHANNELS = 4
_AUDIO_MEL_BINS = 16  # latent mel bins = 16 / 4 = 4; packed audio token = 4 channels * 4 bins = 16
_AUDIO_SAMPLE_RATE = 16000  # mel frame rate = sample_rate / hop = 100 Hz, as in LTX-2
_AUDIO_HOP = 160
_VOCODER_RATE = (
    24000  # vocoder upsampling (8*6*5 = 240) / 24 kHz == hop / 16 kHz == 10 ms per mel frame
)
_VOCODER_UPSAMPLE = (8, 6, 5)
_TOKENIZER_MAX_LENGTH = 32  # must be a multiple of the connectors' learnable registers (16)

# How many times this process has built the tiny components (a Runtime should do it once).
build_count = 0
# Benchmarks only (benchmarks/bench_memory.py): about this many MB of text encoder and twice as
# many of transformer (as the real models' ~24 / ~40 GB in bf16), random weights from their own
# seeds (the tiny renders change; keys do not)
SCALE_ENV = "MOLDBATCH_TINY_SCALE_MB"


def _scale_mb() -> int:
    import os

    return int(os.environ.get(SCALE_ENV, "0") or 0)


@dataclass
class TinyComponents:
    """The shared component objects of the tiny model (one set per process)."""

    transformer: Any
    vae: Any
    audio_vae: Any
    vocoder: Any
    connectors: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    latent_upsampler: Any  # spatial x2
    temporal_upsampler: Any  # temporal x2
    spatial_upsampler_x1_5: Any  # spatial x1.5

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Keyword arguments every LTX-2 pipeline class takes, sharing these same objects."""
        return {
            "transformer": self.transformer,
            "vae": self.vae,
            "audio_vae": self.audio_vae,
            "vocoder": self.vocoder,
            "connectors": self.connectors,
            "text_encoder": self.text_encoder,
            "tokenizer": self.tokenizer,
            "scheduler": self.scheduler,
        }


def _tiny_vocab() -> dict[str, int]:
    """A small SentencePiece-style vocabulary: Gemma's special tokens, a word marker, characters."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_image>", "<end_of_image>"]
    symbols = ["\u2581"] + list(string.ascii_lowercase) + list(string.digits) + list(".,!?'-:;()")
    return {tok: i for i, tok in enumerate(specials + symbols)}


def build_tokenizer() -> Any:
    """A `GemmaTokenizer` from the in-code vocabulary: needs no files. Unknown characters map to <unk>."""
    from transformers import GemmaTokenizer

    tokenizer = GemmaTokenizer(vocab=_tiny_vocab(), merges=[])
    tokenizer.model_max_length = _TOKENIZER_MAX_LENGTH
    return tokenizer


def build_text_encoder(seed: int = TINY_SEED) -> Any:
    """The tiny text encoder alone, bitwise the one `build_components` builds (it is the first
    thing drawn from `seed`); scaled up under MOLDBATCH_TINY_SCALE_MB."""
    with torch.random.fork_rng(devices=[]):
        scale = _scale_mb()
        torch.manual_seed(seed if not scale else seed + 10)
        build_tokenizer()
        # 2 layers of 3 x 32 x intermediate float32 MLP weights: 768 bytes per intermediate unit
        intermediate = 64 if not scale else scale * 1_000_000 // 768
        encoder = _build_text_encoder(vocab_size=64, intermediate=intermediate)
    return encoder.eval().requires_grad_(False)


def _build_text_encoder(vocab_size: int, intermediate: int = 64) -> Any:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    config = Gemma3Config(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": _TEXT_HIDDEN,
            "intermediate_size": intermediate,
            "num_hidden_layers": _TEXT_LAYERS,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 8,
            "max_position_embeddings": 256,
            "sliding_window": 64,
            "query_pre_attn_scalar": 8,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 16,
            "patch_size": 8,
        },
        mm_tokens_per_image=4,
        # The image-token ids must exist in the tiny vocabulary.
        boi_token_index=5,
        eoi_token_index=6,
        image_token_index=4,
    )
    return Gemma3ForConditionalGeneration(config).eval()


def _transformer_args() -> dict[str, Any]:
    return {
        "in_channels": _VIDEO_LATENT_CHANNELS,
        "out_channels": _VIDEO_LATENT_CHANNELS,
        "num_attention_heads": 4,
        "attention_head_dim": 8,
        "cross_attention_dim": 32,
        "audio_in_channels": _AUDIO_LATENT_CHANNELS * (_AUDIO_MEL_BINS // 4),
        "audio_out_channels": _AUDIO_LATENT_CHANNELS * (_AUDIO_MEL_BINS // 4),
        "audio_num_attention_heads": 4,
        "audio_attention_head_dim": 8,
        "audio_cross_attention_dim": 32,
        "audio_sampling_rate": _AUDIO_SAMPLE_RATE,
        "audio_hop_length": _AUDIO_HOP,
        "caption_channels": _TEXT_HIDDEN,
    }


def build_components(seed: int = TINY_SEED) -> TinyComponents:
    """Build every tiny component from `seed` (float32, CPU, eval mode)."""
    global build_count
    build_count += 1
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2LatentUpsamplerModel, LTX2TextConnectors, LTX2Vocoder

    # The global RNG is what module initialisers draw from; fork it so the caller's state survives.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_tokenizer()
        text_encoder = _build_text_encoder(vocab_size=64)

        connectors = LTX2TextConnectors(
            caption_channels=_TEXT_HIDDEN,
            text_proj_in_factor=_TEXT_LAYERS + 1,
            video_connector_num_attention_heads=4,
            video_connector_attention_head_dim=8,
            video_connector_num_layers=1,
            video_connector_num_learnable_registers=16,
            audio_connector_num_attention_heads=4,
            audio_connector_attention_head_dim=8,
            audio_connector_num_layers=1,
            audio_connector_num_learnable_registers=16,
            connector_rope_base_seq_len=_TOKENIZER_MAX_LENGTH,
        )

        transformer = LTX2VideoTransformer3DModel(**_transformer_args(), num_layers=2)

        # The default LTX-2 block layout at toy width. The two ratios must be given: for this
        # layout the attributes would otherwise report 64/16 although tensors shrink 32x/8x.
        vae = AutoencoderKLLTX2Video(
            in_channels=3,
            out_channels=3,
            latent_channels=_VIDEO_LATENT_CHANNELS,
            block_out_channels=(8, 16, 32, 64),
            decoder_block_out_channels=(8, 16, 32),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1),
            spatial_compression_ratio=32,
            temporal_compression_ratio=8,
        )

        audio_vae = AutoencoderKLLTX2Audio(
            base_channels=_AUDIO_LATENT_CHANNELS
            * (_AUDIO_MEL_BINS // 4),  # == packed token width (stats size)
            output_channels=2,
            ch_mult=(1, 2, 4),
            num_res_blocks=1,
            in_channels=2,
            latent_channels=_AUDIO_LATENT_CHANNELS,
            sample_rate=_AUDIO_SAMPLE_RATE,
            mel_hop_length=_AUDIO_HOP,
            mel_bins=_AUDIO_MEL_BINS,
        )

        vocoder = LTX2Vocoder(
            in_channels=_AUDIO_MEL_BINS * 2,  # stereo mel: 2 channels x mel bins
            hidden_channels=32,
            out_channels=2,
            # kernel - stride must be even so each layer upsamples by exactly its factor.
            upsample_kernel_sizes=[2 * f - f % 2 for f in _VOCODER_UPSAMPLE],
            upsample_factors=list(_VOCODER_UPSAMPLE),
            resnet_kernel_sizes=[3],
            resnet_dilations=[[1, 3]],
            output_sampling_rate=_VOCODER_RATE,
        )

        def upsampler(**kind):
            return LTX2LatentUpsamplerModel(
                in_channels=_VIDEO_LATENT_CHANNELS,
                mid_channels=32,
                num_blocks_per_stage=1,
                dims=3,
                **kind,
            )

        latent_upsampler = upsampler(spatial_upsample=True, temporal_upsample=False)

        # Built from their own seeds so adding them left every weight above unchanged.
        torch.manual_seed(seed + 1)
        # F' latent frames -> 2F' - 1: 8k+1 pixel frames -> 16k+1
        temporal_upsampler = upsampler(spatial_upsample=False, temporal_upsample=True)
        torch.manual_seed(seed + 2)
        # x3 pixel shuffle, then a blurred stride-2 downsample
        spatial_upsampler_x1_5 = upsampler(
            spatial_upsample=True, temporal_upsample=False, rational_spatial_scale=1.5
        )

        scheduler = FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True,
            base_shift=0.95,
            max_shift=2.05,
            base_image_seq_len=1024,
            max_image_seq_len=4096,
            shift_terminal=0.1,
        )

    if _scale_mb():
        torch.manual_seed(seed + 11)
        # heads of 256: 1024 wide, a block about 100 MB of float32 weights
        blocks = max(1, round(2 * _scale_mb() / 100))
        transformer = LTX2VideoTransformer3DModel(
            **{**_transformer_args(), "attention_head_dim": 256, "cross_attention_dim": 1024},
            num_layers=blocks,
        )
    for module in (
        text_encoder,
        connectors,
        transformer,
        vae,
        audio_vae,
        vocoder,
        latent_upsampler,
        temporal_upsampler,
        spatial_upsampler_x1_5,
    ):
        module.eval().requires_grad_(False)

    return TinyComponents(
        transformer=transformer,
        vae=vae,
        audio_vae=audio_vae,
        vocoder=vocoder,
        connectors=connectors,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        latent_upsampler=latent_upsampler,
        temporal_upsampler=temporal_upsampler,
        spatial_upsampler_x1_5=spatial_upsampler_x1_5,
    )


def random_lora(
    transformer: Any, suffix: str, seed: int, *, rank: int = 4, scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """A rank-`rank` PEFT LoRA (as `load_lora_weights` reads it) on every transformer Linear
    whose name ends with `suffix`, drawn from `seed`: the tiny stand-in for a LoRA file."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, module in transformer.named_modules():
        # (a layer already wrapped by PEFT keeps its name and its in/out features)
        if name.endswith(suffix) and hasattr(module, "in_features"):
            state[f"transformer.{name}.lora_A.weight"] = torch.randn(
                rank, module.in_features, generator=gen
            )
            state[f"transformer.{name}.lora_B.weight"] = scale * torch.randn(
                module.out_features, rank, generator=gen
            )
    if not state:
        raise ValueError(f"no Linear layer of the transformer ends with {suffix!r}")
    return state


def distilled_lora(transformer: Any) -> dict[str, torch.Tensor]:
    """The tiny model's "distilled LoRA", which dev models apply for the refine pass."""
    return random_lora(transformer, "ff.net.2", TINY_SEED + 3, scale=0.5)
