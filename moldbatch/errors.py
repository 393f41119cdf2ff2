"""Diagnostics and the one exception hierarchy: every error moldbatch reports derives from
MoldbatchError and carries its exit code, which the CLI maps once (see cli.py's table)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

# characters a terminal or a CI log acts on rather than shows: C0 and C1 controls (newlines,
# escape sequences), DEL, and the bidirectional overrides that reorder what is shown
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text) -> str:
    """User text made safe to print: each control character as its escape (`\\n`, `\\x1b`),
    so that a spec cannot start a line of a CI log (`::error ...`) or drive a terminal."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), str(text))


@dataclass(frozen=True)
class Diagnostic:
    """One finding about a spec: where it is, which field, what is wrong and what would be right."""

    file: str
    line: int
    column: int
    path: str  # e.g. "shots[2].frames"; "" for the document itself
    message: str
    severity: str = "error"  # "error" | "warning"
    # what kind of error, where its exit code is not "invalid spec" (1): "missing-file" (6),
    # "output-taken" (5); "" for the rest
    code: str = ""

    def __post_init__(self) -> None:
        # one finding, one line: messages from parsers may span several; the values they
        # quote from the spec are printed with their control characters escaped
        object.__setattr__(self, "message", printable(" ".join(self.message.split())))
        object.__setattr__(self, "path", printable(self.path))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        kind = "" if self.severity == "error" else "warning: "
        field = f"{self.path}: " if self.path else ""
        return f"{where}: {kind}{field}{self.message}"

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("file")
        return {"file": self.file, **out}


# a Diagnostic's code -> the exit code of a spec whose every error is of that kind
DIAGNOSTIC_EXIT = {"missing-file": 6, "output-taken": 5}


class MoldbatchError(Exception):
    """Base of every error moldbatch reports as one line (never a traceback)."""

    exit_code = 1
    reason = "error"  # the `reason` of `render --json`


class UsageError(MoldbatchError):
    """The command was called wrongly: an unknown name, a missing choice (exit 2)."""

    exit_code = 2
    reason = "usage"


class OverBudget(MoldbatchError):
    """The estimated GPU time of what would render is above --max-gpu-minutes (exit 4)."""

    exit_code = 4
    reason = "over-budget"


class RuntimeLoadError(MoldbatchError):
    """A model could not be loaded (unknown name, Hub unreachable, gated repo, missing files)."""

    exit_code = 2


class RuntimeFeatureError(MoldbatchError):
    """The request asks for something this runtime or model cannot do."""

    exit_code = 2


class SpecInvalid(MoldbatchError):
    """The spec has errors; `diagnostics` holds them all, not just the first (exit 1; see
    `of` for the two kinds that have codes of their own)."""

    reason = "invalid-spec"

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))

    @staticmethod
    def of(diagnostics: list[Diagnostic]) -> SpecInvalid:
        """The error for these findings: InputsMissing (exit 6) when every error is a file
        that is not there, OutputCollision (exit 5) when every one is an output another spec
        writes, else SpecInvalid (exit 1)."""
        errors = [d for d in diagnostics if d.severity == "error"]
        codes = {d.code for d in errors}
        if len(codes) == 1:
            cls = {"missing-file": InputsMissing, "output-taken": OutputCollision}.get(
                codes.pop(), SpecInvalid
            )
            return cls(diagnostics)
        return SpecInvalid(diagnostics)


class InputsMissing(SpecInvalid):
    """The spec file, or a file it names, is not there (exit 6: a checkout without its LFS
    files, a path typed wrong)."""

    exit_code = 6
    reason = "missing-file"


class OutputCollision(SpecInvalid):
    """Another spec in the same folder writes one of this spec's output files (exit 5)."""

    exit_code = 5
    reason = "output-collision"


class StageFailed(MoldbatchError):
    exit_code = 3
    reason = "stage-failed"

    def __init__(self, message: str, summary=None):
        super().__init__(message)
        self.summary = summary  # what was done and kept, for --json


class WorkdirLocked(MoldbatchError):
    exit_code = 3
    reason = "workdir-locked"


class Interrupted(MoldbatchError):
    """Ctrl-C or SIGTERM during a render: the stages done are kept (exit 130: run the same
    command again to resume)."""

    exit_code = 130
    reason = "interrupted"

    def __init__(self, message: str, summary=None):
        super().__init__(message)
        self.summary = summary


class WorkdirFailed(MoldbatchError):
    """The work folder failed under a render: full, deleted, unwritable (exit 3)."""

    exit_code = 3


class OutputTaken(MoldbatchError):
    """An output path holds what another spec's render wrote (exit 5: another shot id, or
    --out)."""

    exit_code = 5
    reason = "output-collision"


class RuntimeMissing(MoldbatchError):
    """The GPU runtime (torch, numpy, PyAV) is not installed: `pip install moldbatch[gpu]`
    (exit 3)."""

    exit_code = 3
    reason = "runtime-missing"


def one_line(e: BaseException) -> str:
    """An exception as one line: moldbatch's own as they are, others with their type."""
    text = str(e).strip().splitlines()
    msg = text[0] if text else ""
    return msg if isinstance(e, MoldbatchError) else f"{type(e).__name__}: {msg}"


def format_seconds(seconds: float) -> str:
    """0.4 s, 12 s, 3.2 min, 1.5 h."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def display_path(path: Path) -> str:
    """A path as the user would type it: relative to the working folder when it is below it."""
    try:
        shown = str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        shown = str(path)
    return printable(shown)
