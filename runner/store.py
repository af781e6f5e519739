"""The run ledger: SQLite (WAL) in the project's ``.runner/`` plus one directory per run.

The database indexes runs (state, target, model, sweep, final metrics, how to reattach);
each run's directory (:mod:`runner.rundir`) holds everything else. Every write is one short
transaction with a busy timeout, so many processes (a sweep's jobs, a second shell) can
record runs at once.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.backend import RunState
from runner.errors import UserError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id        TEXT PRIMARY KEY,
    created   REAL NOT NULL,
    updated   REAL NOT NULL,
    state     TEXT NOT NULL,
    exit_code INTEGER,
    oom       INTEGER NOT NULL DEFAULT 0,
    message   TEXT NOT NULL DEFAULT '',
    target    TEXT NOT NULL,
    backend   TEXT NOT NULL,
    model     TEXT NOT NULL,
    env_key   TEXT,
    sweep_id  TEXT,
    job_key   TEXT,
    locator   TEXT,
    summary   TEXT NOT NULL DEFAULT '{}',
    finished  REAL
);
CREATE INDEX IF NOT EXISTS runs_state ON runs(state);
CREATE INDEX IF NOT EXISTS runs_sweep ON runs(sweep_id);
CREATE INDEX IF NOT EXISTS runs_job_key ON runs(job_key);
CREATE TABLE IF NOT EXISTS sweeps (
    id       TEXT PRIMARY KEY,
    created  REAL NOT NULL,
    target   TEXT NOT NULL,
    info     TEXT NOT NULL DEFAULT '{}'
);
"""


