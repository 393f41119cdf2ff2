"""Media layer: stitch clips and shots (numpy), encode mp4/gif/apng/webp and probe files (PyAV).

Names are loaded on first use, so importing this package needs neither numpy nor PyAV.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "stitch_frames": "stitch",
    "stitch_audio": "stitch",
    "join": "stitch",
    "fit_audio": "stitch",
    "write_video": "encode",
    "resample_audio": "encode",
    "probe": "probe",
    "read_video": "probe",
    "read_audio": "probe",
    "MediaInfo": "probe",
    "fps_fraction": "timing",
    "samples_for_frames": "timing",
}

__all__ = [
    "MediaInfo",
    "fit_audio",
    "fps_fraction",
    "join",
    "probe",
    "read_audio",
    "read_video",
    "resample_audio",
    "samples_for_frames",
    "stitch_audio",
    "stitch_frames",
    "write_video",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
