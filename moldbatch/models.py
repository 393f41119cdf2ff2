"""The model registry and the rules of the medium, each stated once: one entry per model with
everything that is model-specific, the frame and size grids, the pipelines, the transitions
between clips and the output formats."""

from __future__ import annotations

from dataclasses import dataclass, field

FRAME_GRID = 8  # pixel frames are 8k+1: the video VAE compresses time 8x, frame 0 on its own
SIZE_GRID = 32  # the video VAE compresses space 32x
MIN_RENDER_SIZE = 2 * SIZE_GRID  # its decoder pads each side: one latent (32 px) is too small

CAMERA_PRESETS = (
    "dolly-in",
    "dolly-left",
    "dolly-out",
    "dolly-right",
    "jib-down",
    "jib-up",
    "static",
)
SPATIAL_SCALES = {"x2": 2.0, "x1.5": 1.5}
TEMPORAL_SCALES = {"x2": 2}
FORMATS = ("mp4", "gif", "apng", "webp")
SILENT_FORMATS = ("gif", "apng", "webp")  # no audio track
SUFFIXES = {".mp4": "mp4", ".gif": "gif", ".png": "apng", ".apng": "apng", ".webp": "webp"}
TRANSITIONS = ("smooth", "cut", "fade")
PIPELINES = ("distilled", "two-stage", "one-stage", "keyframe", "a2vid", "retake", "ic-lora")
# The pipelines that render a half-size first pass, upsample it x2 in latent space and refine
# it at the render size, as Lightricks' reference pipelines do; `retake` and `one-stage` (mold's
# name for a single full-size pass) render once at the render size.
TWO_STAGE_PIPELINES = ("distilled", "two-stage", "keyframe", "a2vid", "ic-lora")
MEDIA_PIPELINES = ("a2vid", "retake", "ic-lora")  # pipelines whose clips follow a media file


def format_of(path: str) -> str | None:
    """The output format a file name asks for (`.png` is an animated PNG), or None."""
    suffix = path[path.rfind(".") :].lower() if "." in path else ""
    return SUFFIXES.get(suffix)


def seam_overlap(transition: str, motion_tail: int, fade_frames: int) -> int:
    """Frames two clips share across a seam: the carried tail, the cross-fade, or none."""
    return {"smooth": motion_tail, "fade": fade_frames, "cut": 0}[transition]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str  # "ltx-2" (19B) | "ltx-2.3" (22B) | "tiny"
    description: str
    base_pipeline: str  # "distilled" | "two-stage": what `pipeline: auto` runs for plain text/image
    clip_cap: int = 97  # the most pixel frames one clip may have
    default_steps: int = 8
    spatial_upscales: tuple[str, ...] = ("x2",)
    temporal_upscales: tuple[str, ...] = ("x2",)
    camera_control: bool = False
    pipelines: tuple[str, ...] = PIPELINES
    two_stage_pipelines: tuple[str, ...] = TWO_STAGE_PIPELINES
    repo: str | None = None  # Hugging Face repo of the transformer checkpoint
    files: dict[str, str] = field(default_factory=dict)  # role -> file in `repo` (or "repo:file")
    # --- what the runtime needs to load and drive it ---
    distilled: bool = False  # trained on a fixed 8-step schedule, run without guidance
    diffusers_repo: str | None = None  # the other components, in diffusers layout
    stg_blocks: tuple[int, ...] = ()  # spatio-temporal guidance blocks (dev models)
    # diffusers' name for its LTX-2.0 (False) / LTX-2.3 (True) cross-attention timesteps. The
    # runtime follows the reference's one rule for both families instead (docs/reference-parity.md)
    use_cross_timestep: bool = True
    max_sequence_length: int = 1024  # prompt tokens the text encoder reads; the rest is dropped
    camera_lora_repo_prefix: str | None = None
    # the most video latent tokens one transformer pass may hold (a clip at the output size):
    # what the runtime can do, refused at plan time rather than failing after minutes
    max_latent_tokens: int = 13 * 68 * 120  # 97 frames at 3840x2176 (4K after an x2 upscale)

    @property
    def built_in(self) -> bool:
        """Built in memory at run time (the tiny model): no files to pull, check or load."""
        return self.family == "tiny"

    @property
    def guided(self) -> bool:
        """Run with classifier-free guidance (dev models); distilled and tiny models are not."""
        return not (self.distilled or self.built_in)

    @property
    def text_encoder(self) -> str:
        """The text encoder's identity (an encode stage's key): Gemma 3 12B's repo, or the tiny
        model's own random one."""
        return f"{self.name}/text-encoder" if self.built_in else TEXT_ENCODER_REPO

    @property
    def transformer_repo(self) -> str | None:
        return self.repo

    @property
    def transformer_file(self) -> str | None:
        return self.files.get("transformer")

    def renders_in_two_stages(self, pipeline: str) -> bool:
        """Whether `pipeline` on this model renders a half-size first pass and refines it."""
        return pipeline in self.two_stage_pipelines

    @property
    def features(self) -> list[str]:
        out = [f"pipelines: {', '.join(self.pipelines)}"]
        out.append(f"spatial upscale: {', '.join(self.spatial_upscales) or '-'}")
        out.append(f"temporal upscale: {', '.join(self.temporal_upscales) or '-'}")
        out.append("camera presets" if self.camera_control else "no camera presets")
        return out


