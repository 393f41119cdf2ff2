"""moldbatch's GPU runtime: LTX-2 models through diffusers, one clip at a time.

Importing this package is cheap: torch and diffusers load only when `Runtime` (or another
torch-backed name) is first touched, so the planner and CLI can import it freely.

    from moldbatch.runtime import Runtime, carry_from
    rt = Runtime.load("ltx-2-tiny:random")
    result = rt.render_clip(request)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from moldbatch.errors import RuntimeFeatureError, RuntimeLoadError
from moldbatch.runtime.requests import Carry, ClipRequest, ClipResult, Lora

if TYPE_CHECKING:
    from moldbatch.runtime.carry import carry_from
    from moldbatch.runtime.ltx2 import Runtime

# name -> module that defines it; loaded on first attribute access.
_LAZY = {
    "Runtime": "moldbatch.runtime.ltx2",
    "carry_from": "moldbatch.runtime.carry",
}

__all__ = [
    "Carry",
    "ClipRequest",
    "ClipResult",
    "Lora",
    "Runtime",
    "RuntimeFeatureError",
    "RuntimeLoadError",
    "carry_from",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
