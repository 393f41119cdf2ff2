"""Content keys: a hash of everything that determines a stage's output, and nothing else."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from moldbatch.fsio import sha256_file

# Bump when a change to moldbatch changes what a stage produces for the same inputs, so that
# old artifacts are not taken for new ones.
KEY_VERSION = "moldbatch-stage-3"  # bumped whenever the same params render differently


def content_key(kind: str, params: dict, needs: list[str]) -> str:
    """sha256 over the stage kind, its canonical parameters and the keys of what it needs.

    A file reference ({"path", "sha256"}) counts by its bytes only, so moving or renaming
    the film's folder changes no key."""
    doc = {"v": KEY_VERSION, "kind": kind, "params": _keyed(params), "needs": needs}
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class FileDigests:
    """sha256 of input files, each read once per plan however many stages use it."""

    def __init__(self) -> None:
        self._cache: dict[Path, str] = {}

    def __call__(self, path: Path) -> str:
        if path not in self._cache:
            self._cache[path] = sha256_file(path)
        return self._cache[path]


def _keyed(value):
    if isinstance(value, dict):
        return {k: _keyed(v) for k, v in value.items() if not (k == "path" and "sha256" in value)}
    if isinstance(value, list):
        return [_keyed(v) for v in value]
    return value