_LTX2_UPSCALERS = {
    "spatial-x2": "Lightricks/LTX-2:ltx-2-spatial-upscaler-x2-1.0.safetensors",
    "temporal-x2": "Lightricks/LTX-2:ltx-2-temporal-upscaler-x2-1.0.safetensors",
}
_LTX23_UPSCALERS = {
    # v1.1 replaced v1.0 of the x2 upscaler and the distilled LoRA (Lightricks' MODELS-LTX-2.3.md)
    "spatial-x2": "Lightricks/LTX-2.3:ltx-2.3-spatial-upscaler-x2-1.1.safetensors",
    "spatial-x1.5": "Lightricks/LTX-2.3:ltx-2.3-spatial-upscaler-x1.5-1.0.safetensors",
    "temporal-x2": "Lightricks/LTX-2.3:ltx-2.3-temporal-upscaler-x2-1.0.safetensors",
}
TEXT_ENCODER_REPO = "google/gemma-3-12b-it-qat-q4_0-unquantized"
_CAMERA_REPO = "Lightricks/LTX-2-19b-LoRA-Camera-Control-"
TINY_MODEL = "ltx-2-tiny:random"
# an encode stage's symbolic prompt: a guided model's default negative prompt (diffusers'
# DEFAULT_NEGATIVE_PROMPT: the planner does not import diffusers; runtime/text.py resolves it)
DEFAULT_NEGATIVE = "default-negative"
# Distilled LTX-2 checkpoints were trained on this fixed 8-step schedule.
DISTILLED_STEPS = 8

MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in [
        ModelInfo(
            "ltx-2-19b-dev:fp8",
            "ltx-2",
            "LTX-2 19B, two-stage, highest quality",
            "two-stage",
            # LTX-2.0's reference default (ltx-pipelines `utils/constants.py:39`); 30 is LTX-2.3's
            default_steps=40,
            camera_control=True,
            repo="Lightricks/LTX-2",
            diffusers_repo="Lightricks/LTX-2",
            stg_blocks=(29,),
            use_cross_timestep=False,
            camera_lora_repo_prefix=_CAMERA_REPO,
            files={
                "transformer": "ltx-2-19b-dev-fp8.safetensors",
                "distilled-lora": "ltx-2-19b-distilled-lora-384.safetensors",
                **_LTX2_UPSCALERS,
            },
        ),
        ModelInfo(
            "ltx-2-19b-distilled:fp8",
            "ltx-2",
            "LTX-2 19B, distilled, fastest 19B",
            "distilled",
            camera_control=True,
            repo="Lightricks/LTX-2",
            distilled=True,
            diffusers_repo="Lightricks/LTX-2",
            use_cross_timestep=False,
            camera_lora_repo_prefix=_CAMERA_REPO,
            files={"transformer": "ltx-2-19b-distilled-fp8.safetensors", **_LTX2_UPSCALERS},
        ),
        ModelInfo(
            "ltx-2.3-22b-dev:fp8",
            "ltx-2.3",
            "LTX-2.3 22B, two-stage, highest quality",
            "two-stage",
            default_steps=30,
            spatial_upscales=("x2", "x1.5"),
            repo="Lightricks/LTX-2.3-fp8",
            diffusers_repo="diffusers/LTX-2.3-Diffusers",
            stg_blocks=(28,),
            files={
                "transformer": "ltx-2.3-22b-dev-fp8.safetensors",
                "distilled-lora": "Lightricks/LTX-2.3:ltx-2.3-22b-distilled-lora-384-1.1.safetensors",
                **_LTX23_UPSCALERS,
            },
        ),
        ModelInfo(
            "ltx-2.3-22b-distilled:fp8",
            "ltx-2.3",
            "LTX-2.3 22B, distilled, fastest 22B",
            "distilled",
            spatial_upscales=("x2", "x1.5"),
            repo="Lightricks/LTX-2.3-fp8",
            distilled=True,
            # Lightricks pairs the 1.1 distilled weights with the 1.1 x2 upscaler; which version
            # this fp8 file holds cannot be checked offline (docs/reference-parity.md)
            diffusers_repo="diffusers/LTX-2.3-Distilled-Diffusers",
            files={"transformer": "ltx-2.3-22b-distilled-fp8.safetensors", **_LTX23_UPSCALERS},
        ),
        ModelInfo(
            TINY_MODEL,
            "tiny",
            "the real LTX-2 architecture at toy size with random weights (tests, quick start)",
            "distilled",
            default_steps=2,
            # one full-size pass by default, so the tests and the quick start run at 64x64;
            # `pipeline: two-stage` runs the half-size ladder of the real models
            two_stage_pipelines=("two-stage",),
            spatial_upscales=("x2",),
            temporal_upscales=("x2",),
            max_sequence_length=32,
            # 9 frames at 2048x2048 renders on the CPU in about a minute (measured); its rope
            # is normalised to a 2048 px frame, and past that the pass only grows
            max_latent_tokens=2 * 64 * 64,
        ),
    ]
}


