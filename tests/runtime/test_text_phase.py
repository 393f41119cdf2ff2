"""The text phase: every distinct prompt of a film is encoded once, by an encode stage, before
any clip denoises; the stored prompts render bitwise what encoding in the pipeline rendered;
a re-render that changes no prompt never loads the text encoder; the sequential tier releases
it before the transformer first runs; every tier renders the same bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from moldbatch.execute.executor import render_plan
from moldbatch.plan.planner import plan_file

from conftest import tiny_clip, write

FILM = """\
version: 1
defaults: {{model: ltx-2-tiny:random, width: 64, height: 64, guidance: {guidance}, seed: {seed}}}
output: film.mp4
shots:
  - id: intro
    prompt: a quiet harbour
    frames: 17
  - id: walk
    frames: 50
    clip_frames: 25
    motion_tail: 9
    prompts: [a quiet harbour, boats at dusk, a quiet harbour]
"""


def _film(folder: Path, seed: int = 1, guidance: float = 1.0) -> Path:
    return write(folder, "film.yaml", FILM.format(seed=seed, guidance=guidance))


class Forwards:
    """Real forward calls of the text encoder (Gemma 3's base model: what the runtime runs)
    and of the transformer, counted by global module hooks; `encoders` are the text encoder
    modules seen, `at_first_denoise` whether each still held weights when the transformer
    first ran."""

    def __init__(self):
        from diffusers import LTX2VideoTransformer3DModel
        from transformers.models.gemma3.modeling_gemma3 import Gemma3Model

        self.text, self.denoise, self.encoders, self.at_first_denoise = 0, 0, [], None

        def hook(module, args):
            if isinstance(module, Gemma3Model):
                self.text += 1
                self.encoders.append(module)
            elif isinstance(module, LTX2VideoTransformer3DModel):
                if self.denoise == 0:
                    self.at_first_denoise = [
                        sum(p.numel() for p in m.parameters()) for m in self.encoders
                    ]
                self.denoise += 1

        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)

    def close(self):
        self.handle.remove()


@pytest.fixture
def forwards():
    f = Forwards()
    yield f
    f.close()


def _render(spec: Path, memory: str = "resident", runtimes: dict | None = None):
    plan = plan_file(spec)
    assert plan.valid, [str(d) for d in plan.diagnostics]
    runtimes = {} if runtimes is None else runtimes
    summary = render_plan(plan, progress=False, runtimes=runtimes, memory=memory)
    assert summary.ok, summary
    return plan, summary, runtimes


def test_stored_prompts_render_bitwise_what_the_pipeline_encoding_rendered():
    from moldbatch.runtime import Runtime

    rt = Runtime("ltx-2-tiny:random", device="cpu")
    assert not rt.text_encoder_loaded  # loaded by the first prompt, not with the runtime
    req = dict(guidance=3.0, negative_prompt="blurry, static")  # CFG: the negative is read too
    stored = rt.render_clip(
        tiny_clip(
            **req,
            prompt_embeds=rt.encode_text("a red kite over dunes"),
            negative_prompt_embeds=rt.encode_text("blurry, static"),
        )
    )
    # the direct path: diffusers' pipeline encodes the text itself, with the same encoder
    rt.pipe.text_encoder = rt._text_encoder
    rt.prompt_kwargs = lambda prompt, negative, *a, **k: {
        "prompt": prompt,
        "negative_prompt": negative,
    }
    direct = rt.render_clip(tiny_clip(**req))
    assert torch.equal(stored.video_latents, direct.video_latents)
    assert stored.frames.tobytes() == direct.frames.tobytes()
    assert stored.audio.tobytes() == direct.audio.tobytes()


def test_the_stored_prompt_is_trimmed_to_its_tokens():
    from moldbatch.runtime import Runtime

    rt = Runtime("ltx-2-tiny:random", device="cpu")
    short, long = rt.encode_text("a kite"), rt.encode_text("a red kite over the dunes at dawn")
    width = 32 * 3  # hidden 32 x (2 layers + the embeddings)
    assert short.shape[1] == long.shape[1] == width
    assert 1 < short.shape[0] < long.shape[0] <= rt.info.max_sequence_length


def test_two_prompts_encode_twice_and_a_seed_change_never_loads_the_text_encoder(
    film_dir: Path, forwards: Forwards
):
    plan, summary, runtimes = _render(_film(film_dir))
    encodes = [s for s in plan.stages if s.kind == "encode"]
    assert len(encodes) == 2
    assert plan.stages[: len(encodes)] == encodes  # the text phase comes first
    assert forwards.text == 2  # one text encoder forward per distinct prompt
    assert forwards.denoise > 0

    forwards.text = 0
    plan, summary, fresh = _render(_film(film_dir, seed=2), runtimes={})
    assert {o.id for o in summary.stages if o.status == "cached"} >= {s.id for s in encodes}
    assert forwards.text == 0
    assert not fresh["ltx-2-tiny:random"].text_encoder_loaded


def test_guidance_adds_one_encode_for_the_shared_negative_prompt(film_dir: Path):
    plan = plan_file(_film(film_dir, guidance=3.0))
    encodes = [s for s in plan.stages if s.kind == "encode"]
    assert sorted(s.params.prompt for s in encodes) == ["", "a quiet harbour", "boats at dusk"]


def test_the_sequential_tier_releases_the_text_encoder_before_the_first_denoise(
    film_dir: Path, forwards: Forwards
):
    _, _, runtimes = _render(_film(film_dir), memory="sequential")
    rt = runtimes["ltx-2-tiny:random"]
    assert forwards.text == 2 and forwards.at_first_denoise is not None
    assert forwards.encoders and forwards.at_first_denoise == [0] * len(forwards.encoders)
    assert not rt.text_encoder_loaded


def test_resident_keeps_the_text_encoder(film_dir: Path, forwards: Forwards):
    _, _, runtimes = _render(_film(film_dir), memory="resident")
    assert runtimes["ltx-2-tiny:random"].text_encoder_loaded
    assert all(n > 0 for n in forwards.at_first_denoise)


def _artifacts(plan, workdir: Path) -> dict[str, str]:
    from moldbatch.execute.store import ArtifactStore

    store = ArtifactStore(workdir)
    out = {}
    for st in plan.stages:
        art = store.get(st.key)
        assert art is not None, st.id
        for name, info in art.manifest["files"].items():
            out[f"{st.id}/{name}"] = info["sha256"]
    return out


@pytest.mark.slow
def test_every_tier_renders_the_bytes_of_resident(tmp_path: Path):
    got = {}
    for tier in ("resident", "sequential", "streamed"):
        folder = tmp_path / tier
        folder.mkdir()
        plan, _, _ = _render(_film(folder), memory=tier)
        got[tier] = _artifacts(plan, folder / ".moldbatch")
        got[tier]["film"] = hashlib.sha256((folder / "film.mp4").read_bytes()).hexdigest()
    assert got["sequential"] == got["resident"]
    assert got["streamed"] == got["resident"]


def test_a_dev_model_encodes_its_default_negative_prompt_by_name(film_dir: Path):
    from diffusers.pipelines.ltx2.utils import DEFAULT_NEGATIVE_PROMPT

    from moldbatch.models import DEFAULT_NEGATIVE
    from moldbatch.runtime.text import resolve_prompt

    dev = FILM.replace("ltx-2-tiny:random", "ltx-2-19b-dev:fp8").replace("64", "1024")
    plan = plan_file(write(film_dir, "film.yaml", dev.format(seed=1, guidance=3.0)))
    assert plan.valid, [str(d) for d in plan.diagnostics]
    encodes = {s.id: s.params for s in plan.stages if s.kind == "encode"}
    negative = [i for i, p in encodes.items() if p.prompt is None]
    assert len(negative) == 1 and encodes[negative[0]].default == DEFAULT_NEGATIVE
    # every guided first pass reads it; a refine runs unguided and reads its prompt alone
    for st in plan.stages:
        texts = [n for n in st.needs if n.startswith("encode/")]
        if st.kind == "clip":
            assert texts[1:] == negative
        elif st.kind == "refine":
            assert len(texts) == 1 and texts != negative
    assert resolve_prompt(None, DEFAULT_NEGATIVE) == DEFAULT_NEGATIVE_PROMPT
    # a key of the text encoder, the text and the length only: another model shares it
    assert encodes[negative[0]].text_encoder == "google/gemma-3-12b-it-qat-q4_0-unquantized"


@pytest.mark.slow
def test_refines_and_chains_of_a_two_stage_film_read_the_stored_prompts(
    film_dir: Path, forwards: Forwards
):
    two_stage = FILM.replace("64, height: 64", "128, height: 128, pipeline: two-stage")
    plan, _, _ = _render(write(film_dir, "film.yaml", two_stage.format(seed=1, guidance=1.0)))
    assert sum(s.kind == "refine" for s in plan.stages) == 4
    assert forwards.text == 2  # the first passes and their refines: one encode per prompt
