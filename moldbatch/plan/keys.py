"""Content keys: a hash of everything that determines a stage's output, and nothing else."""

from __future__ import annotations

import functools
import hashlib
import json
import math
from json.encoder import encode_basestring

from moldbatch.plan.types import FileRef, StageParams, key_fields

# Bump when a change to moldbatch changes what a stage produces for the same inputs, so that
# old artifacts are not taken for new ones.
KEY_VERSION = "moldbatch-stage-4"  # 4: chain carries re-encode the decoded tail (#13), text
# encodes as stages (#12); 3: typed params, refine stages


def content_key(kind: str, params: StageParams, needs: list[str], memo: dict | None = None) -> str:
    """sha256 over the stage kind, its canonical parameters and the keys of what it needs.

    A file reference counts by its bytes only, so moving or renaming the film's folder changes
    no key. `memo` (id -> text, for objects that outlive it; the ladder passes one per shot)
    spares the encoding of parts stages share: a clip's conditions are its refine's too."""
    blob = (
        f'{{"kind":{encode_basestring(kind)},"needs":[{",".join(map(encode_basestring, needs))}],'
        f'"params":{canonical(params, memo)},"v":{encode_basestring(KEY_VERSION)}}}'
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def canonical(value, memo: dict | None = None) -> str:
    """The key text of `value`: exactly `json.dumps(key_doc(value), sort_keys=True,
    separators=(",", ":"), ensure_ascii=False)`, written without building the document (the
    planner keys every stage of a 100,000-shot film)."""
    plain = _PLAIN.get(type(value))
    if plain is not None:
        return plain(value)
    if memo is not None and id(value) in memo:
        return memo[id(value)]
    if type(value) is FileRef:
        return f'{{"sha256":{encode_basestring(value.sha256)}}}'
    # (the plain values inline: a call per field was most of a long film's keying)
    if type(value) is tuple or type(value) is list:
        parts = [
            enc(v) if (enc := _PLAIN.get(type(v))) is not None else canonical(v, memo)
            for v in value
        ]
        text = "[" + ",".join(parts) + "]"
    else:
        parts = [
            name + (enc(v) if (enc := _PLAIN.get(type(v))) is not None else canonical(v, memo))
            for field, name in _fields(type(value))
            for v in (getattr(value, field),)
        ]
        text = "{" + ",".join(parts) + "}"
    if memo is not None:
        memo[id(value)] = text
    return text


def _float(value: float) -> str:
    return float.__repr__(value) if math.isfinite(value) else json.dumps(value)


# the JSON text of a plain value, by its exact type (a bool is no int here)
_PLAIN = {
    str: encode_basestring,
    int: int.__repr__,
    bool: {True: "true", False: "false"}.__getitem__,
    float: _float,
    type(None): {None: "null"}.__getitem__,
}


@functools.cache
def _fields(kind: type) -> tuple[tuple[str, str], ...]:
    """A params class's keyed fields in key order, each with its `"name":` text."""
    return tuple((name, encode_basestring(name) + ":") for name in sorted(key_fields(kind)))
