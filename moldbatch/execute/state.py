"""The state database (SQLite): runs, and each stage's status, timing and error per run."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    spec TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL,          -- running | done | failed | interrupted
    pid INTEGER
);
CREATE TABLE IF NOT EXISTS deliveries (  -- output files moldbatch wrote, to tell them apart
    path TEXT PRIMARY KEY,                  -- from files a user put there
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    spec TEXT                               -- the spec whose render wrote it
);
CREATE TABLE IF NOT EXISTS stages (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    stage TEXT NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,          -- pending | running | rendered | cached | failed | skipped
    started REAL,
    seconds REAL,
    error TEXT,
    PRIMARY KEY (run_id, stage)
);
"""


SIDE_FILES = ("-wal", "-shm", "-journal")


class Damaged(sqlite3.DatabaseError):
    """What `check` found wrong with a database that opened."""


def is_corrupt(e: sqlite3.Error) -> bool:
    """Whether SQLite says the file is damaged or not a database (not: full, locked, gone)."""
    code = getattr(e, "sqlite_errorcode", None) or 0
    return isinstance(e, Damaged) or (code & 0xFF) in (
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_NOTADB,
    )


class StateDB:
    """The state database of a work folder. It records history only: what is rendered is the
    artifact store's, so a damaged database is moved aside (`state.sqlite.corrupt-<time>`)
    and started again, and the render that follows records what the store holds.
    `warn(line)` is told when that happens."""

    def __init__(self, workdir: Path, readonly: bool = False, warn=None):
        self.path = workdir / "state.sqlite"
        if readonly:  # `status` only reads: it must work on a folder it cannot write
            self.db = self._open_readonly()
            return
        workdir.mkdir(parents=True, exist_ok=True)
        for suffix in ("", *SIDE_FILES):  # a link would be written through: drop the link
            side = self.path.with_name(self.path.name + suffix)
            if side.is_symlink():
                side.unlink()
        try:
            self.db = self._open()
        except sqlite3.DatabaseError as e:
            if not is_corrupt(e):
                raise
            aside = self.move_aside()
            if warn is not None:
                warn(
                    f"the state database {self.path} was damaged ({e}); moved it aside as "
                    f"{aside.name} and started a new one: the artifacts are intact and the "
                    "render resumes from them"
                )
            self.db = self._open()

    def _open(self) -> sqlite3.Connection:
        # one connection for the render, used from its CPU lane's threads too (the session
        # serialises every call under its lock)
        db = sqlite3.connect(self.path, isolation_level=None, timeout=10, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(deliveries)")}
            if "spec" not in columns:  # a work folder from before outputs knew their spec
                db.execute("ALTER TABLE deliveries ADD COLUMN spec TEXT")
            check(db)
        except BaseException:
            db.close()
            raise
        return db

    def _open_readonly(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri()
        try:
            db = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None, timeout=10)
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            # a WAL database in a folder this process cannot write (no -shm to create):
            # read it as an unchanging file
            db = sqlite3.connect(
                f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None, timeout=10
            )
            return db

    def move_aside(self) -> Path:
        """The damaged database (and its side files) renamed to `.corrupt-<time>`."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        os.replace(self.path, aside)
        for suffix in SIDE_FILES:
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                os.replace(side, aside.with_name(aside.name + suffix))
        return aside

    def close(self) -> None:
        self.db.close()

    def start_run(self, spec: str, stages) -> int:
        with self.db:
            # a run that never finished was killed: say so instead of leaving it "running"
            self.db.execute("UPDATE runs SET status='interrupted' WHERE status='running'")
            self.db.execute("UPDATE stages SET status='interrupted' WHERE status='running'")
            cur = self.db.execute(
                "INSERT INTO runs (spec, started, status, pid) VALUES (?, ?, 'running', ?)",
                (spec, time.time(), os.getpid()),
            )
            run_id = cur.lastrowid
            self.db.executemany(
                "INSERT INTO stages (run_id, stage, key, kind, status) "
                "VALUES (?, ?, ?, ?, 'pending')",
                [(run_id, s.id, s.key, s.kind) for s in stages],
            )
        return run_id

    def set_stage(
        self,
        run_id: int,
        stage: str,
        status: str,
        *,
        seconds: float | None = None,
        error: str | None = None,
    ) -> None:
        started = time.time() if status == "running" else None
        self.db.execute(
            "UPDATE stages SET status=?, started=COALESCE(?, started), seconds=?, error=? "
            "WHERE run_id=? AND stage=?",
            (status, started, seconds, error, run_id, stage),
        )

    def delivered(self, path: Path) -> tuple[str, int, int] | None:
        """(sha256, bytes, mtime_ns) of the file moldbatch last wrote at `path`, if any."""
        return self.db.execute(
            "SELECT sha256, bytes, mtime_ns FROM deliveries WHERE path=?", (str(path),)
        ).fetchone()

    def record_delivery(self, path: Path, sha256: str, spec: str | None = None) -> None:
        st = path.stat()
        self.db.execute(
            "INSERT OR REPLACE INTO deliveries (path, sha256, bytes, mtime_ns, spec) "
            "VALUES (?,?,?,?,?)",
            (str(path), sha256, st.st_size, st.st_mtime_ns, spec),
        )

    def delivered_for(self, path: Path) -> str | None:
        """The spec whose render last wrote `path` (None: unknown, or never written)."""
        row = self.db.execute("SELECT spec FROM deliveries WHERE path=?", (str(path),)).fetchone()
        return row[0] if row else None

    def interrupt_run(self, run_id: int) -> None:
        with self.db:
            self.db.execute(
                "UPDATE stages SET status='interrupted' WHERE run_id=? AND status='running'",
                (run_id,),
            )
            self.finish_run(run_id, "interrupted")

    def finish_run(self, run_id: int, status: str) -> None:
        self.db.execute(
            "UPDATE runs SET status=?, finished=? WHERE id=?", (status, time.time(), run_id)
        )

    def specs(self) -> list[str]:
        """Every spec that has rendered into this work folder."""
        return [row[0] for row in self.db.execute("SELECT DISTINCT spec FROM runs")]

    def last_run(self, spec: str) -> dict | None:
        check(self.db)
        row = self.db.execute(
            "SELECT id, started, finished, status, pid FROM runs WHERE spec=? "
            "ORDER BY id DESC LIMIT 1",
            (spec,),
        ).fetchone()
        if row is None:
            return None
        stages = self.db.execute(
            "SELECT stage, kind, key, status, seconds, error FROM stages WHERE run_id=? "
            "ORDER BY rowid",
            (row[0],),
        ).fetchall()
        return {
            "run": row[0],
            "started": row[1],
            "finished": row[2],
            "status": row[3],
            "pid": row[4],
            "stages": [
                dict(zip(("id", "kind", "key", "status", "seconds", "error"), s, strict=True))
                for s in stages
            ],
        }


def check(db: sqlite3.Connection) -> None:
    """Read every table once: SQLite tells a damaged file (DatabaseError) only when it reads
    the damaged pages."""
    row = db.execute("PRAGMA quick_check").fetchone()
    if row is None or row[0] != "ok":
        raise Damaged(f"database disk image is malformed ({row[0] if row else '?'})")
    for table in ("runs", "stages", "deliveries"):
        db.execute(f"SELECT count(*) FROM {table}").fetchone()
