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
from dataclasses import dataclass, field
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
    finished  REAL,
    creator   TEXT,
    parent    TEXT,
    attempt   INTEGER NOT NULL DEFAULT 1
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
    #: the process that created the row (host, pid, start time; see :func:`runner.proc.identity`)
    creator: dict[str, Any] | None = None
    #: the run this one continues (``runner resume``, a retry), None for a fresh run
    parent: str | None = None
    #: 1 for a fresh run or a resume by hand; a retry is its parent's attempt + 1
    attempt: int = 1

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
            creator=json.loads(row["creator"]) if "creator" in row.keys() and row["creator"] else None,
            parent=row["parent"] if "parent" in row.keys() else None,
            attempt=int(row["attempt"] or 1) if "attempt" in row.keys() else 1,
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


#: In each run directory: the ledger row's fixed part, so the ledger can be rebuilt from them.
ROW_JSON = "ledger.json"
#: In each run directory: how to reattach the run (the handle's locator), written at submit.
LOCATOR_JSON = "locator.json"
#: What makes the ledger unusable, and what to do about it (first match of the cause wins).
_LEDGER_FAULTS = (
    (("file is not a database", "malformed", "not a database", "disk i/o error"),
     "is damaged (not a readable SQLite database)",
     "rebuild it from the run directories: runner ledger rebuild (the damaged file is kept "
     "next to it)"),
    (("readonly", "read-only", "errno 30"), "is on a read-only file system or not writable",
     "make the folder writable, or point RUNNER_HOME at a writable folder"),
    (("disk is full", "no space left", "errno 28", "quota"), "has no space left",
     "free space on that disk, or point RUNNER_HOME at a folder on another one"),
    (("permission denied", "errno 13", "unable to open"), "cannot be opened for writing",
     "check the permissions of that folder (and that runs.db is a file), or point RUNNER_HOME "
     "at a writable folder"),
    (("not a directory", "file exists", "errno 20", "errno 17"),
     "is in the way: a file stands where a folder must be",
     "move that file away (the ledger folder is .runner/ in the project, or RUNNER_HOME)"),
    (("file name too long", "errno 36"), "has a path that is too long for the file system",
     "point RUNNER_HOME at a shorter path"),
)


def ledger_error(e: BaseException, where: Path) -> UserError:
    """One clear error for a ledger that cannot be used: what, where, what to do."""
    cause = str(e) or type(e).__name__
    text = f"{cause} errno {getattr(e, 'errno', '')}".lower()
    from runner.rundir import disk_full

    if disk_full(where):  # SQLite says "disk I/O error" when its journal cannot grow
        text = "no space left"
    if isinstance(e, IsADirectoryError) or (where.name == "runs.db" and where.is_dir()):
        return UserError(f"the run ledger {where} is a folder, not a database file.",
                         "move it away; then `runner ledger rebuild` makes a new ledger from "
                         "the run directories")
    for needles, what, fix in _LEDGER_FAULTS:
        if any(n in text for n in needles):
            return UserError(f"the run ledger at {where} {what} ({cause}).", fix)
    return UserError(f"the run ledger at {where} cannot be used: {cause}.",
                     "check that folder (or RUNNER_HOME), or rebuild the ledger from the run "
                     "directories: runner ledger rebuild")


