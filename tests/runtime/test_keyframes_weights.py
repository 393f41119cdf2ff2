"""Keyframes reach the model at their exact frame; the transformer and the text connectors
load from an original-layout single file.

Both run the real diffusers LTX-2 pipeline with the tiny random weights (no mocks). That a
keyframe then shows in the decoded picture is test_keyframes_follow.py's business.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from moldbatch.runtime import ClipRequest, Runtime, tiny
from moldbatch.runtime.loading import load_transformer

from conftest import as_shipped_fp8, original_connector_key, original_key

MODEL = "ltx-2-tiny:random"
RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.fixture(scope="module")
def rt() -> Runtime:
    return Runtime.load(MODEL)


@pytest.fixture(scope="module")
def clip() -> ClipRequest:
    return ClipRequest(
        model=MODEL,
        prompt="a red fox runs through deep snow",
        width=64,
        height=64,
        frames=33,
        fps=24.0,
        seed=7,
        steps=3,
        guidance=3.0,
    )


# -- keyframes


def _transformer_calls(rt: Runtime, req: ClipRequest) -> list[dict]:
    """The keyword arguments of every transformer call while rendering `req`."""
    calls: list[dict] = []

    def hook(module, args, kwargs):
        calls.append(
            {
                "hidden_states": kwargs["hidden_states"].detach().clone(),
                "timestep": kwargs["timestep"].detach().clone(),
                "video_coords": kwargs["video_coords"].detach().clone(),
            }
        )

    handle = rt.pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        rt.render_clip(req)
    finally:
        handle.remove()
    return calls


@pytest.mark.parametrize("frame", [16, 13, 0])  # on the 8-frame grid, off it, the first frame
def test_a_keyframe_enters_the_model_clean_at_its_exact_frame(
    rt: Runtime, clip: ClipRequest, solid, frame: int
) -> None:
    tokens_per_frame = (clip.width // 32) * (clip.height // 32)
    base_tokens = 5 * tokens_per_frame  # 33 frames -> 5 latent frames
    red = _transformer_calls(rt, dataclasses.replace(clip, keyframes=[(frame, solid(RED))]))
    blue = _transformer_calls(rt, dataclasses.replace(clip, keyframes=[(frame, solid(BLUE))]))
    assert len(red) == clip.steps
    for call in red:
        # One latent frame of keyframe tokens appended after the clip's own tokens ...
        assert call["hidden_states"].shape[1] == base_tokens + tokens_per_frame
        # ... held clean (timestep 0) while the clip's tokens are denoised ...
        assert torch.all(call["timestep"][:, base_tokens:] == 0)
        assert torch.all(call["timestep"][:, :base_tokens] > 0)
        # ... and positioned at pixel frame `frame` exactly, one frame long (coords in seconds).
        start, end = call["video_coords"][:, 0, base_tokens:].unbind(-1)
        torch.testing.assert_close(start * clip.fps, torch.full_like(start, float(frame)))
        torch.testing.assert_close((end - start) * clip.fps, torch.ones_like(start))
    # The appended tokens are the image: the same at every step, and another image gives others.
    appended = [c["hidden_states"][:, base_tokens:] for c in red]
    assert all(torch.equal(a, appended[0]) for a in appended)
    assert not torch.allclose(appended[0], blue[0]["hidden_states"][:, base_tokens:], atol=1e-3)


# -- weights in the original single-file layout


@pytest.mark.slow
def test_original_layout_checkpoint_loads_through_the_real_loader(
    rt: Runtime, clip: ClipRequest, tmp_path: Path
) -> None:
    from diffusers.loaders.single_file_utils import convert_ltx2_transformer_to_diffusers
    from safetensors.torch import save_file

    transformer = tiny.build_components().transformer
    state = transformer.state_dict()
    original = {original_key(k): v.clone().contiguous() for k, v in state.items()}
    assert all(k.startswith("model.diffusion_model.") for k in original)
    assert any(".q_norm." in k for k in original) and any("adaln_single." in k for k in original)
    # The real files hold the VAEs and the text connectors too; the transformer loader drops them.
    original["vae.per_channel_statistics.mean-of-means"] = torch.zeros(8)
    original["model.diffusion_model.video_embeddings_connector.learnable_registers"] = torch.zeros(
        2
    )
    # Our inverse is exact: diffusers' own conversion maps the file back to the model's names.
    back = convert_ltx2_transformer_to_diffusers(dict(original))
    assert set(state) <= set(back)
    assert set(back) - set(state) == {"vae.per_channel_statistics.mean-of-means"}

    checkpoint = tmp_path / "ltx-2-tiny.safetensors"
    save_file(original, checkpoint)
    config_root = (
        tmp_path / "components"
    )  # the diffusers-format repo's layout: transformer/config.json
    transformer.save_config(config_root / "transformer")

    loaded = load_transformer(checkpoint, config_root, torch.float32)
    assert type(loaded) is type(transformer)
    loaded_state = loaded.state_dict()
    assert set(loaded_state) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded_state[key], value), key

    short = dataclasses.replace(clip, frames=9)
    expected = rt.render_clip(short)
    own = rt.pipe.transformer
    rt.pipe.transformer = loaded.eval().requires_grad_(False)
    try:
        got = rt.render_clip(short)
    finally:
        rt.pipe.transformer = own
    assert np.array_equal(got.frames, expected.frames)
    assert np.array_equal(got.audio, expected.audio)


@pytest.mark.parametrize("per_modality", [False, True])  # LTX-2.0's one projection, 2.3's two
def test_the_text_connectors_load_from_the_single_file_beside_the_transformer(
    tmp_path: Path, per_modality: bool
) -> None:
    """A distilled transformer is trained with its own connectors: they come from its file,
    and the transformer's loader leaves their keys alone."""
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from safetensors.torch import save_file

    from moldbatch.runtime.loading import load_connectors

    parts = tiny.build_components()
    connectors = parts.connectors
    if per_modality:
        connectors = LTX2TextConnectors.from_config(
            connectors.config,
            per_modality_projections=True,
            video_hidden_dim=32,
            audio_hidden_dim=32,
        )
        assert any(k.startswith("video_text_proj_in.") for k in connectors.state_dict())
    # trained weights, not the initial ones: every tensor distinct from a fresh build
    torch.manual_seed(3)
    with torch.no_grad():
        for p in connectors.parameters():
            p.normal_()
    state = connectors.state_dict()
    # Both placements of the text projection occur in shipped files; the 2.3 case is stored
    # as the fp8 files store their linears (e4m3 + scale), top-level projection included.
    outside = not per_modality
    original = {}
    for key, value in state.items():
        name = original_connector_key(key, outside)
        if per_modality and key.endswith(".weight") and value.ndim == 2:  # the linears
            original |= as_shipped_fp8(name, value)
        else:
            original[name] = value.clone().contiguous()
    # the names diffusers' conversion script reads from the shipped files
    projection = (
        ["model.diffusion_model.text_embedding_projection.video_aggregate_embed.weight"]
        if per_modality
        else ["text_embedding_projection.aggregate_embed.weight"]
    )
    for name in [
        *projection,
        "model.diffusion_model.video_embeddings_connector.learnable_registers",
        "model.diffusion_model.audio_embeddings_connector.transformer_1d_blocks.0.attn1.q_norm.weight",
        "model.diffusion_model.video_embeddings_connector.transformer_1d_blocks.0.ff.net.2.bias",
    ]:
        assert name in original, name
    original |= {
        original_key(k): v.clone().contiguous() for k, v in parts.transformer.state_dict().items()
    }
    checkpoint = tmp_path / "ltx-2-tiny-distilled.safetensors"
    save_file(original, checkpoint)
    root = tmp_path / "components"
    parts.transformer.save_config(root / "transformer")
    connectors.save_config(root / "connectors")

    loaded = load_connectors(checkpoint, root, torch.float32)
    assert type(loaded) is LTX2TextConnectors
    assert set(loaded.state_dict()) == set(state)
    for key, value in state.items():
        got = loaded.state_dict()[key]
        if per_modality and key.endswith(".weight") and value.ndim == 2:  # fp8 and its scale
            assert (got - value).norm() <= 0.06 * value.norm(), key
        else:
            assert torch.equal(got, value), key
    # the transformer's strict load takes only its own weights from the same file
    transformer = load_transformer(checkpoint, root, torch.float32)
    for key, value in parts.transformer.state_dict().items():
        assert torch.equal(transformer.state_dict()[key], value), key

    # a file without connectors gives none (the loader then takes the diffusers repo's)
    bare = tmp_path / "bare.safetensors"
    save_file(
        {k: v for k, v in original.items() if "connector" not in k and "text_emb" not in k}, bare
    )
    assert load_connectors(bare, root, torch.float32) is None
