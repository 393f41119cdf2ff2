"""The real models' loading path end to end, on the CPU.

A models folder holds exactly the files `moldbatch pull` fetches for a real model, in their
shipped layouts (the transformer and its text connectors in one original-layout single file,
Gemma as a transformers folder, the diffusers-format components, Lightricks' single upsampler
file), but with the tiny model's weights in them. `Runtime` then loads it through the same
code as the 19B/22B checkpoints (`loading._load_real`) and renders, refine pass included.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from moldbatch.models import MODELS, TEXT_ENCODER_REPO
from moldbatch.runtime import Runtime, tiny
from moldbatch.runtime.requests import Refine
from moldbatch.weights import files as F

from conftest import original_connector_key, original_key, tiny_clip

# Both families (LTX-2.0: its diffusers repo beside the single files; LTX-2.3), and a dev model
# (guided sampling; the refine adds the distilled LoRA file).
CASES = ["ltx-2-19b-distilled:fp8", "ltx-2.3-22b-distilled:fp8", "ltx-2-19b-dev:fp8"]


def _write_everything(scratch: Path, model: str, parts) -> None:
    """Every file a real repo would hold (more than pull takes), under scratch/<org>/<name>."""
    from safetensors.torch import save_file

    info = MODELS[model]
    # the diffusers-format repo: what save_pretrained writes, named as the Hub's LTX2Pipeline
    components = scratch / info.diffusers_repo
    pipe = Runtime.load("ltx-2-tiny:random").pipe
    pipe.save_pretrained(components)
    index = json.loads((components / "model_index.json").read_text())
    index["_class_name"] = "LTX2Pipeline"
    (components / "model_index.json").write_text(json.dumps(index))
    # its connectors are not the ones trained with this transformer (the 19B repo's are the
    # dev model's): the loader must take those of the single file
    stale = tiny.build_components(seed=tiny.TINY_SEED + 99).connectors
    stale.save_pretrained(components / "connectors")

    # Gemma 3, as transformers lays it out
    text = scratch / TEXT_ENCODER_REPO
    parts.text_encoder.save_pretrained(text)
    parts.tokenizer.save_pretrained(text)

    # the transformer's single file: the transformer and its connectors, original names, plus
    # a VAE tensor as the shipped files have (the loaders skip it)
    single = {original_key(k): v.contiguous() for k, v in parts.transformer.state_dict().items()}
    single |= {
        original_connector_key(k): v.contiguous() for k, v in parts.connectors.state_dict().items()
    }
    single["vae.per_channel_statistics.mean-of-means"] = torch.zeros(8)
    path = scratch / info.repo / info.transformer_file
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(single, path)

    # the dev models' distilled LoRA as Lightricks ship it: original names, and a part for the
    # connectors' text projection (diffusers' LoRA loader puts that on the connectors)
    if "distilled-lora" in info.files:
        lora = {}
        for key, value in tiny.distilled_lora(parts.transformer).items():
            # transformer.<module>.lora_A.weight -> diffusion_model.<original module>.lora_A.weight
            module, half, _ = key.removeprefix("transformer.").rsplit(".", 2)
            original = original_key(module).removeprefix("model.")
            lora[f"{original}.{half}.weight"] = value.contiguous()
        gen = torch.Generator().manual_seed(5)
        width, depth = parts.connectors.text_proj_in.weight.shape
        lora["text_embedding_projection.aggregate_embed.lora_A.weight"] = torch.randn(
            4, depth, generator=gen
        )
        lora["text_embedding_projection.aggregate_embed.lora_B.weight"] = torch.randn(
            width, 4, generator=gen
        )
        repo, name = F.split_ref(info.files["distilled-lora"], info.repo)
        (scratch / repo).mkdir(parents=True, exist_ok=True)
        save_file(lora, scratch / repo / name)

    # the spatial x2 upsampler, one file with diffusers' module names
    repo, name = F.split_ref(info.files["spatial-x2"], info.repo)
    state = parts.latent_upsampler.state_dict()
    (scratch / repo).mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in state.items() if not k.endswith("blur_down.kernel")},
        scratch / repo / name,
    )


@pytest.fixture(scope="module", params=CASES)
def real(request, tmp_path_factory) -> tuple[str, Runtime, object]:
    """(model, its Runtime loaded from a pulled-looking models folder, the tiny parts in it)."""
    model = request.param
    parts = tiny.build_components()
    scratch = tmp_path_factory.mktemp("hub")
    _write_everything(scratch, model, parts)
    models = tmp_path_factory.mktemp("models")
    # copy only what pull fetches: the list must be enough to load and render
    for f in F.model_files(model):
        src = scratch / f.repo / f.path
        if src.is_file():
            dst = F.local_repo_dir(f.repo, models) / f.path
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(F.MODELS_ENV, str(models))
        mp.setenv("HF_HUB_OFFLINE", "1")
        assert F.missing_files(F.model_files(model), models, cache=False) == []
        yield model, Runtime(model, device="cpu"), parts


def test_a_pulled_model_loads_every_component_from_its_shipped_file(real) -> None:
    model, rt, parts = real
    pipe = rt.pipe
    for name in ("transformer", "connectors", "vae", "audio_vae", "vocoder"):
        got, want = getattr(pipe, name).state_dict(), getattr(parts, name).state_dict()
        assert set(got) == set(want), name
        for key, value in want.items():
            assert torch.equal(got[key].float(), value.float()), f"{name}.{key}"
    assert pipe.tokenizer("a fox").input_ids == parts.tokenizer("a fox").input_ids
    # the text encoder loads apart, on the first prompt encoded, from Gemma's own files
    assert not rt.text_encoder_loaded
    rt.encode_text("a fox")
    got, want = rt._text_encoder.state_dict(), parts.text_encoder.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k].float(), want[k].float()) for k in want)
    # distilled checkpoints run their fixed schedule unshifted
    assert pipe.scheduler.config.use_dynamic_shifting is (not MODELS[model].distilled)


@pytest.mark.slow
def test_a_pulled_model_renders_and_refines(real) -> None:
    model, rt, _ = real
    distilled = MODELS[model].distilled
    req = tiny_clip(
        model=model,
        frames=9,
        seed=3,
        steps=8 if distilled else 4,  # the distilled schedule, or a short guided one
        guidance=1.0 if distilled else 3.0,
    )
    clip = rt.render_clip(req)
    assert clip.frames.shape == (9, 64, 64, 3)
    assert clip.audio is not None and clip.audio.shape[1] == round(9 / 24 * rt.sample_rate)
    assert np.isfinite(clip.audio).all() and clip.frames.std() > 0
    # the second stage: the single-file x2 upsampler and a 3-step refine at twice the size
    up = rt.upscale(
        clip.video_latents,
        spatial="x2",
        refine=Refine(prompt=req.prompt, seed=req.seed),
        fps=req.fps,
        audio_latents=clip.audio_latents,
    )
    assert up.frames.shape == (9, 128, 128, 3)
    assert up.video_latents.shape[-2:] == (4, 4)
    # a dev model refines with its distilled LoRA, read from the file, on both components
    assert bool(rt._loras.loaded) is not distilled
    if not distilled:
        for part in (rt.pipe.transformer, rt.pipe.connectors):
            assert any(n.endswith("lora_A") for n, _ in part.named_modules())
