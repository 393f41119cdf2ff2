"""Content keys: a hash of everything that determines a stage's output, and nothing else."""

from __future__ import annotations

import hashlib
import json

from moldbatch.plan.types import StageParams, key_doc

# Bump when a change to moldbatch changes what a stage produces for the same inputs, so that
# old artifacts are not taken for new ones.
KEY_VERSION = "moldbatch-stage-4"  # 4: chain carries re-encode the decoded tail (#13), text
# encodes as stages (#12); 3: typed params, refine stages


def content_key(kind: str, params: StageParams, needs: list[str], memo: dict | None = None) -> str:
    """sha256 over the stage kind, its canonical parameters and the keys of what it needs.

    A file reference counts by its bytes only, so moving or renaming the film's folder changes
    no key. `memo`: see `key_doc` (the ladder passes one per shot)."""
    doc = {"v": KEY_VERSION, "kind": kind, "params": key_doc(params, memo), "needs": needs}
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()
