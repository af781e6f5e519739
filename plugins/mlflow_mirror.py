"""The MLflow mirror: each finished run is copied into an MLflow tracking store, and
``runner export mlflow RUN...|--sweep S|--all`` copies runs recorded before.

The store is named by ``MLFLOW_TRACKING_URI`` or by the project's ``conf/mlflow.yaml``
(``tracking_uri:``, ``experiment:``); without either the mirror does nothing. A mirrored run
holds the flattened config as params (secrets masked), every metric point with its step, tags
(target, env and its key, git commit and dirty state, GPUs seen, sweep), the outputs and the
config as artifacts. One MLflow experiment per project (the project folder's name unless
configured); a sweep is a parent run with its jobs' runs as children. While this process
follows a run, its MLflow run exists (RUNNING) and its metric points follow every few seconds;
the run's end completes the copy. A store that cannot be reached is named once while the run
goes and tried again at its end; if that fails, one warning says how to send the run later
(``runner export mlflow RUN``); the run itself is never affected. Mirroring is idempotent: a
run already complete in the store is not copied twice.

mlflow is an optional extra (``pip install 'runner[mlflow]'``), imported only here, and only
when a run is mirrored.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import hookimpl
from runner.backend import Command
from runner.errors import UserError

if TYPE_CHECKING:
    from runner.backend import RunSpec, RunStatus
    from runner.recorded import MetricPoint, RecordedRun
    from runner.store import RunRecord, Store

#: the project file that names a tracking store when ``MLFLOW_TRACKING_URI`` is not set
SETTINGS_FILE = Path("conf") / "mlflow.yaml"
INSTALL = "pip install 'runner[mlflow]'"
#: tag holding the ledger id of a mirrored run (how a run is found again)
TAG_RUN = "runner.run_id"
#: tag set last, once params, metrics and artifacts are all in the store
TAG_COMPLETE = "runner.mirror_complete"
#: the MLflow status of each terminal runner state
_MLFLOW_STATUS = {"SUCCEEDED": "FINISHED", "FAILED": "FAILED", "LOST": "FAILED",
                  "CANCELLED": "KILLED"}
_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. /:]")
_PARAM_MAX = 6000
_warned: set[str] = set()


@dataclass(frozen=True)
class MirrorSettings:
    """Where runs are mirrored."""

    tracking_uri: str  #: an MLflow tracking URI: ``sqlite:///path.db``, ``http://host:5000``, a folder
    experiment: str  #: the MLflow experiment of the project's runs
    source: str  #: what named the store (shown in messages)


def settings(project_root: Path, *, uri: str | None = None, experiment: str | None = None
             ) -> MirrorSettings | None:
    """The store to mirror into: ``uri``, else ``MLFLOW_TRACKING_URI``, else the project's
    ``conf/mlflow.yaml``; None when nothing names one."""
    import yaml

    path = project_root / SETTINGS_FILE
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        data = {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]}).",
                        "it holds e.g. tracking_uri: sqlite:///mlflow.db and experiment: NAME") from None
    if not isinstance(data, dict) or set(data) - {"tracking_uri", "experiment"}:
        raise UserError(f"{path}: unknown keys {sorted(set(data) - {'tracking_uri', 'experiment'})}."
                        if isinstance(data, dict) else f"{path}: expected a mapping.",
                        "valid keys: tracking_uri (an MLflow tracking URI), experiment (a name)")
    source = "--tracking-uri" if uri else "MLFLOW_TRACKING_URI"
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri and data.get("tracking_uri"):
        uri, source = _project_relative(str(data["tracking_uri"]), project_root), str(path)
    if not uri:
        return None
    name = (experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or data.get("experiment")
            or project_root.name)
    return MirrorSettings(uri, str(name), source)


def _project_relative(uri: str, root: Path) -> str:
    """A relative SQLite path or folder in the project file is relative to the project."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{root / uri[len('sqlite:///'):]}"
    if "://" not in uri and not uri.startswith("file:"):
        return str(root / uri)
    return uri


def _mlflow() -> Any:
    """The mlflow module, quiet; a clear error when it is not installed."""
    try:
        import mlflow  # the optional extra: only a mirrored run pays for importing it
    except ImportError:
        raise UserError(f"mlflow is not installed: {INSTALL}") from None
    import logging

    for name in ("mlflow", "alembic"):  # database set-up chatter is not the user's business
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


# -- writing one run ------------------------------------------------------------------------------

def _key(name: str) -> str:
    return _BAD_KEY.sub("_", name)[:250]


