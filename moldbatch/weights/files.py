"""Which files a real model needs, and where they are on this machine. No torch, no network.

One place lists the files (`model_files`): the transformer's single file, the Gemma 3 text
encoder (weights and tokenizer), the diffusers-format component folders (scheduler, video and
audio VAEs, vocoder, text connectors, the transformer's config) and, on request, the extras:
upscalers, the distilled LoRA and the camera-control LoRAs. `moldbatch pull` downloads that
list, `moldbatch render` checks it before the first clip, and the loader reads from it.

A repo is read from one place: its copy under the models folder (`--models-dir` or
`MOLDBATCH_MODELS`, laid out as `<dir>/<org>/<name>/…`) when that folder exists, otherwise
the Hugging Face cache (`HF_HUB_CACHE`, or `HF_HOME/hub`), at the snapshot `refs/main` names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from moldbatch.errors import UsageError
from moldbatch.models import CAMERA_PRESETS, MODELS, TEXT_ENCODER_REPO, ModelInfo
from moldbatch.plan.types import RUNTIME_KINDS

MODELS_ENV = "MOLDBATCH_MODELS"

# Components of diffusers' LTX2Pipeline that come from the family's diffusers-format repo.
# text_encoder/tokenizer come from the Gemma repo and the transformer's weights from the
# single file; only its config.json is read from the diffusers repo.
DIFFUSERS_COMPONENTS = ("vae", "audio_vae", "vocoder", "connectors")
GEMMA_REQUIRED = ("config.json", "tokenizer_config.json", "tokenizer.json")
GEMMA_OPTIONAL = (
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
)


@dataclass(frozen=True)
class HubFile:
    """One file of a repo that a model needs.

    kind: "file" must exist; "weights" is a .safetensors file that may instead be sharded
    (`<name>.index.json` and the shards it lists); "optional" is pulled when the repo has it
    and never required.
    """

    repo: str
    path: str
    role: str  # "transformer" | "text-encoder" | "components" | an extra's name
    kind: str = "file"

    def patterns(self) -> list[str]:
        """allow_patterns for huggingface_hub's snapshot_download."""
        if self.kind != "weights":
            return [self.path]
        stem = self.path.removesuffix(".safetensors")
        return [self.path, f"{self.path}.index.json", f"{stem}-*-of-*.safetensors"]

    @property
    def label(self) -> str:
        return f"{self.repo}/{self.path}"


class UnknownExtra(UsageError):
    """An extra that does not exist, or not for this model; the message says which do."""


# --- the list ---------------------------------------------------------------------------------


def split_ref(ref: str, default_repo: str) -> tuple[str, str]:
    """A registry file reference, "file" (in the model's repo) or "org/name:file"."""
    if ":" in ref:
        repo, _, path = ref.partition(":")
        return repo, path
    return default_repo, ref


def camera_location(model: ModelInfo, preset: str) -> tuple[str, str]:
    """(repo, file) of a camera-control LoRA preset; LTX-2 19B only."""
    if model.camera_lora_repo_prefix is None:
        raise UnknownExtra(
            f"camera-control presets exist for LTX-2 19B only, not {model.name}; "
            "pass an explicit .safetensors LoRA path instead"
        )
    if preset not in CAMERA_PRESETS:
        raise UnknownExtra(
            f"unknown camera preset {preset!r}; presets: {', '.join(CAMERA_PRESETS)}"
        )
    title = "-".join(part.capitalize() for part in preset.split("-"))
    return (
        f"{model.camera_lora_repo_prefix}{title}",
        f"ltx-2-19b-lora-camera-control-{preset}.safetensors",
    )


def default_extras(model: ModelInfo) -> list[str]:
    """Extras a plain render of this model needs: a two-stage default pipeline's second stage
    runs the spatial x2 upsampler, and on the dev models refines with the distilled LoRA."""
    if not model.renders_in_two_stages(model.base_pipeline):
        return []
    return [e for e in ("spatial-x2", "distilled-lora") if e in model.files]


def available_extras(model: ModelInfo) -> list[str]:
    """Every extra `--with` accepts for this model, in a stable order."""
    out = [f"spatial-{s}" for s in model.spatial_upscales]
    out += [f"temporal-{s}" for s in model.temporal_upscales]
    if "distilled-lora" in model.files:
        out.append("distilled-lora")
    if model.camera_control and model.camera_lora_repo_prefix:
        out += [f"camera:{p}" for p in CAMERA_PRESETS]
    return [e for e in out if e.startswith("camera:") or e in model.files]


