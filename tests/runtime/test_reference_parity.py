"""The rules moldbatch follows from Lightricks' reference pipelines (LTX-2 at 9377758,
`packages/ltx-pipelines/src/ltx_pipelines/` and `packages/ltx-core/src/ltx_core/`), observed
where they act: hooks on the real diffusers modules of the tiny model record what the
transformer, the VAE and the vocoder receive. docs/reference-parity.md lists them per pipeline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import numpy as np
import pytest
import torch

from moldbatch.runtime import Runtime, sources
from moldbatch.runtime.requests import Refine

from conftest import tiny_clip

MODEL = "ltx-2-tiny:random"
RATE = 16000
# the refine's sigmas: ltx-pipelines `utils/constants.py:19`, STAGE_2_DISTILLED_SIGMA_VALUES
STAGE_2 = [0.909375, 0.725, 0.421875]


@pytest.fixture(scope="module")
def rt() -> Runtime:
    return Runtime.load(MODEL)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "red.png"
    y, x = np.mgrid[0:64, 0:64]
    Image.fromarray(np.stack([x * 4, y * 4, np.full_like(x, 90)], -1).astype(np.uint8)).save(path)
    return path


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * (220 * t + 60 * t * t))).astype(np.float32)[None]


@contextlib.contextmanager
def _calls(module: torch.nn.Module, *names: str):
    """Record the named keyword arguments of every call of `module` (as forward received
    them: after the runtime's own pre-hooks)."""
    seen: list[dict] = []

    def hook(mod, args, kwargs, output):
        seen.append(
            {
                k: kwargs[k].detach().clone()
                for k in names
                if isinstance(kwargs.get(k), torch.Tensor)
            }
        )

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


@contextlib.contextmanager
def _inputs(module: torch.nn.Module):
    """Record the first positional input of every call of `module`."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, a, o: seen.append(a[0].detach().clone()))
    try:
        yield seen
    finally:
        handle.remove()


def _packed(rt: Runtime, audio_latents: torch.Tensor) -> torch.Tensor:
    pipe = rt.pipe
    tokens = pipe._pack_audio_latents(audio_latents.float())
    return pipe._normalize_audio_latents(
        tokens, pipe.audio_vae.latents_mean, pipe.audio_vae.latents_std
    )


# -- 1. the refine re-noises the audio and denoises it with the video


@pytest.fixture(scope="module")
def first_pass(rt):
    clip = rt.render_clip(tiny_clip(frames=9, seed=4))
    return clip, rt.upscale_spatial(clip.video_latents)


@pytest.mark.parametrize("mode", ["refine", "keep", "hold"])
def test_refine_audio_sigmas_follow_the_reference_stage_2(rt, first_pass, mode) -> None:
    """distilled.py:194-200, ti2vid_two_stages.py:234-240, keyframe_interpolation.py:243-247,
    ic_lora.py:304-308: the stage-1 audio is re-noised to sigma0 = 0.909375 and its sigma
    (utils/helpers.py:263-272, timesteps = mask * sigma) follows the step's; a2vid
    (a2vid_two_stage.py:244-248) freezes it: noise 0, timesteps 0, sigma the video's."""
    clip, up = first_pass
    names = ("timestep", "audio_timestep", "sigma", "audio_sigma", "audio_hidden_states")
    with _calls(rt.pipe.transformer, *names) as seen:
        video, audio = rt.refine_with_audio(
            up, Refine("a red kite", seed=2, audio=mode), fps=24.0, audio_latents=clip.audio_latents
        )
    assert len(seen) == len(STAGE_2)  # no guidance in the refine: one pass per step
    for call, sigma in zip(seen, STAGE_2, strict=True):
        step = torch.tensor(sigma * 1000.0)
        torch.testing.assert_close(call["sigma"], step.expand_as(call["sigma"]))
        # the audio's sigma is the step's in every mode (a frozen audio keeps it too)
        torch.testing.assert_close(call["audio_sigma"], call["sigma"])
        if mode == "hold":
            assert torch.all(call["audio_timestep"] == 0)
        else:
            torch.testing.assert_close(
                call["audio_timestep"], step.expand_as(call["audio_timestep"])
            )
    clean = _packed(rt, clip.audio_latents)
    entering = seen[0]["audio_hidden_states"]
    if mode == "hold":
        torch.testing.assert_close(entering, clean)
        assert torch.equal(audio, clip.audio_latents)
    else:
        # re-noised to 0.909: mostly noise, a little of the first pass
        assert (entering - clean).std() > 0.5 * clean.std()
        changed = not torch.equal(audio, clip.audio_latents)
        assert changed is (mode == "refine")  # "keep" outputs the first pass's audio


def test_refine_and_keep_denoise_alike_and_upscale_decodes_the_refined_audio(
    rt, first_pass
) -> None:
    clip, up = first_pass
    kite = Refine("a red kite", seed=2)
    v_refine, _ = rt.refine_with_audio(up, kite, fps=24.0, audio_latents=clip.audio_latents)
    v_keep, _ = rt.refine_with_audio(
        up, dataclasses.replace(kite, audio="keep"), fps=24.0, audio_latents=clip.audio_latents
    )
    v_hold, _ = rt.refine_with_audio(
        up, dataclasses.replace(kite, audio="hold"), fps=24.0, audio_latents=clip.audio_latents
    )
    assert torch.equal(v_refine, v_keep)  # the same joint denoising; only the output differs
    assert not torch.equal(v_refine, v_hold)  # a frozen audio steers the video differently
    result = rt.upscale(
        clip.video_latents,
        spatial="x2",
        refine=kite,
        fps=24.0,
        audio=clip.audio,
        sample_rate=clip.sample_rate,
        audio_latents=clip.audio_latents,
    )
    np.testing.assert_array_equal(result.audio, rt.decode_audio(result.audio_latents, 9, 24.0))
    assert not np.array_equal(result.audio, clip.audio)


def test_a_chained_refine_holds_the_previous_clips_refined_audio_tail(rt, first_pass) -> None:
    """The refine denoises the audio, so a chain's refine holds the previous clip's refined
    audio tail clean at its start, as the first pass holds the rendered one."""
    clip, up = first_pass
    video, audio = rt.refine_with_audio(
        up, Refine("a red kite", seed=2), fps=24.0, audio_latents=clip.audio_latents
    )
    wave = rt.decode_audio(audio, 9, 24.0)
    carry = rt.carry_from(rt.decode_video(video), wave, rt.sample_rate, tail_frames=1, fps=24.0)
    n = carry.audio.shape[2]
    _, after = rt.refine_with_audio(
        up, Refine("a blue kite", seed=3, carry=carry), fps=24.0, audio_latents=clip.audio_latents
    )
    assert 0 < n < after.shape[2]
    assert torch.equal(after[:, :, :n], carry.audio)
    assert not torch.equal(after[:, :, n:], clip.audio_latents[:, :, n:])


@pytest.mark.parametrize(
    ("model", "fields", "want"),
    [
        ("ltx-2-19b-dev:fp8", "", "keep"),  # ti2vid_two_stages.py: the stage-1 audio
        ("ltx-2.3-22b-distilled:fp8", "", "refine"),  # distilled.py: the refined audio
        ("ltx-2-19b-dev:fp8", ", keyframes: [{frame: 40, image: k.png}]", "refine"),  # keyframes
    ],
)
def test_the_plan_tells_each_refine_what_to_do_with_the_audio(tmp_path, solid, model, fields, want):
    from moldbatch.models import MODELS
    from moldbatch.plan.ladder import refine_audio
    from moldbatch.plan.planner import plan_file

    from conftest import write

    (tmp_path / "k.png").write_bytes(solid((10, 200, 30)).read_bytes())
    spec = write(
        tmp_path,
        "film.yaml",
        f"version: 1\nshots:\n  - {{id: s, model: {model}, prompt: x, frames: 97{fields}}}\n",
    )
    plan = plan_file(spec)
    assert plan.valid, [str(d) for d in plan.diagnostics]
    assert plan.stage("s/refine-0").params.refine_audio == want
    # a2vid holds its audio and an IC-LoRA keeps the refined one, on any model
    assert refine_audio(MODELS[model], "a2vid", []) == "hold"
    assert refine_audio(MODELS[model], "ic-lora", []) == "refine"


# -- 2. x0 per token: held and conditioned tokens are their clean value in every pass


def test_x0_of_held_tokens_is_their_clean_value_in_every_guidance_pass(rt, image) -> None:
    """ltx-core model/transformer/model.py:505-535 (X0Model): x0 = x - v * sigma * mask, per
    token, video and audio. An image on frame 0 (4 tokens) and a held audio track (a2vid),
    with CFG on: the conditional and unconditional x0 of those tokens are equal (clean)."""
    pipe = rt.pipe
    convert = pipe.convert_velocity_to_x0
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]] = []

    def spy(sample, output, step, scheduler=None):
        x0 = convert(sample, output, step, scheduler)
        sigma = float((scheduler or pipe.scheduler).sigmas[step])
        seen.append((sample.clone(), output.clone(), x0.clone(), sigma))
        return x0

    req = tiny_clip(
        frames=9, steps=2, guidance=3.0, image=image, audio_input=_tone(1.0), audio_input_rate=RATE
    )
    pipe.convert_velocity_to_x0 = spy
    try:
        rt.render_clip(req)
    finally:
        del pipe.convert_velocity_to_x0
    video = [s for s in seen if s[0].shape[1] == 8]  # 2 latent frames x 2 x 2 tokens
    audio = [s for s in seen if s[0].shape[1] != 8]
    assert len(video) == len(audio) == 2 * 2  # conditional and unconditional, 2 steps
    for sample, output, x0, sigma in video:
        torch.testing.assert_close(x0[:, :4], sample[:, :4], rtol=0, atol=0)
        torch.testing.assert_close(x0[:, 4:], sample[:, 4:] - output[:, 4:] * sigma)
        # one scalar sigma (diffusers' rule) would move the held tokens
        assert (output[:, :4] * sigma).abs().max() > 1e-3
    for sample, _, x0, _ in audio:
        assert torch.equal(x0, sample)
    cond, uncond = video[0][2], video[1][2]
    assert torch.equal(cond[:, :4], uncond[:, :4]) and not torch.equal(cond[:, 4:], uncond[:, 4:])