def _chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _probe(uri: str, timeout: float = 5.0) -> None:
    """Fail at once when a tracking server does not accept connections (MLflow's client
    would retry for minutes, and a run's end must not wait that long)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"cannot connect to {parts.hostname}:{port}: "
                              f"{e.strerror or type(e).__name__}") from None


class Mirror:
    """An open connection to one tracking store and the project's experiment in it."""

    def __init__(self, cfg: MirrorSettings, store: Store) -> None:
        mlflow = _mlflow()
        from mlflow.tracking import MlflowClient

        _probe(cfg.tracking_uri)

        self.cfg = cfg
        self.store = store
        self.client = MlflowClient(tracking_uri=cfg.tracking_uri)
        self._mlflow = mlflow
        self.experiment_id = self._experiment()

    def _experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.cfg.experiment)
        if exp is not None:
            return str(exp.experiment_id)
        location = None
        if self.cfg.tracking_uri.startswith("sqlite:///"):  # artifacts beside the database,
            db = Path(self.cfg.tracking_uri[len("sqlite:///"):])  # not in the current folder
            location = (db.parent / "mlartifacts").resolve().as_uri()
        return str(self.client.create_experiment(self.cfg.experiment, artifact_location=location))

    def _find(self, filters: str) -> list[Any]:
        return list(self.client.search_runs([self.experiment_id], filter_string=filters,
                                            max_results=50))

    def mirrored(self, run_id: str) -> str | None:
        """The MLflow run id of ``run_id`` when it is complete in the store."""
        for r in self._find(f"tags.`{TAG_RUN}` = '{run_id}'"):
            if r.data.tags.get(TAG_COMPLETE) == "true":
                return str(r.info.run_id)
        return None

    def start(self, run: RecordedRun) -> str:
        """A new MLflow run for ``run`` (RUNNING), with its tags and params; its id."""
        from mlflow.entities import Param

        rec = run.record
        tags = self._tags(run)
        if rec.sweep_id:
            tags["mlflow.parentRunId"] = self._sweep_parent(rec)
        mr = self.client.create_run(self.experiment_id, start_time=int(rec.created * 1000),
                                    tags=tags, run_name=rec.id)
        mid = str(mr.info.run_id)
        params = {_key(k): v[:_PARAM_MAX] for k, v in run.params.items()}
        for part in _chunks([Param(k, v) for k, v in params.items()], 100):
            self.client.log_batch(mid, params=part)
        return mid

    def send_metrics(self, mid: str, points: Sequence[MetricPoint]) -> None:
        """Add metric points to the MLflow run ``mid``."""
        from mlflow.entities import Metric

        metrics = [Metric(_key(m.name), m.value, int(m.time * 1000), m.step) for m in points]
        for part in _chunks(metrics, 1000):
            self.client.log_batch(mid, metrics=part)

    def write(self, run: RecordedRun, live: tuple[str, int] | None = None) -> tuple[str, bool]:
        """Copy ``run`` into the store; ``(MLflow run id, whether it was copied now)``. A
        complete copy already there is kept; ``live`` (MLflow run id, metric points sent) is
        the copy this process made while the run went: it is completed; any other partial
        copy (an interrupted mirror) is replaced."""
        from mlflow.entities import RunTag

        rec = run.record
        mid, sent = None, 0
        for r in self._find(f"tags.`{TAG_RUN}` = '{rec.id}'"):
            if r.data.tags.get(TAG_COMPLETE) == "true":
                return str(r.info.run_id), False
            if live and r.info.run_id == live[0]:
                mid, sent = live
            else:
                self.client.delete_run(r.info.run_id)
        if mid is None:
            mid = self.start(run)
        else:  # what is known only now: state, exit code, GPUs seen
            self.client.log_batch(mid, tags=[RunTag(k, v) for k, v in self._tags(run).items()])
        self.send_metrics(mid, run.metrics[sent:])
        files = [p for p in run.outputs.rglob("*") if p.is_file() and not p.is_symlink()] \
            if run.outputs.is_dir() else []
        if files:
            self.client.log_artifacts(mid, str(run.outputs), artifact_path="outputs")
        from runner.rundir import CONFIG

        if (run.run_dir / CONFIG).is_file():
            self.client.log_artifact(mid, str(run.run_dir / CONFIG))
        self.client.log_batch(mid, tags=[RunTag(TAG_COMPLETE, "true")])
        end = rec.finished or time.time()
        self.client.set_terminated(mid, _MLFLOW_STATUS.get(rec.state.value, "FAILED"),
                                   end_time=int(end * 1000))
        if rec.sweep_id:
            self._close_sweep(rec.sweep_id)
        return mid, True

    def _tags(self, run: RecordedRun) -> dict[str, str]:
        from runner.secrets import env_refs, env_values, mask_text

        rec = run.record
        tags = {TAG_RUN: rec.id, "runner.target": rec.target, "runner.backend": rec.backend,
                "runner.model": rec.model, "runner.env": run.env, "runner.env_key": rec.env_key or "",
                "runner.state": rec.state.value,
                "runner.gpus": "; ".join(run.gpus) if run.gpus else "none",
                "runner.git_dirty": "true" if run.git_dirty else "false"}
        if run.git_commit:
            tags["mlflow.source.git.commit"] = run.git_commit
        if rec.exit_code is not None:
            tags["runner.exit_code"] = str(rec.exit_code)
        if rec.message:
            hidden = env_values(env_refs(dict(run.params)), os.environ).values()
            tags["runner.message"] = mask_text(rec.message, hidden)[:5000]
        if rec.sweep_id:
            tags["runner.sweep_id"] = rec.sweep_id
        return tags

    def _sweep_parent(self, rec: RunRecord) -> str:
        """The parent run of ``rec``'s sweep, made by the first of its jobs to be mirrored (a
        lock file keeps two jobs ending at once from making two)."""
        import fcntl

        assert rec.sweep_id
        home = self.store.home / "sweeps" / rec.sweep_id
        home.mkdir(parents=True, exist_ok=True)
        with open(home / ".mlflow.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            found = self._find(f"tags.`runner.sweep_parent` = '{rec.sweep_id}'")
            if found:
                return str(found[0].info.run_id)
            sweep = self.store.sweep(rec.sweep_id) or {}
            parent = self.client.create_run(
                self.experiment_id, run_name=rec.sweep_id,
                start_time=int(float(sweep.get("created") or rec.created) * 1000),
                tags={"runner.sweep_parent": rec.sweep_id, "runner.sweep_id": rec.sweep_id,
                      "runner.target": rec.target})
            return str(parent.info.run_id)

    def _close_sweep(self, sweep_id: str) -> None:
        """End the sweep's parent run once every run of the sweep has ended."""
        records = self.store.list(sweep_id=sweep_id)
        if not records or not all(r.state.terminal for r in records):
            return
        found = self._find(f"tags.`runner.sweep_parent` = '{sweep_id}'")
        if found:
            ok = all(r.state.value == "SUCCEEDED" for r in records)
            end = max(r.finished or r.updated for r in records)
            self.client.set_terminated(found[0].info.run_id, "FINISHED" if ok else "FAILED",
                                       end_time=int(end * 1000))


def _why(e: BaseException) -> str:
    text = e.message if isinstance(e, UserError) else (str(e) or type(e).__name__)
    return text.strip().splitlines()[0][:300] if text.strip() else type(e).__name__


def _warn_once(key: str, text: str) -> None:
    if key not in _warned:
        _warned.add(key)
        print(f"warning: {text}", file=sys.stderr, flush=True)


# -- the hooks: a run started, a run ended ---------------------------------------------------------

#: how often a run's new metric points are sent while it goes (seconds)
LIVE_PERIOD = 2.0


class _Live(threading.Thread):
    """Mirrors one run while this process follows it: makes its MLflow run (RUNNING, with
    params and tags), then sends new metric points every :data:`LIVE_PERIOD` seconds.

    A daemon: a process that does not wait for the run (``submit --detach``) leaves at once,
    and the command that records the run's end completes the copy instead."""

    def __init__(self, cfg: MirrorSettings, store: Store, run_id: str) -> None:
        super().__init__(name=f"mlflow-mirror-{run_id}", daemon=True)
        self.cfg, self.store, self.run_id = cfg, store, run_id
        self.stopping = threading.Event()
        self.mlflow_run: str | None = None
        self.sent = 0  #: metric points sent

    def run(self) -> None:
        from runner.recorded import metric_points, read_run
        from runner.rundir import RunDir

        try:
            _mlflow()
            if self.stopping.is_set():  # a short run: its end makes the whole copy at once
                return
            mirror = Mirror(self.cfg, self.store)
            rec = self.store.get(self.run_id)
            self.mlflow_run = mirror.start(read_run(rec))
            while True:
                stop = self.stopping.wait(LIVE_PERIOD)
                points = metric_points(RunDir(rec.run_dir).read_metrics(), rec.created)
                if len(points) > self.sent and not stop:
                    mirror.send_metrics(self.mlflow_run, points[self.sent:])
                    self.sent = len(points)
                if stop:
                    return
        except UserError:  # mlflow not installed: the end of the run says so
            return
        except Exception as e:  # noqa: BLE001 - an unreachable store must not touch the run
            if self.stopping.is_set():
                return  # the run's end tries again and says what happened
            _warn_once(f"live {self.cfg.tracking_uri}",
                       f"mlflow mirror: cannot reach {self.cfg.tracking_uri} ({_why(e)}); "
                       "trying again when the run ends")


_live: dict[str, _Live] = {}


def _configured() -> tuple[MirrorSettings, Store] | None:
    from runner.store import Store, find_project_root

    root = find_project_root()
    try:
        cfg = settings(root)
    except UserError as e:
        _warn_once("settings", f"mlflow mirror: {e.message}")
        return None
    return (cfg, Store(Store.home_for(root))) if cfg else None


@hookimpl
def runner_after_submit(spec: RunSpec, handle: Any) -> None:
    """Start mirroring the run while it goes (in a thread; the run never waits for it)."""
    found = _configured()
    if found is None:
        return
    live = _live[spec.run_id] = _Live(*found, spec.run_id)
    live.start()


@hookimpl
def runner_run_finished(run_id: str, status: RunStatus, summary: Any) -> None:
    """Complete the mirror of the run that just ended, when a tracking store is configured."""
    from runner.recorded import read_run

    live = _live.pop(run_id, None)
    if live is not None:
        live.stopping.set()
        live.join(timeout=60)
    found = _configured()
    if found is None:
        return
    cfg, store = found
    try:
        run = read_run(store.get(run_id))
    except Exception as e:  # noqa: BLE001 - the mirror never fails a run
        _warn_once(run_id, f"mlflow mirror: could not read run {run_id}: {_why(e)}")
        return
    sent = (live.mlflow_run, live.sent) if live is not None and live.mlflow_run else None
    last: BaseException | None = None
    for attempt in range(2):  # once, and once more a moment later
        try:
            Mirror(cfg, store).write(run, sent)
            return
        except UserError:  # mlflow not installed: retrying will not help
            _warn_once("install", f"mlflow mirror: {cfg.source} names a tracking store, but "
                                  f"mlflow is not installed: {INSTALL}")
            return
        except Exception as e:  # noqa: BLE001 - an unreachable store must not fail the run
            last = e
            if attempt == 0:
                time.sleep(1.0)
    assert last is not None
    _warn_once(f"reach {cfg.tracking_uri}",
               f"mlflow mirror: could not write run {run_id} to {cfg.tracking_uri} "
               f"({_why(last)}); the run is recorded here. Send it later: "
               f"runner export mlflow {run_id}")


# -- the command: runner export mlflow ----------------------------------------------------------------

def _arguments(p: Any) -> None:
    p.add_argument("format", choices=["mlflow"], help="where to: mlflow (a tracking store)")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run ids (or unique prefixes)")
    p.add_argument("--sweep", metavar="SWEEP", help="every run of this sweep")
    p.add_argument("--all", action="store_true", help="every run in the ledger")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="the store (default: MLFLOW_TRACKING_URI, else conf/mlflow.yaml)")
    p.add_argument("--experiment", metavar="NAME", help="the MLflow experiment (default: the "
                                                        "project folder's name)")