def on_frame_grid(frames: int) -> bool:
    return frames >= 1 and (frames - 1) % FRAME_GRID == 0


def grid_neighbours(frames: int, step: int = FRAME_GRID) -> tuple[int, int]:
    """The nearest counts on the step*k+1 grid below and above `frames`."""
    below = max(1, ((frames - 1) // step) * step + 1)
    above = below if below >= frames else below + step
    return below, above


def grid_ceil(frames: int, step: int = FRAME_GRID) -> int:
    """The smallest step*k+1 count that is at least `frames`."""
    return grid_neighbours(max(frames, 1), step)[1]


def first_pass_size(size: int) -> int:
    """The two-stage pipelines' first-pass width or height for a render size (a multiple of 64,
    which the planner checks): half of it, so that its x2 upscale is the render size."""
    return size // 2


def latent_frames(frames: int) -> int:
    return (frames - 1) // FRAME_GRID + 1


def latent_tokens(frames: int, width: int, height: int) -> int:
    """Video latent tokens of a clip: latent frames x latent height x latent width."""
    return latent_frames(max(frames, 1)) * (height // SIZE_GRID) * (width // SIZE_GRID)


def held_frames(tail: int) -> int:
    """Frames of a chain's motion tail that its carry encodes and holds: whole latent frames,
    so the tail itself when it is 8m+1, else the largest 8m+1 below it (mold's tails)."""
    return (latent_frames(tail) - 1) * FRAME_GRID + 1


def rendered_tail(tail: int, temporal: bool) -> int:
    """A motion tail in rendered frames: with temporal x2 (clips rendered at half the frames)
    a tail of 16m+1 output frames is 8m+1 rendered, which the x2 turns back into 16m+1."""
    return (tail - 1) // 2 + 1 if temporal and tail else tail


# --- GPU memory: the one estimate of what a render needs (shown by `models` and `plan`,
# used by `render --memory auto`). Estimates, from the components' parameter counts, until
# benchmarks/gpu.py measures them (README, "Which GPU").

MEMORY_TIERS = ("resident", "sequential", "streamed")  # fastest first
GB = 1e9
TEXT_ENCODER_GB = 24.4  # Gemma 3 12B in bf16 (12.2B parameters, its vision tower included)
TEXT_EMBEDDING_GB = 2.0  # its 262k x 3840 token embeddings: on the GPU while streamed
TEXT_LAYERS = 48
# a family's transformer in fp8 (its bf16 norms, gates and embeddings included) and how much of
# it lies outside the 48 blocks (never streamed: mold #653 measured ~2.1 GB)
TRANSFORMER_GB = {"ltx-2": 19.0, "ltx-2.3": 22.0, "tiny": 0.002}
TRANSFORMER_OUTSIDE_BLOCKS_GB = 2.1
TRANSFORMER_BLOCKS = 48
CONNECTORS_GB = 1.9  # text connectors and their 188160 -> 3840 projection, bf16
DECODERS_GB = 2.4  # video VAE, audio VAE and vocoder
UPSAMPLER_GB = 1.0  # a latent upsampler, loaded for its stage
# activations per latent video token of a denoising pass (gelu intermediates dominate: mold
# #653 saw ~7 GB at 13k tokens), twice that for a guided (CFG) pass; the text encoder's at
# 1024 tokens; the tiled VAE decode's and the CUDA context's
ACTIVATION_GB_PER_TOKEN = 0.55e-3
TEXT_ACTIVATION_GB = 1.5
DECODE_GB = 3.0
CONTEXT_GB = 1.0
STREAM_GROUPS = 2  # groups on the GPU at once while streaming (the one running, the next)


def peak_bytes(info: ModelInfo, tier: str, width: int, height: int, frames: int) -> float:
    """Estimated peak GPU bytes of `info` denoising a width x height x frames pass in `tier`:
    parameter bytes of what the tier holds at once + activations by latent tokens."""
    if info.built_in:
        return 0.05 * GB
    transformer = TRANSFORMER_GB.get(info.family, 22.0)
    act = latent_tokens(frames, width, height) * ACTIVATION_GB_PER_TOKEN * (2 if info.guided else 1)
    denoise_act = max(act, DECODE_GB)
    if tier == "resident":
        gb = TEXT_ENCODER_GB + transformer + CONNECTORS_GB + DECODERS_GB + UPSAMPLER_GB
        gb += denoise_act
    elif tier == "sequential":
        text = TEXT_ENCODER_GB + TEXT_ACTIVATION_GB
        gb = max(text, transformer + CONNECTORS_GB + DECODERS_GB + UPSAMPLER_GB + denoise_act)
    elif tier == "streamed":
        layer = (TEXT_ENCODER_GB - TEXT_EMBEDDING_GB) / TEXT_LAYERS
        text = TEXT_EMBEDDING_GB + STREAM_GROUPS * layer + TEXT_ACTIVATION_GB
        block = (transformer - TRANSFORMER_OUTSIDE_BLOCKS_GB) / TRANSFORMER_BLOCKS
        resident = TRANSFORMER_OUTSIDE_BLOCKS_GB + STREAM_GROUPS * block
        gb = max(text, resident + CONNECTORS_GB + DECODERS_GB + UPSAMPLER_GB + denoise_act)
    else:
        raise ValueError(f"memory tier {tier!r}: one of {', '.join(MEMORY_TIERS)}")
    return (gb + CONTEXT_GB) * GB


def tier_for(needs: list[tuple[ModelInfo, int, int, int]], free: float) -> str | None:
    """The fastest tier whose estimate for every (model, width, height, frames) pass fits in
    `free` bytes, or None."""
    for tier in MEMORY_TIERS:
        if all(peak_bytes(info, tier, w, h, f) <= free for info, w, h, f in needs):
            return tier
    return None


def memory_line(needs: list[tuple[ModelInfo, int, int, int]]) -> str:
    """ "needs ~43 GB resident, ~27 GB sequential, ~12 GB streamed" for a render's passes."""
    parts = []
    for tier in MEMORY_TIERS:
        gb = max((peak_bytes(i, tier, w, h, f) for i, w, h, f in needs), default=0.0) / GB
        parts.append(f"~{gb:.0f} GB {tier}" if gb >= 1 else f"<1 GB {tier}")
    return "needs " + ", ".join(parts) + " (estimates)"


def memory_needs(stages) -> list[tuple[ModelInfo, int, int, int]]:
    """(model, width, height, frames) of each distinct denoising pass of a plan's stages: a
    clip's first pass, a refine at its size (what `peak_bytes` estimates)."""
    frames: dict[str, int] = {}
    out: set[tuple[str, int, int, int]] = set()
    for st in stages:
        p = st.params
        if st.kind == "clip":
            frames[st.id] = p.frames
            out.add((p.model, p.width, p.height, p.frames))
        elif st.kind in ("refine", "upscale"):
            src = frames.get(st.needs[0], 1)
            frames[st.id] = (src - 1) * 2 + 1 if p.temporal else src
            if p.refine is not None:
                out.add((p.model, p.width, p.height, src))
    return [(MODELS[m], w, h, f) for m, w, h, f in sorted(out) if m in MODELS]
