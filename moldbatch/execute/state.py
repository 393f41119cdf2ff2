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


class StateDB:
    def __init__(self, workdir: Path, readonly: bool = False):
        self.path = workdir / "state.sqlite"
        if readonly:  # `status` only reads: it must work on a folder it cannot write
            self.db = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                timeout=10,
            )
            return
        workdir.mkdir(parents=True, exist_ok=True)
        # one connection for the render, used from its CPU lane's threads too (the session
        # serialises every call under its lock)
        self.db = sqlite3.connect(
            self.path, isolation_level=None, timeout=10, check_same_thread=False
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(deliveries)")}
        if "spec" not in columns:  # a work folder from before outputs knew their spec
            self.db.execute("ALTER TABLE deliveries ADD COLUMN spec TEXT")

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
