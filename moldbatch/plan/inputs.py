"""The files a spec names, as the planner sees them: resolved once against the spec's folder,
confined to the spec's project, checked (present, readable, an image by its magic bytes, media
by a probe) and digested once per plan however many stages use them. Reads only; inline files
(a mold script's base64 images) are served from memory and written by the executor, never here.

Confinement: every path a spec names (inputs, the film's output, the folders it writes into)
resolves, symlinks followed, inside the spec's project root (the git work tree holding the
spec, else its folder) or a folder the user allowed (`--allow-path DIR`, or $MOLDBATCH_ALLOW_PATHS,
os.pathsep-separated). A path outside is refused before anything looks at it, so the message
says nothing about whether the file exists.

Files are read through one pluggable reader: the working tree by default, or a git revision
(`GitReader`, for `moldbatch diff REV:film.yaml`), so that a side of a diff sees the assets
of its own revision."""

from __future__ import annotations

import os
import struct
import subprocess
import zlib
from pathlib import Path

from moldbatch.fsio import sha256_bytes, sha256_file

IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}


class InputError(Exception):
    """A named file cannot be used; the planner reports the message at the field's position.
    `code` is "missing-file" for a file that is not there (its own exit code)."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


class GitReader:
    """Files as they are at a git revision: `Inputs(root, reader=GitReader(rev, top))` plans a
    spec of that revision with that revision's assets, not the working tree's."""

    def __init__(self, rev: str, top: Path):
        self.rev, self.top = rev, top.resolve()
        self._blobs: dict[Path, bytes | None] = {}

    def _blob(self, path: Path) -> bytes | None:
        if path not in self._blobs:
            try:
                rel = path.resolve().relative_to(self.top).as_posix()
            except ValueError:  # outside the repository: the same file on both sides
                self._blobs[path] = path.read_bytes() if path.is_file() else None
            else:
                res = subprocess.run(
                    ["git", "cat-file", "blob", f"{self.rev}:{rel}"],
                    cwd=self.top,
                    capture_output=True,
                )
                self._blobs[path] = res.stdout if res.returncode == 0 else None
        return self._blobs[path]

    def is_file(self, path: Path) -> bool:
        return self._blob(path) is not None

    def read_bytes(self, path: Path) -> bytes:
        data = self._blob(path)
        if data is None:
            raise FileNotFoundError(2, "not in the revision", str(path))
        return data


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
        reader: GitReader | None = None,
        *,
        project: Path | None = None,
        allow: tuple[Path, ...] = (),
    ):
        self.root = root  # the spec's folder: relative paths start here
        self.project = project or project_root(root)
        self.allowed = (self.project, *allow)  # where the spec's paths may lead
        self.inline = dict(inline or {})  # absolute path -> bytes
        self.reader = reader  # None: the working tree
        self._paths: dict[str, tuple[Path, bool]] = {}  # value -> (path, inside the allowed)
        self._readable: dict[Path, str | None] = {}  # path -> None when fine, else why not
        self._heads: dict[Path, bytes] = {}
        self._broken: dict[Path, str] = {}  # an image that cannot be decoded -> why
        self._digests: dict[Path, str] = {}
        self._probes: dict[Path | str, object] = {}  # an outside path by its value

    def resolve(self, value: str) -> Path:
        """The path `value` names, symlinks followed; InputError when it leads outside the
        project and the allowed folders (said without looking at whether it exists)."""
        if value not in self._paths:
            path = (self.root / value).resolve()
            self._paths[value] = path, str(path) in self.inline or inside(path, self.allowed)
        path, allowed = self._paths[value]
        if not allowed:
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
            why = self._readable[path]
            raise InputError(why, "missing-file" if " not found" in why else "")
        return path

    def image(self, value: str) -> Path:
        """A readable PNG or JPEG file, told by its first bytes."""
        path = self.file(value)
        if path not in self._heads:
            try:
                data = self.read(path)
            except OSError as e:
                raise InputError(f"cannot read '{value}': {e.strerror or e}") from None
            self._heads[path] = data[:8]
            if any(data.startswith(m) for m in IMAGE_MAGIC):
                broken = image_problem(data)
                if broken:
                    self._broken[path] = broken
        if path in self._broken:
            raise InputError(f"'{value}' cannot be decoded: {self._broken[path]}")
        if not any(self._heads[path].startswith(m) for m in IMAGE_MAGIC):
            raise InputError(f"'{value}' is not a PNG or JPEG image")
        return path

    def read(self, path: Path) -> bytes:
        if str(path) in self.inline:
            return self.inline[str(path)]
        return self.reader.read_bytes(path) if self.reader else path.read_bytes()

    def digest(self, path: Path) -> str:
        if path not in self._digests:
            data = self.inline.get(str(path))
            if data is None and self.reader is not None:
                data = self.reader.read_bytes(path)
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
        present = self.reader.is_file(path) if self.reader is not None else path.is_file()
        if present:
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
                    info = self._probe_with(probe, path)
                except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
                    problem, severity = f"cannot read '{value}' as video: {e}", "error"
        self._probes[path] = info
        return info, problem, severity

    def _probe_with(self, probe, path: Path):
        """Probe the file; a revision's copy is probed from a temporary file."""
        if self.reader is None:
            return probe(path)
        import tempfile

        with tempfile.TemporaryDirectory(prefix="moldbatch-rev-") as tmp:
            copy = Path(tmp) / path.name
            copy.write_bytes(self.reader.read_bytes(path))
            return probe(copy)

    def _why_unreadable(self, path: Path, value: str) -> str | None:
        if str(path) in self.inline:
            return None
        if self.reader is not None:
            if self.reader.is_file(path):
                return None
        elif path.is_file():
            return None if os.access(path, os.R_OK) else f"cannot read '{value}': permission denied"
        hint = (
            "" if Path(value).is_absolute() else " (paths are relative to the spec file's folder)"
        )
        return f"file '{value}' not found{hint}"


def image_problem(data: bytes) -> str | None:
    """Why a PNG or JPEG file cannot be decoded (truncated, corrupt), or None; the standard
    library only (a light install has no Pillow): a PNG's chunks, their CRCs and its pixel
    data's length; a JPEG's markers up to its end."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_problem(data)
    return _jpeg_problem(data)


def _png_problem(data: bytes) -> str | None:
    pos, idat, ihdr = 8, [], None
    while True:
        if pos + 8 > len(data):
            return "the PNG is truncated (no IEND chunk)"
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) < length or len(crc) < 4:
            return f"the PNG is truncated inside its {kind.decode(errors='replace')} chunk"
        if zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            return f"the PNG's {kind.decode(errors='replace')} chunk is corrupt (CRC)"
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if ihdr is None or not idat:
        return "the PNG has no image data"
    try:
        pixels = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        return f"the PNG's image data is corrupt ({e})"
    width, height, depth, colour, _, _, interlace = ihdr
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 1)
    if interlace == 0 and len(pixels) < height * (1 + (width * channels * depth + 7) // 8):
        return "the PNG's image data is short"
    return None


def _jpeg_problem(data: bytes) -> str | None:
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "the JPEG is truncated (no end-of-image marker)"
    return None