@dataclass(frozen=True)
class RunRecord:
    """One row of the ledger."""

    id: str
    created: float
    updated: float
    state: RunState
    exit_code: int | None
    oom: bool
    message: str
    target: str
    backend: str
    model: str
    env_key: str | None
    sweep_id: str | None
    job_key: str | None
    locator: dict[str, Any] | None
    summary: dict[str, float]
    finished: float | None
    run_dir: Path

    @classmethod
    def _from_row(cls, row: sqlite3.Row, runs_dir: Path) -> RunRecord:
        return cls(
            id=row["id"], created=row["created"], updated=row["updated"],
            state=RunState(row["state"]), exit_code=row["exit_code"], oom=bool(row["oom"]),
            message=row["message"], target=row["target"], backend=row["backend"],
            model=row["model"], env_key=row["env_key"], sweep_id=row["sweep_id"],
            job_key=row["job_key"],
            locator=json.loads(row["locator"]) if row["locator"] else None,
            summary=json.loads(row["summary"] or "{}"), finished=row["finished"],
            run_dir=runs_dir / row["id"],
        )


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` holding ``.runner/`` or ``.git``; else ``start``."""
    start = (start or Path.cwd()).resolve()
    for p in (start, *start.parents):
        if (p / ".runner").is_dir() or (p / ".git").exists():
            return p
    return start


def new_run_id() -> str:
    """Sortable by time, unique across processes: ``YYMMDD-HHMMSS-xxxx``."""
    return time.strftime("%y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


class Store:
    """The ledger of one project."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.runs_dir = self.home / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        ignore = self.home / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")  # the ledger never ends up in the user's commits
        self.db_path = self.home / "runs.db"
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: readers never block the writer
            db.executescript(_SCHEMA)

    @classmethod
    def for_project(cls, root: Path) -> Store:
        return cls(Path(os.environ.get("RUNNER_HOME") or root / ".runner"))

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA busy_timeout=30000")
            # WAL with synchronous=NORMAL: a crash of any process loses nothing committed; only
            # a power cut may drop the last transactions (and never corrupts the database)
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        finally:
            db.close()

    # -- writes ---------------------------------------------------------------
    def create_run(
        self, *, target: str, backend: str, model: str, sweep_id: str | None = None,
        job_key: str | None = None,
    ) -> RunRecord:
        now = time.time()
        for _ in range(5):
            run_id = new_run_id()
            try:
                with self._connect() as db:
                    db.execute(
                        "INSERT INTO runs (id, created, updated, state, target, backend, model,"
                        " sweep_id, job_key) VALUES (?,?,?,?,?,?,?,?,?)",
                        (run_id, now, now, RunState.QUEUED.value, target, backend, model,
                         sweep_id, job_key),
                    )
                break
            except sqlite3.IntegrityError:
                continue
        (self.runs_dir / run_id).mkdir(parents=True, exist_ok=True)
        return self.get(run_id)

    def update(self, run_id: str, *, only_if_active: bool = False, **fields: Any) -> bool:
        """Set columns of one run; return whether the row changed. A terminal state is never
        overwritten by another state; ``only_if_active`` changes nothing once the run ended
        (so exactly one of several concurrent observers records the end)."""
        if not fields:
            return False
        for k in ("locator", "summary"):
            if k in fields and not isinstance(fields[k], str):
                fields[k] = json.dumps(fields[k])
        if isinstance(fields.get("state"), RunState):
            fields["state"] = fields["state"].value
        fields["updated"] = time.time()
        cols = ", ".join(f"{k}=?" for k in fields)
        guard = ""
        if "state" in fields:
            terminal = ",".join(f"'{s.value}'" for s in RunState if s.terminal)
            guard = f" AND (state NOT IN ({terminal}) OR state = ?)"
        params = list(fields.values()) + [run_id] + ([fields["state"]] if guard else [])
        if only_if_active:
            terminal = ",".join(f"'{s.value}'" for s in RunState if s.terminal)
            guard += f" AND state NOT IN ({terminal})"
        with self._connect() as db:
            return db.execute(f"UPDATE runs SET {cols} WHERE id=?{guard}", params).rowcount > 0

    def create_sweep(self, target: str, info: Mapping[str, Any]) -> str:
        sweep_id = "s" + new_run_id()
        with self._connect() as db:
            db.execute("INSERT INTO sweeps (id, created, target, info) VALUES (?,?,?,?)",
                       (sweep_id, time.time(), target, json.dumps(dict(info))))
        return sweep_id

    # -- reads ----------------------------------------------------------------
    def get(self, run_id: str) -> RunRecord:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(run_id)
        return RunRecord._from_row(row, self.runs_dir)

    def resolve(self, ref: str) -> RunRecord:
        """A run by full id, unique prefix or suffix, or ``last``; a clear error otherwise."""
        with self._connect() as db:
            if ref in ("last", "@last", "-1"):
                rows = db.execute("SELECT * FROM runs ORDER BY created DESC LIMIT 1").fetchall()
            else:
                rows = db.execute("SELECT * FROM runs WHERE id=?", (ref,)).fetchall() or db.execute(
                    "SELECT * FROM runs WHERE id LIKE ? OR id LIKE ? ORDER BY created DESC",
                    (ref.replace("%", "") + "%", "%" + ref.replace("%", "")),
                ).fetchall()
        if len(rows) == 1:
            return RunRecord._from_row(rows[0], self.runs_dir)
        if not rows:
            recent = [r.id for r in self.list(limit=5)]
            raise UserError(
                f"no run '{ref}' in the ledger at {self.home}.",
                f"recent runs: {', '.join(recent)}" if recent else "the ledger is empty: `runner submit` starts a run.",
                "`runner runs` lists them all.",
            )
        raise UserError(
            f"run id '{ref}' is ambiguous: it matches {len(rows)} runs "
            f"({', '.join(r['id'] for r in rows[:5])}{', ...' if len(rows) > 5 else ''}).",
            "give more characters of the id.",
        )

    def list(
        self, *, limit: int | None = None, states: tuple[RunState, ...] = (), sweep_id: str | None = None
    ) -> list[RunRecord]:
        q, params = "SELECT * FROM runs", []
        where = []
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            params += [s.value for s in states]
        if sweep_id:
            where.append("sweep_id=?")
            params.append(sweep_id)
        if where:
            q += " WHERE " + " AND ".join(where)
        q += " ORDER BY created DESC"
        if limit:
            q += f" LIMIT {int(limit)}"
        with self._connect() as db:
            rows = db.execute(q, params).fetchall()
        return [RunRecord._from_row(r, self.runs_dir) for r in rows]

    def sweep(self, sweep_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM sweeps WHERE id=?", (sweep_id,)).fetchone()
        if row is None:
            return None
        return {"id": row["id"], "created": row["created"], "target": row["target"],
                "info": json.loads(row["info"])}

    def find_by_job_key(self, job_key: str, state: RunState) -> RunRecord | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM runs WHERE job_key=? AND state=? ORDER BY created DESC LIMIT 1",
                (job_key, state.value),
            ).fetchone()
        return RunRecord._from_row(row, self.runs_dir) if row else None