# -- 3. a2vid: the audio's sigma is the video's; the audio guider has default parameters


def test_a2vid_audio_is_frozen_at_the_video_sigma_with_a_positive_audio_context(rt) -> None:
    """a2vid_two_stage.py:205-209: frozen audio, noise 0, its sigma the video's (timesteps 0);
    utils/denoisers.py:105-119 with MultiModalGuiderParams(): no negative audio context, so
    the unconditional pass takes the positive one."""
    names = ("audio_timestep", "sigma", "audio_sigma", "audio_encoder_hidden_states")
    req = tiny_clip(frames=9, guidance=3.0, audio_input=_tone(1.0), audio_input_rate=RATE)
    with _calls(rt.pipe.transformer, *names) as held:
        rt.render_clip(req)
    with _calls(rt.pipe.transformer, *names) as free:
        rt.render_clip(dataclasses.replace(req, audio_input=None, audio_input_rate=None))
    assert len(held) == 2
    for call in held:
        assert torch.all(call["audio_timestep"] == 0)
        assert torch.all(call["audio_sigma"] > 0)
        torch.testing.assert_close(call["audio_sigma"], call["sigma"])
        negative, positive = call["audio_encoder_hidden_states"]
        assert torch.equal(negative, positive)
    negative, positive = free[0]["audio_encoder_hidden_states"]
    assert not torch.equal(negative, positive)  # generated audio: guided as usual