class Store:
    """The ledger of one project."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.runs_dir = self.home / "runs"
        self.db_path = self.home / "runs.db"
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            ignore = self.home / ".gitignore"
            if not ignore.exists():
                ignore.write_text("*\n")  # the ledger never ends up in the user's commits
        except OSError as e:
            raise ledger_error(e, self.home) from None
        self._init_db()

    def _init_db(self) -> None:
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: readers never block the writer
            db.executescript(_SCHEMA)
            cols = {r["name"] for r in db.execute("PRAGMA table_info(runs)")}
            if "creator" not in cols:  # a ledger made by an older runner
                db.execute("ALTER TABLE runs ADD COLUMN creator TEXT")
            if "parent" not in cols:
                db.execute("ALTER TABLE runs ADD COLUMN parent TEXT")
            if "attempt" not in cols:
                db.execute("ALTER TABLE runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1")

    @staticmethod
    def home_for(root: Path) -> Path:
        """Where the ledger of the project at ``root`` lives (``RUNNER_HOME`` overrides)."""
        return Path(os.environ.get("RUNNER_HOME") or root / ".runner")

    @classmethod
    def for_project(cls, root: Path) -> Store:
        return cls(cls.home_for(root))

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        except (sqlite3.Error, OSError) as e:
            raise ledger_error(e, self.db_path) from None
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA busy_timeout=30000")
            # WAL with synchronous=NORMAL: a crash of any process loses nothing committed; only
            # a power cut may drop the last transactions (and never corrupts the database)
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        except sqlite3.IntegrityError:
            raise
        except (sqlite3.DatabaseError, OSError) as e:
            raise ledger_error(e, self.db_path) from None
        finally:
            db.close()

    # -- writes ---------------------------------------------------------------
    def create_run(
        self, *, target: str, backend: str, model: str, sweep_id: str | None = None,
        job_key: str | None = None, creator: Mapping[str, Any] | None = None,
        parent: str | None = None, attempt: int = 1,
    ) -> RunRecord:
        """Add a QUEUED run and make its directory. The row names its creator (this process
        unless ``creator`` says otherwise) from the moment it exists, so that no other process
        takes a run that is still being prepared for one whose client is gone."""
        from runner.proc import identity

        now = time.time()
        who = json.dumps(dict(creator) if creator is not None else identity())
        for _ in range(5):
            run_id = new_run_id()
            try:
                with self._connect() as db:
                    db.execute(
                        "INSERT INTO runs (id, created, updated, state, target, backend, model,"
                        " sweep_id, job_key, creator, parent, attempt)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        (run_id, now, now, RunState.QUEUED.value, target, backend, model,
                         sweep_id, job_key, who, parent, attempt),
                    )
                break
            except sqlite3.IntegrityError:
                continue
        try:
            (self.runs_dir / run_id).mkdir(parents=True, exist_ok=True)
            _write_json(self.runs_dir / run_id / ROW_JSON, {
                "id": run_id, "created": now, "target": target, "backend": backend,
                "model": model, "sweep_id": sweep_id, "job_key": job_key,
                "creator": json.loads(who), "parent": parent, "attempt": attempt})
        except OSError as e:
            raise ledger_error(e, self.runs_dir / run_id) from None
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
        now = time.time()
        with self._connect() as db:
            db.execute("INSERT INTO sweeps (id, created, target, info) VALUES (?,?,?,?)",
                       (sweep_id, now, target, json.dumps(dict(info))))
        home = self.home / "sweeps" / sweep_id
        home.mkdir(parents=True, exist_ok=True)
        _write_json(home / ROW_JSON, {"id": sweep_id, "created": now, "target": target,
                                      "info": dict(info)})
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

    def children(self, run_id: str) -> list[RunRecord]:
        """The runs that continue ``run_id`` (resumed or retried from it), oldest first."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs WHERE parent=? ORDER BY created",
                              (run_id,)).fetchall()
        return [RunRecord._from_row(r, self.runs_dir) for r in rows]

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


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class RebuildReport:
    """What :func:`rebuild` found."""

    runs: int = 0  #: run directories recorded again
    sweeps: int = 0  #: sweeps recorded again
    skipped: list[str] = field(default_factory=list)  #: folders that are not run directories
    kept: Path | None = None  #: where the old (damaged) database was moved


def rebuild(home: Path) -> RebuildReport:
    """Make a new ledger from the run directories under ``home`` (``runs/*``, and
    ``sweeps/*``): the database only indexes them, so nothing is lost when it breaks.
    The old database, when there is one, is kept as ``runs.db.broken-TIME``."""
    from runner.backend import RunStatus

    home = Path(home)
    report = RebuildReport()
    db_path = home / "runs.db"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        if db_path.exists() or db_path.is_symlink():
            report.kept = db_path.with_name(f"runs.db.broken-{stamp}")
            os.replace(db_path, report.kept)
        for side in ("runs.db-wal", "runs.db-shm"):
            if (home / side).exists():
                os.replace(home / side, home / f"{side}.broken-{stamp}")
    except OSError as e:
        raise ledger_error(e, db_path) from None
    store = Store(home)
    sweeps_dir = home / "sweeps"
    with store._connect() as db:
        for d in sorted(sweeps_dir.iterdir()) if sweeps_dir.is_dir() else []:
            row = _read_json(d / ROW_JSON)
            if not row:
                continue
            db.execute("INSERT OR REPLACE INTO sweeps (id, created, target, info) VALUES (?,?,?,?)",
                       (d.name, float(row.get("created") or d.stat().st_mtime),
                        str(row.get("target") or ""), json.dumps(row.get("info") or {})))
            report.sweeps += 1
        for d in sorted(store.runs_dir.iterdir()):
            row = _read_json(d / ROW_JSON)
            meta = _read_json(d / "meta.json")
            request = _read_json(d / "request.json")
            if not (row or meta or request):
                report.skipped.append(d.name)
                continue
            st_data = _read_json(d / "status.json")
            try:
                st = RunStatus.from_dict(st_data) if st_data else None
            except (KeyError, ValueError):
                st = None
            locator = _read_json(d / LOCATOR_JSON) or None
            if st is None:
                st = RunStatus(RunState.LOST, message="the ledger was rebuilt and this run left "
                                                      "no status")
            from runner.rundir import RunDir

            created = float(row.get("created") or (meta.get("client") or {}).get("time")
                            or d.stat().st_mtime)
            db.execute(
                "INSERT OR REPLACE INTO runs (id, created, updated, state, exit_code, oom, message,"
                " target, backend, model, env_key, sweep_id, job_key, locator, summary, finished,"
                " creator, parent, attempt) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (d.name, created, time.time(), st.state.value, st.exit_code, int(st.oom),
                 st.message,
                 str(row.get("target") or (meta.get("choices") or {}).get("target") or "?"),
                 str(row.get("backend") or (meta.get("target_config") or {}).get("backend") or "?"),
                 str(row.get("model") or request.get("model") or "?"),
                 None, row.get("sweep_id") or meta.get("sweep_id"), row.get("job_key"),
                 json.dumps(locator) if locator else None,
                 json.dumps(RunDir(d).summary()),
                 (d / "status.json").stat().st_mtime if st.terminal and (d / "status.json").exists()
                 else None,
                 json.dumps(row.get("creator")) if row.get("creator") else None,
                 row.get("parent"), int(row.get("attempt") or 1)))
            report.runs += 1
    return report
