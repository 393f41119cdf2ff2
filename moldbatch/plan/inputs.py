"""The files a spec names, as the planner sees them: resolved once against the spec's folder,
confined to the spec's project, checked (present, readable, an image by its magic bytes, media
by a probe) and digested once per plan however many stages use them. Reads only; inline files
(a mold script's base64 images) are served from memory and written by the executor, never here.

Confinement: every path a spec names (inputs, the film's output, the folders it writes into)
resolves, symlinks followed, inside the spec's project root (the git work tree holding the
spec, else its folder) or a folder the user allowed (`--allow-path DIR`, or $MOLDBATCH_ALLOW_PATHS,
os.pathsep-separated). A path outside is refused before anything looks at it, so the message
says nothing about whether the file exists."""

from __future__ import annotations

import os
from pathlib import Path

from moldbatch.fsio import sha256_bytes, sha256_file

IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}


class InputError(Exception):
    """A named file cannot be used; the planner reports the message at the field's position."""


ALLOW_ENV = "MOLDBATCH_ALLOW_PATHS"


def project_root(folder: Path) -> Path:
    """The git work tree holding `folder` (a `.git` folder or file above it), else `folder`."""
    folder = folder.resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / ".git").exists():
            return candidate
    return folder


def allowed_paths(given=()) -> tuple[Path, ...]:
    """The folders the user let specs reach besides their project: given on the command line,
    and in $MOLDBATCH_ALLOW_PATHS."""
    env = [p for p in os.environ.get(ALLOW_ENV, "").split(os.pathsep) if p]
    return tuple(dict.fromkeys(Path(p).expanduser().resolve() for p in (*given, *env)))


def inside(path: Path, folders) -> bool:
    return any(path == f or path.is_relative_to(f) for f in folders)


class Inputs:
    def __init__(
        self,
        root: Path,
        inline: dict[str, bytes] | None = None,
        *,
        project: Path | None = None,
        allow: tuple[Path, ...] = (),
    ):
        self.root = root  # the spec's folder: relative paths start here
        self.project = project or project_root(root)
        self.allowed = (self.project, *allow)  # where the spec's paths may lead
        self.inline = dict(inline or {})  # absolute path -> bytes
        self._paths: dict[str, Path] = {}
        self._readable: dict[Path, str | None] = {}  # path -> None when fine, else why not
        self._heads: dict[Path, bytes] = {}
        self._digests: dict[Path, str] = {}
        self._probes: dict[Path | str, object] = {}  # an outside path by its value

    def resolve(self, value: str) -> Path:
        """The path `value` names, symlinks followed; InputError when it leads outside the
        project and the allowed folders (said without looking at whether it exists)."""
        if value not in self._paths:
            self._paths[value] = (self.root / value).resolve()
        path = self._paths[value]
        if str(path) not in self.inline and not inside(path, self.allowed):
            raise InputError(self.outside(value))
        return path

    def outside(self, value: str, what: str = "") -> str:
        return (
            f"{what or repr(value)} is outside the spec's project (the git work tree holding "
            "the spec, else its folder): a spec may only name paths inside it; to let it reach "
            f"a folder, pass --allow-path DIR (or set {ALLOW_ENV})"
        )

    def file(self, value: str) -> Path:
        """The readable file `value` names, or InputError."""
        path = self.resolve(value)
        if path not in self._readable:
            self._readable[path] = self._why_unreadable(path, value)
        if self._readable[path] is not None:
            raise InputError(self._readable[path])
        return path

    def image(self, value: str) -> Path:
        """A readable PNG or JPEG file, told by its first bytes."""
        path = self.file(value)
        if path not in self._heads:
            try:
                self._heads[path] = self.read(path)[:8] if str(path) in self.inline else _head(path)
            except OSError as e:
                raise InputError(f"cannot read '{value}': {e.strerror or e}") from None
        if not any(self._heads[path].startswith(m) for m in IMAGE_MAGIC):
            raise InputError(f"'{value}' is not a PNG or JPEG image")
        return path

    def read(self, path: Path) -> bytes:
        return self.inline[str(path)] if str(path) in self.inline else path.read_bytes()

    def digest(self, path: Path) -> str:
        if path not in self._digests:
            data = self.inline.get(str(path))
            self._digests[path] = sha256_bytes(data) if data is not None else sha256_file(path)
        return self._digests[path]

    def probe(self, value: str):
        """(media info or None, a problem to report or None, "error" | "warning"). A problem is
        returned the first time only: it is reported once, however often the file is used."""
        try:
            path = self.resolve(value)
        except InputError as e:
            if value in self._probes:
                return None, None, None
            self._probes[value] = None
            return None, str(e), "error"
        if path in self._probes:
            return self._probes[path], None, None
        info, problem, severity = None, None, None
        if path.is_file():
            try:
                from moldbatch.media.probe import probe
            except ImportError:
                problem, severity = (
                    "cannot read media files without PyAV: install "
                    "moldbatch[gpu] to check this source's length",
                    "warning",
                )
            else:
                try:
                    info = probe(path)
                except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
                    problem, severity = f"cannot read '{value}' as video: {e}", "error"
        self._probes[path] = info
        return info, problem, severity

    def _why_unreadable(self, path: Path, value: str) -> str | None:
        if str(path) in self.inline:
            return None
        if path.is_file():
            return None if os.access(path, os.R_OK) else f"cannot read '{value}': permission denied"
        hint = (
            "" if Path(value).is_absolute() else " (paths are relative to the spec file's folder)"
        )
        return f"file '{value}' not found{hint}"


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(8)