def _perturbed_transformer(rt: Runtime):
    """The tiny transformer with STG-capable attention (as the real configs), same weights."""
    from diffusers import LTX2VideoTransformer3DModel

    from moldbatch.runtime import tiny

    own = tiny.build_components().transformer  # (rt's may carry LoRA adapters by now)
    config = {k: v for k, v in own.config.items() if not k.startswith("_")}
    model = LTX2VideoTransformer3DModel.from_config({**config, "perturbed_attn": True})
    model.load_state_dict(own.state_dict())
    return model.eval().requires_grad_(False)


@pytest.mark.parametrize("audio_guided", [True, False])
def test_a2vid_stg_perturbs_the_video_self_attention_only(rt, audio_guided) -> None:
    """utils/denoisers.py:105-119: the perturbed pass skips the video self-attention for the
    video guider's STG, and the audio self-attention only when the audio guider has STG (a2vid:
    it has none)."""
    pipe = rt.pipe
    own = pipe.transformer
    pipe.transformer = _perturbed_transformer(rt)
    block = pipe.transformer.transformer_blocks[0]
    try:
        with (
            _calls(block.attn1, "perturbation_mask") as video,
            _calls(block.audio_attn1, "perturbation_mask") as audio,
            pipe.conditioned(audio_guided=audio_guided),
        ):
            pipe(
                **rt.prompt_kwargs("a drummer", None),  # the text encoder loads apart
                height=64,
                width=64,
                num_frames=9,
                frame_rate=24.0,
                num_inference_steps=2,
                guidance_scale=1.0,
                audio_guidance_scale=1.0,
                stg_scale=1.0,
                audio_stg_scale=1.0 if audio_guided else 0.0,
                modality_scale=1.0,
                audio_modality_scale=1.0,
                spatio_temporal_guidance_blocks=[0],
                use_cross_timestep=True,
                generator=torch.Generator().manual_seed(0),
                output_type="latent",
                return_dict=False,
                max_sequence_length=32,
            )
    finally:
        pipe.transformer = own
    assert sum("perturbation_mask" in c for c in video) == 2  # the STG pass of each step
    assert sum("perturbation_mask" in c for c in audio) == (2 if audio_guided else 0)


