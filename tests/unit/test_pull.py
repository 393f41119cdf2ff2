"""Real models' files: the list per model, the presence check, `moldbatch pull` and the render
preflight, all offline (a fake Hugging Face cache in a temp folder), and the GPU benchmark's
no-GPU paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from moldbatch.cli import cli
from moldbatch.execute.store import stages_to_run
from moldbatch.models import CAMERA_PRESETS, MODELS, TEXT_ENCODER_REPO
from moldbatch.operations import missing_model_files
from moldbatch.weights import files as F
from moldbatch.weights.pull import PullError, pull

from conftest import REPO, write

D19 = "ltx-2-19b-distilled:fp8"
DEV19 = "ltx-2-19b-dev:fp8"
D23 = "ltx-2.3-22b-distilled:fp8"
DEV23 = "ltx-2.3-22b-dev:fp8"
REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of our own; no models folder; online (but never used)."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("MOLDBATCH_MODELS", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def cache_put(cache: Path, repo: str, path: str, data: bytes = b"x") -> Path:
    """Write one file the way huggingface_hub lays out its cache (blob + snapshot link)."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(REV)
    blob = folder / "blobs" / f"{abs(hash((repo, path))):x}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = folder / "snapshots" / REV / path
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    return link


def fill(put, files) -> None:
    for f in files:
        if f.kind != "optional":
            put(f.repo, f.path)


# --- the list ---------------------------------------------------------------------------------


def labels(files) -> set[str]:
    return {f.label for f in files}


def test_base_files_of_each_real_model():
    for name, model in MODELS.items():
        files = F.model_files(name)
        if model.family == "tiny":
            assert files == []
            continue
        got = labels(files)
        assert f"{model.repo}/{model.files['transformer']}" in got
        for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
            assert f"{TEXT_ENCODER_REPO}/{f}" in got
        comp = model.diffusers_repo
        for f in ("model_index.json", "scheduler/scheduler_config.json", "transformer/config.json"):
            assert f"{comp}/{f}" in got
        for sub in ("vae", "audio_vae", "vocoder", "connectors"):
            assert f"{comp}/{sub}/config.json" in got
            assert f"{comp}/{sub}/diffusion_pytorch_model.safetensors" in got
        # no transformer weights from the diffusers repo; no extras unless asked, but what the
        # second stage needs (the x2 upsampler; on dev models the distilled LoRA)
        assert not any("transformer/diffusion_pytorch_model" in x for x in got)
        second_stage = {"spatial-x2"} | ({"distilled-lora"} if not model.distilled else set())
        assert {f.role for f in files} == {
            "transformer",
            "text-encoder",
            "components",
        } | second_stage


def test_extras_per_model():
    dev19 = labels(F.model_files(DEV19, ["all"]))
    assert "Lightricks/LTX-2/ltx-2-19b-distilled-lora-384.safetensors" in dev19
    assert "Lightricks/LTX-2/ltx-2-spatial-upscaler-x2-1.0.safetensors" in dev19
    assert "Lightricks/LTX-2/ltx-2-temporal-upscaler-x2-1.0.safetensors" in dev19
    for preset in CAMERA_PRESETS:
        title = "-".join(p.capitalize() for p in preset.split("-"))
        assert (
            f"Lightricks/LTX-2-19b-LoRA-Camera-Control-{title}/"
            f"ltx-2-19b-lora-camera-control-{preset}.safetensors"
        ) in dev19
    assert not any("x1.5" in x for x in dev19)

    d19 = F.model_files(D19, ["spatial-x2,camera:static"])
    roles = {f.role for f in d19}
    assert roles == {"transformer", "text-encoder", "components", "spatial-x2", "camera:static"}
    assert "Lightricks/LTX-2/ltx-2-spatial-upscaler-x2-1.0.safetensors" in labels(d19)
    assert not any("latent_upsampler/" in x for x in labels(d19))  # the single file only
    assert "distilled-lora" not in F.available_extras(MODELS[D19])

    dev23 = labels(F.model_files(DEV23, ["all"]))
    assert "Lightricks/LTX-2.3/ltx-2.3-spatial-upscaler-x1.5-1.0.safetensors" in dev23
    assert "Lightricks/LTX-2.3/ltx-2.3-22b-distilled-lora-384-1.1.safetensors" in dev23
    assert "Lightricks/LTX-2.3-fp8/ltx-2.3-22b-dev-fp8.safetensors" in dev23
    assert "diffusers/LTX-2.3-Diffusers/model_index.json" in dev23
    assert not any("Camera" in x for x in dev23)
    assert F.parse_extras(MODELS[D19], ["camera:all"]) == [f"camera:{p}" for p in CAMERA_PRESETS]


