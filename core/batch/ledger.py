"""The job ledger: one SQLite file in the output folder (``batch.sqlite``) that says, per job, what it
read (a hash of its inputs and settings), where it is (pending / running / done / failed / crashed /
timeout / cancelled), how long it took, how many attempts, and why it failed.

Only the batch's driver writes it (the workers return their records), so SQLite's single-writer model
and a network file system never meet. A re-run skips a job that is ``done`` with the same hash and
whose files are all still there, and one that ``failed`` on the same inputs (its message stands; pass
``retry_failed`` to try again); crashed, timed-out, interrupted and changed jobs run again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

LEDGER_NAME = "batch.sqlite"
STATES = ("pending", "running", "done", "failed", "crashed", "timeout", "cancelled")
# failed: the command reported an error (a bad input: the same input fails the same way, so a re-run skips
# it unless its files changed or retry_failed is asked); crashed / timeout / cancelled: run again next time
FINAL = ("done", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,            -- the job as JSON (inputs, model, device, options, outputs)
    input_hash TEXT NOT NULL,      -- sha256 of the inputs' contents and the settings
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,   -- attempts of the last run (a killed worker's job counts twice)
    runs INTEGER NOT NULL DEFAULT 0,       -- batch runs that started this job
    queued_at REAL, started_at REAL, finished_at REAL,
    seconds REAL,                  -- the job's own wall time (its last attempt)
    host TEXT, worker_pid INTEGER,
    error TEXT NOT NULL DEFAULT '',
    log_tail TEXT NOT NULL DEFAULT '',
    files TEXT NOT NULL DEFAULT '[]',      -- JSON list of the files in the job's folder
    figures TEXT NOT NULL DEFAULT '{}',    -- JSON: vertices, frames, landmark error ... (the report's)
    updated_at REAL
);
CREATE TABLE IF NOT EXISTS file_hashes (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL, finished_at REAL, address TEXT,
    submitted INTEGER, done INTEGER, failed INTEGER, skipped INTEGER, interrupted INTEGER
);
"""


class Ledger:
    def __init__(self, path):
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30)
        self.db.row_factory = sqlite3.Row
        with self.db:
            self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- hashing -------------------------------------------------------------------------------
    def file_hash(self, path: str) -> str:
        """sha256 of a file's bytes, remembered by (size, mtime): a studio's clips are hashed once."""
        st = os.stat(path)
        row = self.db.execute("SELECT size, mtime_ns, sha256 FROM file_hashes WHERE path = ?", (path,)).fetchone()
        if row and row["size"] == st.st_size and row["mtime_ns"] == st.st_mtime_ns:
            return row["sha256"]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?)",
                            (path, st.st_size, st.st_mtime_ns, digest))
        return digest

    def input_hash(self, spec: dict) -> str:
        """The job's identity: its settings and the bytes of every file it reads (a folder: its files)."""
        h = hashlib.sha256(json.dumps({k: v for k, v in spec.items() if k != "name"}, sort_keys=True).encode())
        files = []
        for p in spec["inputs"] + ([spec["model"]] if os.path.isfile(spec["model"]) else []) \
                + [v for v in spec["options"].values() if isinstance(v, str) and os.path.isfile(v)]:
            if os.path.isdir(p):
                files += sorted(os.path.join(p, f) for f in os.listdir(p)
                                if not f.startswith(".") and os.path.isfile(os.path.join(p, f)))
            else:
                files.append(p)
        for f in files:
            h.update(f"\0{os.path.basename(f)}\0{self.file_hash(f)}".encode())
        return h.hexdigest()

    # -- jobs ----------------------------------------------------------------------------------
    def get(self, name: str):
        return self.db.execute("SELECT * FROM jobs WHERE name = ?", (name,)).fetchone()

    def rows(self) -> list:
        return [dict(r) for r in self.db.execute("SELECT * FROM jobs ORDER BY name")]

    def settled(self, name: str, input_hash: str, job_dir: str, retry_failed: bool = False) -> str:
        """'done' or 'failed' when a re-run has nothing to do for this job, else ''."""
        row = self.get(name)
        if row is None or row["input_hash"] != input_hash:
            return ""
        if row["state"] == "failed" and not retry_failed:
            return "failed"
        if row["state"] == "done" and all(os.path.isfile(os.path.join(job_dir, f)) for f in json.loads(row["files"])):
            return "done"
        return ""

    def queue(self, name: str, kind: str, spec: dict, input_hash: str) -> None:
        now = time.time()
        with self.db:
            self.db.execute(
                "INSERT INTO jobs (name, kind, spec, input_hash, state, attempts, runs, queued_at, updated_at) "
                "VALUES (?, ?, ?, ?, 'pending', 0, 0, ?, ?) ON CONFLICT(name) DO UPDATE SET kind = excluded.kind, "
                "spec = excluded.spec, input_hash = excluded.input_hash, state = 'pending', attempts = 0, "
                "queued_at = excluded.queued_at, started_at = NULL, finished_at = NULL, error = '', "
                "updated_at = excluded.updated_at",
                (name, kind, json.dumps(spec, sort_keys=True), input_hash, now, now))

    def started(self, name: str) -> None:
        now = time.time()
        with self.db:
            self.db.execute("UPDATE jobs SET state = 'running', started_at = ?, runs = runs + 1, updated_at = ? "
                            "WHERE name = ?", (now, now, name))

    def finished(self, name: str, state: str, *, error: str = "", seconds=None, attempts=None, host=None,
                 worker_pid=None, files=None, figures=None, log_tail: str = "", started_at=None) -> None:
        assert state in STATES, state
        now = time.time()
        with self.db:
            self.db.execute(
                "UPDATE jobs SET state = ?, error = ?, seconds = COALESCE(?, seconds), "
                "attempts = COALESCE(?, attempts), host = COALESCE(?, host), worker_pid = COALESCE(?, worker_pid), "
                "files = COALESCE(?, files), figures = COALESCE(?, figures), log_tail = ?, "
                "started_at = COALESCE(?, started_at), finished_at = ?, updated_at = ? WHERE name = ?",
                (state, error, seconds, attempts, host, worker_pid,
                 None if files is None else json.dumps(files), None if figures is None else json.dumps(figures),
                 log_tail, started_at, now, now, name))

    def counts(self) -> dict:
        out = {s: 0 for s in STATES}
        for row in self.db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            out[row["state"]] = row["n"]
        return out

    # -- runs ----------------------------------------------------------------------------------
    def start_run(self, address: str) -> int:
        with self.db:
            cur = self.db.execute("INSERT INTO runs (started_at, address) VALUES (?, ?)", (time.time(), address))
        return int(cur.lastrowid)

    def end_run(self, run_id: int, submitted: int, done: int, failed: int, skipped: int, interrupted: bool) -> None:
        with self.db:
            self.db.execute("UPDATE runs SET finished_at = ?, submitted = ?, done = ?, failed = ?, skipped = ?, "
                            "interrupted = ? WHERE id = ?",
                            (time.time(), submitted, done, failed, skipped, int(interrupted), run_id))


def read_progress(out_dir) -> dict:
    """Counts by state from a (possibly running) batch's ledger, read-only: what the Blender panel shows."""
    path = Path(out_dir) / LEDGER_NAME
    if not path.is_file():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
    try:
        rows = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
    except sqlite3.Error:
        return {}
    finally:
        db.close()
    return {state: n for state, n in rows}