def parse_extras(model: ModelInfo, values: Iterable[str]) -> list[str]:
    """`--with` values (comma-separated, repeatable; `all`, `camera:all`) as extras, checked."""
    known = available_extras(model)
    out: list[str] = []
    for value in values:
        for item in (v.strip() for v in value.split(",")):
            if not item:
                continue
            if item == "all":
                wanted = known
            elif item == "camera:all":
                if not any(e.startswith("camera:") for e in known):
                    camera_location(model, "static")  # raises the LTX-2-19B-only message
                wanted = [e for e in known if e.startswith("camera:")]
            elif item.startswith("camera:"):
                camera_location(model, item.partition(":")[2])
                wanted = [item]
            elif item in known:
                wanted = [item]
            else:
                raise UnknownExtra(_unknown_extra(model, item, known))
            out += [w for w in wanted if w not in out]
    return out


def _unknown_extra(model: ModelInfo, item: str, known: list[str]) -> str:
    if item == "spatial-x1.5":
        why = "x1.5 spatial upscaling exists for LTX-2.3 only"
    elif item == "distilled-lora":
        why = "the distilled LoRA is for the dev (two-stage) models; distilled models need none"
    else:
        why = f"unknown extra {item!r}"
    names = sorted({e for e in known if not e.startswith("camera:")})
    if any(e.startswith("camera:") for e in known):
        names.append("camera:<preset>")
    return f"{why}; {model.name} takes: {', '.join(names + ['all'])}"


def model_files(model: ModelInfo | str, extras: Iterable[str] = ()) -> list[HubFile]:
    """Every file `model` needs to render (its `default_extras` included), plus `extras`
    (names from `available_extras`)."""
    if isinstance(model, str):
        model = MODELS[model]
    if model.built_in:
        return []
    assert model.repo and model.transformer_file and model.diffusers_repo
    out = [HubFile(model.repo, model.transformer_file, "transformer")]
    te = TEXT_ENCODER_REPO
    out += [HubFile(te, f, "text-encoder") for f in GEMMA_REQUIRED]
    out.append(HubFile(te, "model.safetensors", "text-encoder", "weights"))
    out += [HubFile(te, f, "text-encoder", "optional") for f in GEMMA_OPTIONAL]
    comp = model.diffusers_repo
    out.append(HubFile(comp, "model_index.json", "components"))
    out.append(HubFile(comp, "scheduler/scheduler_config.json", "components"))
    out.append(HubFile(comp, "transformer/config.json", "components"))
    out.append(HubFile(comp, "audio_scheduler/scheduler_config.json", "components", "optional"))
    for sub in DIFFUSERS_COMPONENTS:
        out.append(HubFile(comp, f"{sub}/config.json", "components"))
        out.append(
            HubFile(comp, f"{sub}/diffusion_pytorch_model.safetensors", "components", "weights")
        )
    for extra in parse_extras(model, [*default_extras(model), *extras]):
        out += _extra_files(model, extra)
    return _dedupe(out)


def _extra_files(model: ModelInfo, extra: str) -> list[HubFile]:
    if extra.startswith("camera:"):
        repo, path = camera_location(model, extra.partition(":")[2])
        return [HubFile(repo, path, extra)]
    repo, path = split_ref(model.files[extra], model.repo or "")
    return [HubFile(repo, path, extra)]


def _dedupe(files: list[HubFile]) -> list[HubFile]:
    seen: dict[tuple[str, str], HubFile] = {}
    for f in files:
        seen.setdefault((f.repo, f.path), f)
    return list(seen.values())


# --- where files are ---------------------------------------------------------------------------