@pytest.mark.parametrize(
    "model, extra, words",
    [
        (D23, "camera:static", "LTX-2 19B only"),
        (D23, "camera:all", "LTX-2 19B only"),
        (D19, "spatial-x1.5", "LTX-2.3 only"),
        (D19, "camera:orbit", "unknown camera preset"),
        (D19, "distilled-lora", "dev"),
        (D19, "spatial-x4", "unknown extra"),
    ],
)
def test_extras_that_do_not_exist(model, extra, words):
    with pytest.raises(F.UnknownExtra, match=words):
        F.model_files(model, [extra])


# --- presence ---------------------------------------------------------------------------------


def test_presence_in_a_fake_hf_cache(hf_cache):
    files = F.model_files(D19, ["camera:static"])
    assert F.missing_files(files) == [f for f in files if f.kind != "optional"]
    fill(lambda r, p: cache_put(hf_cache, r, p), files)
    assert F.missing_files(files) == []
    # our reading of the layout is huggingface_hub's
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(
        "Lightricks/LTX-2", "ltx-2-19b-distilled-fp8.safetensors", cache_dir=str(hf_cache)
    )
    assert isinstance(hit, str) and Path(hit) == F.locate(
        "Lightricks/LTX-2", "ltx-2-19b-distilled-fp8.safetensors"
    )
    # a dangling snapshot link (blob gone) is missing
    link = hf_cache / "models--Lightricks--LTX-2" / "snapshots" / REV / "vae" / "config.json"
    link.resolve().unlink()
    assert [f.path for f in F.missing_files(files)] == ["vae/config.json"]