# -- 6. the vocoder in float32


def test_the_vocoder_runs_in_float32_in_a_bf16_pipeline(rt) -> None:
    """ltx-core model/audio_vae/vocoder.py:572-609 (63fd9a4): the vocoder upcasts to fp32."""
    from moldbatch.runtime import tiny
    from moldbatch.runtime.loading import finish_pipeline
    from moldbatch.runtime.pipeline import MoldConditionPipeline

    pipe = MoldConditionPipeline(**tiny.build_components().pipeline_kwargs())
    pipe.to(dtype=torch.bfloat16)
    assert pipe.vocoder.dtype == torch.bfloat16
    finish_pipeline(pipe)
    assert pipe.vocoder.dtype == torch.float32 and pipe.audio_vae.dtype == torch.bfloat16
    own = rt.pipe
    rt.pipe = pipe
    latents = torch.randn(1, 4, 11, 4)
    try:
        with _inputs(pipe.vocoder) as seen:
            wave = rt.decode_audio(latents, 9, 24.0)
    finally:
        rt.pipe = own
    assert [x.dtype for x in seen] == [torch.float32] and np.isfinite(wave).all()


# -- 7. VAE tiling: the reference's decode tiles, untiled encoding


def test_vae_tiles_as_the_reference_and_images_encode_whole(rt) -> None:
    """ltx-core model/video_vae/tiling.py:64-69: 768 px / 64 overlap spatial and 80-frame / 24
    overlap temporal tiles, for decoding and for encoding a video (ltx-pipelines
    utils/helpers.py:85); utils/helpers.py:147: a conditioning image encodes whole."""
    from diffusers.pipelines.ltx2 import LTX2VideoCondition
    from PIL import Image

    vae = rt.pipe.vae
    config: list[dict] = []

    def note(module, args):
        config.append(
            {
                "tiling": vae.use_tiling,
                "framewise": vae.use_framewise_decoding,
                "size": (vae.tile_sample_min_height, vae.tile_sample_stride_height),
                "frames": (vae.tile_sample_min_num_frames, vae.tile_sample_stride_num_frames),
                "shape": tuple(args[0].shape),
            }
        )

    handle = vae.decoder.register_forward_pre_hook(note)
    try:
        rt.decode_video(torch.randn(1, 8, 13, 2, 2))  # 97 frames: two temporal tiles
    finally:
        handle.remove()
    assert [c["shape"][2] for c in config] == [11, 6]  # latent frames 0..10 and 7..12
    assert all(c["tiling"] and c["framewise"] for c in config)
    assert {(c["size"], c["frames"]) for c in config} == {((768, 704), (80, 56))}
    assert not vae.use_tiling and not vae.use_framewise_decoding  # off again

    with _inputs(vae.encoder) as video:
        rt.encode_video(np.zeros((1, 832, 832, 3), np.uint8))  # a (one-frame) video
    assert [tuple(x.shape[-2:]) for x in video] == [(768, 768), (768, 128), (128, 768), (128, 128)]
    picture = Image.new("RGB", (832, 832), (200, 40, 40))
    with _inputs(vae.encoder) as image:
        rt.pipe.prepare_latents(
            conditions=[LTX2VideoCondition(frames=picture, index=0, strength=1.0)],
            height=832,
            width=832,
            num_frames=9,
            num_channels_latents=8,
            dtype=torch.float32,
            device=torch.device("cpu"),
            generator=torch.Generator().manual_seed(0),
        )
    assert [tuple(x.shape[-2:]) for x in image] == [(832, 832)]  # whole, not in tiles