def models_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    value = explicit if explicit is not None else os.environ.get(MODELS_ENV)
    return Path(value).expanduser() if value else None


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (not at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "huggingface" / "hub"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def local_repo_dir(repo: str, mdir: Path) -> Path:
    return mdir.joinpath(*repo.split("/"))


def cache_snapshot(repo: str) -> Path | None:
    """The cached snapshot folder `refs/main` points at, if any."""
    folder = hub_cache_dir() / ("models--" + repo.replace("/", "--"))
    try:
        rev = (folder / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snap = folder / "snapshots" / rev
    return snap if rev and snap.is_dir() else None


def repo_root(repo: str, mdir: str | os.PathLike | None = None, cache: bool = True) -> Path | None:
    """Where `repo` is read from: its models-folder copy if present, else (with `cache`) the
    Hugging Face cache snapshot."""
    base = models_dir(mdir)
    if base is not None:
        local = local_repo_dir(repo, base)
        if local.is_dir() or not cache:
            return local
    return cache_snapshot(repo)


def _present(root: Path, f: HubFile) -> bool:
    if (root / f.path).is_file():
        return True
    if f.kind != "weights":
        return False
    index = root / f"{f.path}.index.json"
    try:
        shards = set(json.loads(index.read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    parent = index.parent
    return bool(shards) and all((parent / s).is_file() for s in shards)


def missing_files(
    files: Iterable[HubFile], mdir: str | os.PathLike | None = None, cache: bool = True
) -> list[HubFile]:
    """The required files (not the optional ones) that are on neither the models folder
    nor (with `cache`) the Hugging Face cache."""
    roots: dict[str, Path | None] = {}
    out = []
    for f in files:
        if f.kind == "optional":
            continue
        if f.repo not in roots:
            roots[f.repo] = repo_root(f.repo, mdir, cache)
        root = roots[f.repo]
        if root is None or not _present(root, f):
            out.append(f)
    return out


def locate(repo: str, path: str, mdir: str | os.PathLike | None = None) -> Path | None:
    """Local path of one file, or None."""
    root = repo_root(repo, mdir)
    if root is None or not (root / path).is_file():
        return None
    return root / path


# --- messages ----------------------------------------------------------------------------------


def pull_command(model: str, extras: Iterable[str] = (), mdir: str | None = None) -> str:
    """The `moldbatch pull` line for `model` and `extras` (those it pulls anyway left out)."""
    cmd = f"moldbatch pull {model}"
    default = default_extras(MODELS[model]) if model in MODELS else []
    extras = [e for e in extras if e not in default]
    if extras:
        cmd += f" --with {','.join(extras)}"
    if mdir:
        cmd += f" --models-dir {mdir}"
    return cmd


def describe_missing(missing: list[HubFile], limit: int = 3) -> str:
    """'repo (a, b, +N more); repo2 (c)' — short enough for one line."""
    by_repo: dict[str, list[str]] = {}
    for f in missing:
        by_repo.setdefault(f.repo, []).append(f.path)
    parts = []
    for repo, paths in by_repo.items():
        shown = ", ".join(paths[:limit])
        more = f", +{len(paths) - limit} more" if len(paths) > limit else ""
        parts.append(f"{repo} ({shown}{more})")
    return "; ".join(parts)


def missing_message(
    needs: dict[str, list[str]], mdir: str | os.PathLike | None = None
) -> str | None:
    """One line naming what is missing for each model -> extras, and the pull commands; None
    when everything is present."""
    base = models_dir(mdir)  # None: $MOLDBATCH_MODELS, if set
    parts, commands = [], []
    for name, extras in needs.items():
        missing = missing_files(model_files(name, extras), base)
        if missing:
            n = len(missing)
            parts.append(
                f"{name} needs {n} file{'s' if n != 1 else ''} not downloaded: "
                f"{describe_missing(missing)}"
            )
            commands.append(pull_command(name, extras, str(base) if base else None))
    if not parts:
        return None
    where = f" in {base} or" if base else ""
    return (
        f"{'; '.join(parts)} (looked{where} in the Hugging Face cache {hub_cache_dir()}); "
        f"run `{' && '.join(commands)}` first"
    )


# --- what a plan needs -------------------------------------------------------------------------


def plan_needs(stages: Iterable) -> dict[str, list[str]]:
    """model -> extras, for the runtime stages given (those that will run)."""
    needs: dict[str, list[str]] = {}
    for st in stages:
        if st.kind not in RUNTIME_KINDS:
            continue
        p = st.params
        model = MODELS.get(getattr(p, "model", None) or "")
        if model is None or model.built_in or st.kind == "encode":
            continue
        extras = needs.setdefault(model.name, [])
        wanted = []
        if st.kind == "clip":
            if p.conditions.camera_control:
                wanted.append(f"camera:{p.conditions.camera_control}")
        else:
            if p.spatial:
                wanted.append(f"spatial-{p.spatial}")
            if p.temporal:
                wanted.append(f"temporal-{p.temporal}")
            if p.refine is not None:
                if p.refine.camera_control:
                    wanted.append(f"camera:{p.refine.camera_control}")
                if not model.distilled and "distilled-lora" in model.files:
                    wanted.append("distilled-lora")  # dev models refine with it
        extras += [w for w in wanted if w not in extras]
    return needs