def _export(args: Any) -> int:
    from runner.recorded import read_run, select

    ctx = args.context
    runs = ctx.runs
    cfg = settings(runs.project_root, uri=args.tracking_uri, experiment=args.experiment)
    if cfg is None:
        raise UserError("no MLflow tracking store is named.",
                        "set MLFLOW_TRACKING_URI (e.g. sqlite:///mlflow.db or http://host:5000), "
                        "pass --tracking-uri URI, or write tracking_uri: in conf/mlflow.yaml")
    records = select(runs, args.runs, sweep=args.sweep, every=args.all,
                     command="runner export mlflow")
    _mlflow()  # not installed: say so before anything else
    try:
        mirror = Mirror(cfg, runs.store)
    except Exception as e:  # noqa: BLE001 - one line, not the client's traceback
        if isinstance(e, UserError) or ctx.debug:
            raise
        raise UserError(f"cannot use the MLflow tracking store {cfg.tracking_uri} "
                        f"(named by {cfg.source}): {_why(e)}",
                        "check that the server runs and the URI is right") from None
    sent = kept = 0
    for rec in records:
        rec = runs.refresh(rec)
        if not rec.state.terminal:
            ctx.note(f"{rec.id}: still {rec.state.value.lower()}; mirrored when it ends")
            continue
        mid, new = mirror.write(read_run(rec))
        sent += new
        kept += not new
        ctx.say(f"{rec.id}  ->  mlflow run {mid}" + ("" if new else "  (already there)"))
    ctx.note(f"{sent} run(s) exported to {cfg.tracking_uri}, experiment '{cfg.experiment}'"
             + (f"; {kept} already there" if kept else ""))
    return 0


@hookimpl
def runner_register_commands(register: Any) -> None:
    register(Command(name="export", help="copy runs into another tool's store: runner export "
                                         "mlflow RUN...|--sweep S|--all",
                     add_arguments=_arguments, run=_export))


__all__: Sequence[str] = ("Mirror", "MirrorSettings", "settings")