def test_an_ic_lora_reference_video_encodes_in_the_reference_tiles(rt, tmp_path) -> None:
    """ic_lora.py encodes its reference video with video_latent_from_file's tiled encode
    (utils/helpers.py:85); moldbatch's in-context pipeline does the same."""
    from safetensors.torch import save_file

    from moldbatch.runtime import Lora
    from moldbatch.runtime.tiny import random_lora

    path = tmp_path / "ic.safetensors"
    save_file(random_lora(rt.pipe.transformer, "attn1.to_k", seed=9), path)
    vae = rt.pipe.vae
    seen: list[tuple] = []
    handle = vae.encoder.register_forward_pre_hook(
        lambda module, args: seen.append(
            (vae.use_tiling, vae.tile_sample_min_width, args[0].shape[2])
        )
    )
    reference = np.random.default_rng(3).integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)
    try:
        rt.render_clip(
            tiny_clip(frames=9, audio=False, loras=[Lora(str(path))], reference_frames=reference)
        )
    finally:
        handle.remove()
    assert seen == [(True, 768, 9)]


# -- 8. audio latent length (kept)


def test_the_audio_latent_count_is_the_seam_safe_ceiling(rt) -> None:
    """Kept difference: ltx-core types.py:131-147 makes round(d x 25) audio latents; moldbatch
    makes ceil(d x 25 + 0.75), the fewest that decode to the whole clip (a shorter track would
    leave a gap at every seam of a chain). 17 frames at 24 fps: 19, not 18."""
    with _calls(rt.pipe.transformer, "audio_hidden_states") as seen:
        clip = rt.render_clip(tiny_clip(frames=17, steps=2))
    duration = 17 / 24
    assert seen[0]["audio_hidden_states"].shape[1] == math.ceil(duration * 25 + 0.75) == 19
    assert round(duration * 25) == 18
    assert clip.audio.shape[1] == round(duration * rt.sample_rate)


# -- 9. retake: no audio margin, plain bilinear resize


def _reference_region(start: float, end: float, length: int, rate: float = 25.0) -> list[int]:
    """conditioning/types/noise_mask_cond.py:24-42 with the causal audio patchifier's bounds
    (components/patchifiers.py:216-285): latent j spans mel frames max(4j - 3, 0) .. 4j + 1."""
    out = []
    for j in range(length):
        t0 = max(4 * j - 3, 0) * 160 / RATE
        t1 = (4 * (j + 1) - 3) * 160 / RATE
        if t1 > start and t0 < end:
            out.append(j)
    return out


@pytest.mark.parametrize(
    "window", [(0.5, 0.9), (0.0, 0.2), (0.31, 0.52), (0.25, 1.0), (0.04, 0.05), (0.6, 2.0)]
)
def test_retake_regenerates_exactly_the_reference_audio_region(window) -> None:
    got = sources.regenerated_audio_latents(window, 25.0, 26)
    assert got == _reference_region(*window, 26)