def test_sharded_weights_count_when_every_shard_is_there(hf_cache):
    files = F.model_files(D19)
    fill(lambda r, p: None if p == "model.safetensors" else cache_put(hf_cache, r, p), files)
    assert [f.path for f in F.missing_files(files)] == ["model.safetensors"]
    shards = [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    index = {"weight_map": {"a": shards[0], "b": shards[1], "c": shards[1]}}
    cache_put(
        hf_cache, TEXT_ENCODER_REPO, "model.safetensors.index.json", json.dumps(index).encode()
    )
    cache_put(hf_cache, TEXT_ENCODER_REPO, shards[0])
    assert [f.path for f in F.missing_files(files)] == ["model.safetensors"]
    cache_put(hf_cache, TEXT_ENCODER_REPO, shards[1])
    assert F.missing_files(files) == []


def test_presence_in_a_models_dir(hf_cache, tmp_path, monkeypatch):
    mdir = tmp_path / "models"
    files = F.model_files(D23, ["spatial-x1.5"])

    def put(repo, path):
        target = mdir.joinpath(*repo.split("/"), path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x")

    fill(put, files)
    assert F.missing_files(files) == [f for f in files if f.kind != "optional"]  # not looked at
    assert F.missing_files(files, mdir) == []
    monkeypatch.setenv("MOLDBATCH_MODELS", str(mdir))
    assert F.missing_files(files) == []
    assert F.repo_root("Lightricks/LTX-2.3-fp8") == mdir / "Lightricks" / "LTX-2.3-fp8"


def test_missing_message_names_the_pull_command(hf_cache):
    msg = F.missing_message({D19: ["spatial-x2", "camera:static"]})
    assert "\n" not in msg
    assert "Lightricks/LTX-2 (ltx-2-19b-distilled-fp8.safetensors" in msg
    assert TEXT_ENCODER_REPO in msg and str(hf_cache) in msg
    # (spatial-x2 is pulled anyway: the distilled pipeline's second stage runs it)
    assert msg.endswith(f"run `moldbatch pull {D19} --with camera:static` first")
    assert F.missing_message({D19: []}, "/m").endswith(
        f"run `moldbatch pull {D19} --models-dir /m` first"
    )
    fill(lambda r, p: cache_put(hf_cache, r, p), F.model_files(D19, ["spatial-x2"]))
    assert F.missing_message({D19: ["spatial-x2"]}) is None
    assert "camera:static" in F.missing_message({D19: ["spatial-x2", "camera:static"]})


# --- render preflight -------------------------------------------------------------------------

FILM = """\
version: 1
name: real
defaults: {model: ltx-2-19b-distilled:fp8, width: 1216, height: 704, fps: 24}
shots:
  - {id: wide, prompt: cliffs at dawn, frames: 97, camera_control: dolly-in}
"""


def test_render_refuses_before_starting_when_files_are_missing(hf_cache, tmp_path):
    spec = write(tmp_path, "film.yaml", FILM)
    res = CliRunner().invoke(cli, ["render", str(spec)], catch_exceptions=False)
    assert res.exit_code == 3
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1, res.output
    assert lines[0].startswith("moldbatch: ltx-2-19b-distilled:fp8 needs ")
    assert f"run `moldbatch pull {D19} --with camera:dolly-in` first" in lines[0]
    assert not (tmp_path / ".moldbatch").exists()  # nothing started, no work folder


def test_render_preflight_passes_with_everything_present(hf_cache, tmp_path):
    from moldbatch.plan.planner import plan_file

    plan = plan_file(write(tmp_path, "film.yaml", FILM))
    assert plan.valid
    assert F.plan_needs(stages_to_run(plan, None)) == {D19: ["camera:dolly-in", "spatial-x2"]}
    fill(lambda r, p: cache_put(hf_cache, r, p), F.model_files(D19, ["camera:dolly-in"]))
    assert missing_model_files(plan, None) is None


def test_render_preflight_with_models_dir_option(hf_cache, tmp_path, monkeypatch):
    monkeypatch.delenv("MOLDBATCH_MODELS", raising=False)  # restored after: the CLI sets it
    spec = write(tmp_path, "film.yaml", FILM)
    mdir = tmp_path / "models"
    res = CliRunner().invoke(
        cli, ["render", str(spec), "--models-dir", str(mdir)], catch_exceptions=False
    )
    assert res.exit_code == 3
    assert f"--with camera:dolly-in --models-dir {mdir}` first" in res.output


def test_tiny_model_needs_nothing(hf_cache, tmp_path):
    from moldbatch.plan.planner import plan_file

    spec = write(tmp_path, "t.yaml", FILM.replace("ltx-2-19b-distilled:fp8", "ltx-2-tiny:random"))
    text = spec.read_text().replace(", camera_control: dolly-in", "")
    spec.write_text(text.replace("1216, height: 704", "128, height: 96"))
    plan = plan_file(spec)
    assert plan.valid, [str(d) for d in plan.diagnostics]
    assert missing_model_files(plan, None) is None


# --- pull ---------------------------------------------------------------------------------------


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "moldbatch", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        timeout=120,
    )


def test_pull_offline_is_one_clean_line(hf_cache):
    res = run_cli("pull", D19, "--with", "temporal-x2", env={"HF_HUB_OFFLINE": "1"})
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "HF_HUB_OFFLINE is set" in lines[0]
    assert f"moldbatch pull {D19} --with temporal-x2" in lines[0]


def test_pull_usage_errors(hf_cache):
    res = run_cli("pull", D23, "--with", "camera:static")
    assert res.returncode == 2 and "LTX-2 19B only" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("pull", "nope:fp8")
    assert res.returncode == 2 and "unknown model" in res.stderr
    res = run_cli("pull", "ltx-2-tiny:random")
    assert res.returncode == 0 and "needs no download" in res.stderr


def test_pull_dry_run_lists_files_and_state(hf_cache):
    cache_put(hf_cache, "Lightricks/LTX-2", "ltx-2-19b-distilled-fp8.safetensors")
    res = CliRunner().invoke(cli, ["pull", D19, "--dry-run"], catch_exceptions=False)
    assert res.exit_code == 0
    assert "present   transformer     Lightricks/LTX-2/ltx-2-19b-distilled-fp8.safetensors" in (
        res.output
    )
    assert "missing   components      Lightricks/LTX-2/model_index.json" in res.output


def test_pull_gated_repo_is_one_line(hf_cache, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(repo_id, **kw):
        if repo_id == TEXT_ENCODER_REPO:
            url = f"https://huggingface.co/api/models/{repo_id}"
            response = SimpleNamespace(status_code=401, headers={}, url=url, request=None)
            raise GatedRepoError("401 Client Error: access is restricted", response=response)
        for pattern in kw["allow_patterns"]:
            if "*" not in pattern:
                cache_put(hf_cache, repo_id, pattern)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(PullError) as e:
        pull(D19, [], say=lambda _: None)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"https://huggingface.co/{TEXT_ENCODER_REPO}" in msg
    assert "accept its licence" in msg and "hf auth login" in msg and "HF_TOKEN" in msg
    res = CliRunner().invoke(cli, ["pull", D19], catch_exceptions=False)
    assert res.exit_code == 3 and "is gated" in res.output and "Traceback" not in res.output


def test_pull_downloads_what_is_missing_into_cache_or_models_dir(hf_cache, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake(repo_id, *, allow_patterns, local_dir=None, cache_dir=None, **kw):
        calls.append((repo_id, list(allow_patterns), local_dir, cache_dir))
        for pattern in allow_patterns:
            if "*" in pattern or pattern.endswith(".index.json") or "template" in pattern:
                continue  # the Hub has single weight files here, no shards
            if local_dir is None:
                cache_put(Path(cache_dir), repo_id, pattern)
            else:
                target = Path(local_dir) / pattern
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(b"x")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    lines = []
    files = pull(D19, ["camera:static"], say=lines.append)
    assert F.missing_files(files) == []
    assert {c[0] for c in calls} == {
        "Lightricks/LTX-2",
        TEXT_ENCODER_REPO,
        "Lightricks/LTX-2-19b-LoRA-Camera-Control-Static",
    }
    ltx = next(c for c in calls if c[0] == "Lightricks/LTX-2")
    assert "ltx-2-19b-distilled-fp8.safetensors" in ltx[1]
    assert "vae/diffusion_pytorch_model-*-of-*.safetensors" in ltx[1]  # sharded variant too
    assert not any(p.startswith("text_encoder/") or p == "*" for p in ltx[1])
    assert ltx[3] == str(hf_cache)
    assert lines[-1].startswith(f"{D19}: ready")

    calls.clear()  # everything present: no download at all
    pull(D19, ["camera:static"], say=lines.append)
    assert calls == [] and "nothing to pull" in lines[-1]

    mdir = tmp_path / "models"
    pull(D19, [], mdir, say=lines.append)
    assert all(c[2] == str(mdir.joinpath(*c[0].split("/"))) for c in calls)
    assert (mdir / "Lightricks" / "LTX-2" / "ltx-2-19b-distilled-fp8.safetensors").is_file()
    assert F.missing_files(F.model_files(D19), mdir) == []


def test_pull_reports_files_the_hub_did_not_have(hf_cache, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **kw: None)
    with pytest.raises(PullError, match="did not arrive"):
        pull(D19, [], say=lambda _: None)


def test_pull_network_failure_is_one_line(hf_cache, monkeypatch):
    import huggingface_hub

    def down(*a, **kw):
        raise RuntimeError("ConnectError: Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", down)
    with pytest.raises(PullError, match="run the same command again to resume"):
        pull(D19, [], say=lambda _: None)


def test_loader_refuses_missing_files_without_downloading(hf_cache, monkeypatch):
    pytest.importorskip("torch")
    from moldbatch.errors import RuntimeLoadError
    from moldbatch.runtime.lora import LoraSwitch
    from moldbatch.runtime.registry import model_info

    with pytest.raises(RuntimeLoadError, match=f"moldbatch pull {D19} --with camera:jib-up"):
        LoraSwitch(pipe=None, info=model_info(D19))._resolve("camera-control:jib-up")
    from moldbatch.runtime.loading import require_files

    with pytest.raises(RuntimeLoadError, match=f"run `moldbatch pull {DEV23}` first"):
        require_files(model_info(DEV23))


# --- the GPU benchmark's CPU paths ---------------------------------------------------------------

GPU = REPO / "benchmarks" / "gpu.py"


def test_gpu_benchmark_dry_run():
    res = subprocess.run(
        [sys.executable, str(GPU), "--dry-run"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert "latent 13x22x38 = 10868 video tokens, 101 audio tokens" in res.stdout
    configs = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert [c["num_layers"] for c in configs] == [48, 48]
    assert configs[0]["gated_attn"] is False and configs[1]["gated_attn"] is True
    assert "tiers: resident, sequential, streamed" in res.stdout
    assert "49 x 3840 bf16 values a token (0.376 MB)" in res.stdout


def test_gpu_benchmark_skips_without_cuda():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the benchmark would run")
    res = subprocess.run(
        [sys.executable, str(GPU), "--no-overhead", "--no-film"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and res.stdout.strip() == "skipped: no CUDA GPU"


def test_gpu_benchmark_code_path_on_a_shrunk_config(capsys):
    pytest.importorskip("diffusers")
    sys.path.insert(0, str(GPU.parent))
    try:
        import gpu
    finally:
        sys.path.remove(str(GPU.parent))
    assert gpu.main(["--smoke", "--no-overhead", "--no-film", "--repeat", "1"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    tiers = [r for r in rows if "tiers" in r]
    rows = [r for r in rows if "tiers" not in r]
    assert [r["model"] for r in rows] == ["ltx-2-19b", "ltx-2.3-22b"]
    # each memory tier runs its text encode and denoise (no GPU: seconds, no peak)
    assert [r["model"] for r in tiers] == ["ltx-2-19b", "ltx-2.3-22b"]
    for r in tiers:
        assert list(r["tiers"]) == ["resident", "sequential", "streamed"]
        for tier in r["tiers"].values():
            assert tier["distilled_s_per_clip"] > 0 and tier["dev_s_per_clip"] > 0, tier
    for r in rows:
        assert r["bf16_b1_s_per_forward"] > 0 and r["bf16_b2_s_per_forward"] > 0
        assert "fp8_b1_s_per_forward" in r or "fp8_error" in r


@pytest.mark.slow
def test_gpu_benchmark_film_run_on_the_cpu():
    """The full-size film run's code path (at 128x96 on the CPU): each clip takes at least the
    real clip's seconds it is given, and the runtime's share of the wall is reported."""
    pytest.importorskip("diffusers")
    sys.path.insert(0, str(GPU.parent))
    try:
        import gpu
    finally:
        sys.path.remove(str(GPU.parent))
    row = gpu.bench_film("cpu", clip_seconds=0.3, smoke=True)
    assert row["film"] == "4 shots, 6 clips, 548 frames at 128x96"
    assert row["inside_runtime_s"] >= 6 * 0.3
    assert 0 < row["runtime_pct_of_wall"] <= 100 and row["join_s"] > 0
