"""Errors the runtime raises; each reads as one actionable line."""

from __future__ import annotations

from moldbatch.errors import MoldbatchError


class RuntimeLoadError(MoldbatchError):
    """A model could not be loaded (unknown name, Hub unreachable, gated repo, missing files)."""

    exit_code = 2


class RuntimeFeatureError(MoldbatchError):
    """The request asks for something this runtime or model cannot do."""

    exit_code = 2