def test_retake_source_is_resized_plain_bilinear() -> None:
    """The reference resizes its source with bilinear interpolation, no antialiasing
    (ltx-pipelines utils/media_io.py:211)."""
    gen = np.random.default_rng(0)
    frames = gen.integers(0, 255, (2, 96, 144, 3), dtype=np.uint8)
    got = sources.fit_frames(frames, 64, 64)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    want = torch.nn.functional.interpolate(x, size=(64, 96), mode="bilinear", align_corners=False)
    want = want[:, :, :, 16:80].round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(got, want)


# -- 10. audio-video cross-attention timesteps


def test_cross_attention_scale_shift_takes_its_own_tokens_timesteps(rt, image) -> None:
    """ltx-core model/transformer/transformer_args.py:327-349 (since 203d484): scale/shift of
    the a2v/v2a cross-attention from each modality's own per-token timesteps, the gate from
    the other modality's sigma. With an image on frame 0, the video's 4 image tokens are at 0."""
    transformer = rt.pipe.transformer
    with (
        _inputs(transformer.av_cross_attn_video_scale_shift) as video_ss,
        _inputs(transformer.av_cross_attn_video_a2v_gate) as video_gate,
        _inputs(transformer.av_cross_attn_audio_scale_shift) as audio_ss,
        _inputs(transformer.av_cross_attn_audio_v2a_gate) as audio_gate,
        _calls(transformer, "timestep", "audio_timestep", "sigma", "audio_sigma") as calls,
    ):
        rt.render_clip(tiny_clip(frames=9, steps=2, image=image))
    factor = (
        transformer.config.cross_attn_timestep_scale_multiplier
        / transformer.config.timestep_scale_multiplier
    )
    assert len(calls) == len(video_ss) == len(audio_ss) == 2
    for call, vss, vg, ass, ag in zip(
        calls, video_ss, video_gate, audio_ss, audio_gate, strict=True
    ):
        assert torch.equal(vss, call["timestep"].flatten())  # per token: 8 values
        assert vss.numel() == 8 and torch.all(vss[:4] == 0) and torch.all(vss[4:] > 0)
        torch.testing.assert_close(vg, call["audio_sigma"].flatten() * factor)
        assert torch.equal(ass, call["audio_timestep"].flatten())
        torch.testing.assert_close(ag, call["sigma"].flatten() * factor)


# -- also: an audio scheduler of its own would escape the schedule overrides


def test_the_audio_follows_the_video_schedule_even_with_a_repo_audio_scheduler(rt) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from moldbatch.runtime.loading import finish_pipeline

    pipe = rt.pipe
    pipe.audio_scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    finish_pipeline(pipe)
    assert pipe.audio_scheduler is None
    with _calls(pipe.transformer, "timestep", "audio_timestep") as seen:
        rt.render_clip(tiny_clip(frames=9, steps=2))
    for call in seen:
        torch.testing.assert_close(call["audio_timestep"], call["timestep"][:, 0])


def test_registry_steps_follow_the_reference_defaults() -> None:
    """ltx-pipelines utils/constants.py:39 (LTX-2.0: 40 steps) and :74 (LTX-2.3: 30)."""
    from moldbatch.models import MODELS

    assert MODELS["ltx-2-19b-dev:fp8"].default_steps == 40
    assert MODELS["ltx-2.3-22b-dev:fp8"].default_steps == 30
    assert MODELS["ltx-2-19b-distilled:fp8"].default_steps == 8


def test_a_distilled_model_off_its_8_sigmas_is_allowed_with_a_warning(caplog) -> None:
    """Kept extension: Lightricks' distilled pipeline runs only DISTILLED_SIGMA_VALUES
    (ltx-pipelines utils/constants.py:15); other step counts take diffusers' schedule."""
    from diffusers.pipelines.ltx2.utils import DISTILLED_SIGMA_VALUES

    from moldbatch.runtime.registry import model_info
    from moldbatch.runtime.sampling import sampling_kwargs

    spec = model_info("ltx-2.3-22b-distilled:fp8")
    assert sampling_kwargs(spec, tiny_clip(model=spec.name, steps=8))["sigmas"] == list(
        DISTILLED_SIGMA_VALUES
    )
    assert not caplog.records
    with caplog.at_level("WARNING"):
        assert sampling_kwargs(spec, tiny_clip(model=spec.name, steps=4))["sigmas"] is None
    assert "8-sigma schedule" in caplog.text
