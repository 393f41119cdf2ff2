"""`moldbatch pull`: download a model's files (see files.py) with huggingface_hub.

Into the Hugging Face cache by default, or as plain copies under a models folder laid out
by repo (`<dir>/<org>/<name>/…`). huggingface_hub resumes interrupted downloads and skips
files already there, so running `pull` again finishes what a broken one started.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from moldbatch.errors import RuntimeLoadError
from moldbatch.models import MODELS
from moldbatch.weights.files import (
    HubFile,
    describe_missing,
    hub_cache_dir,
    hub_offline,
    local_repo_dir,
    missing_files,
    model_files,
    models_dir,
    pull_command,
)
from moldbatch.weights.hub import failure, gated_message


class PullError(RuntimeLoadError):
    """A pull that cannot finish; one line that says what to do."""

    exit_code = 3


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def download_repo(repo: str, patterns: list[str], local_dir: Path | None) -> None:
    """snapshot_download of `patterns` from `repo`, failures turned into one-line PullErrors."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(
            repo,
            allow_patterns=patterns,
            local_dir=str(local_dir) if local_dir is not None else None,
            cache_dir=None if local_dir is not None else str(hub_cache_dir()),
        )
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # network errors come from the HTTP client, not as OSError
        kind = failure(exc)
        if kind == "gated":
            raise PullError(gated_message(repo)) from exc
        if kind == "missing":
            raise PullError(
                f"{repo} was not found on the Hugging Face Hub, or it needs a login "
                "(`hf auth login` or HF_TOKEN)"
            ) from exc
        if kind == "offline":
            raise PullError(
                f"cannot reach the Hugging Face Hub to download from {repo} "
                f"({_one_line(exc)}); check the network (and that HF_HUB_OFFLINE is not set)"
            ) from exc
        if kind == "refused":
            raise PullError(f"the Hub refused a download from {repo}: {_one_line(exc)}") from exc
        raise PullError(
            f"download from {repo} failed ({type(exc).__name__}: {_one_line(exc)}); run the "
            "same command again to resume"
        ) from exc


def pull(
    model: str,
    extras: list[str],
    mdir: str | os.PathLike | None = None,
    say: Callable[[str], None] = print,
) -> list[HubFile]:
    """Download what `model` (and `extras`) need that is missing. Returns the file list."""
    info = MODELS[model]
    files = model_files(info, extras)
    base = models_dir(mdir)
    where = str(base) if base is not None else f"the Hugging Face cache ({hub_cache_dir()})"
    if not files:
        say(f"{model} is built at run time and needs no download")
        return files
    # an explicit models folder gets its own copies, whatever the cache holds
    cache = base is None
    missing = missing_files(files, base, cache)
    if not missing:
        say(f"{model}: all {len(files)} files are present in {where}; nothing to pull")
        return files
    if hub_offline():
        raise PullError(
            f"HF_HUB_OFFLINE is set, so nothing can be downloaded, and {len(missing)} file(s) "
            f"of {model} are missing: {describe_missing(missing)}; unset HF_HUB_OFFLINE on a "
            f"connected machine and run `{pull_command(model, extras, str(mdir) if mdir else None)}`"
        )
    repos: dict[str, list[str]] = {}
    for f in files:  # whole list: optional files and shards come along with the missing ones
        if any(m.repo == f.repo for m in missing):
            pats = repos.setdefault(f.repo, [])
            pats += [p for p in f.patterns() if p not in pats]
    say(f"pulling {model} into {where}: {len(repos)} repo(s), {len(missing)} missing file(s)")
    for repo, patterns in repos.items():
        say(f"  {repo}")
        download_repo(repo, patterns, local_repo_dir(repo, base) if base is not None else None)
    still = missing_files(files, base, cache)
    if still:
        raise PullError(
            f"the download finished but {describe_missing(still)} did not arrive (not on the "
            "Hub under that name?); check the repo pages"
        )
    say(f"{model}: ready ({len(files)} files in {where})")
    return files
