"""The run directory: the protocol between the client and whatever executes a run.

One directory per run, self-contained, so that any backend can ship it to a target (mount
it into a container, copy it to a remote host, hand it to a Ray job) and bring it back::

    request.json    the client's request: model, its config, data/env config, seed, GPUs
    config.yaml     the resolved config (secrets redacted), for people
    meta.json       what the client knew: overrides, group choices, git state, host
    code/           the project snapshot taken at submit; the worker's working directory
    log.txt         the worker's stdout and stderr
    metrics.jsonl   one JSON object per logged metric: name, value, step, time
    worker.json     what the worker saw on the target: host, Python, packages, seed, GPUs
    status.json     the current status, replaced atomically (see runner.backend.RunStatus)
    cancel          present once a cancel was requested
    stop_reason     why the target stops the run (its time limit), written before the signal
    outputs/        the run's artifacts
    checkpoints/    what the model saved to continue later (``runner resume`` starts from it)

Only the worker writes ``log.txt``, ``metrics.jsonl``, ``worker.json``, ``outputs/`` and
``checkpoints/``; the client writes the rest (and, for a resumed run, seeds ``checkpoints/``
and ``metrics.jsonl`` with its parent's before the worker starts). ``status.json`` is written by the worker while it lives and by the
client when it records what the worker could not (a kill, a loss).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.backend import RunState, RunStatus

REQUEST = "request.json"
STATUS = "status.json"
LOG = "log.txt"
METRICS = "metrics.jsonl"
WORKER = "worker.json"
META = "meta.json"
CONFIG = "config.yaml"
CANCEL = "cancel"
STOP_REASON = "stop_reason"
CODE = "code"
OUTPUTS = "outputs"
CHECKPOINTS = "checkpoints"


def disk_full(path: Path) -> bool:
    """True when the file system holding ``path`` (or its nearest existing folder) has no room
    left for a small file: a write there fails with "No space left on device"."""
    p = Path(path)
    try:
        while not p.exists() and p != p.parent:
            p = p.parent
        st = os.statvfs(p)
    except OSError:  # a name too long, a folder not readable: not a full disk
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON so readers never see a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when it is missing or half-written."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


class RunDir:
    """Typed access to one run directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- paths -----------------------------------------------------------------
    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def outputs(self) -> Path:
        return self.path / OUTPUTS

    @property
    def code(self) -> Path:
        return self.path / CODE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def has_checkpoint(self) -> bool:
        """True when the model left anything in ``checkpoints/``."""
        try:
            return any(self.checkpoints.iterdir())
        except OSError:
            return False

    # -- request / meta --------------------------------------------------------
    def write_request(self, request: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.outputs.mkdir(exist_ok=True)
        write_json_atomic(self.path / REQUEST, request)

    def request(self) -> dict[str, Any]:
        data = read_json(self.path / REQUEST)
        if data is None:
            raise FileNotFoundError(f"{self.path / REQUEST}: no run request here")
        return dict(data)

    def worker_info(self) -> dict[str, Any]:
        return dict(read_json(self.path / WORKER, {}) or {})

    def meta(self) -> dict[str, Any]:
        return dict(read_json(self.path / META, {}) or {})

    # -- status ----------------------------------------------------------------
    def status(self) -> RunStatus | None:
        """The last status written, or None if the worker has not written one yet."""
        data = read_json(self.path / STATUS)
        return RunStatus.from_dict(data) if data else None

    def write_status(self, status: RunStatus) -> None:
        data = status.to_dict() | {"time": time.time()}
        try:
            write_json_atomic(self.path / STATUS, data)
        except OSError as e:
            if e.errno != errno.ENOSPC or not (self.path / STATUS).is_file():
                raise
            # a full disk: a new file cannot be made, but the status file written when the
            # run started holds a block of its own; rewriting it in place needs no new space,
            # so how the run ended is still recorded
            text = json.dumps(data, indent=1, sort_keys=True, default=str)
            with open(self.path / STATUS, "r+", encoding="utf-8") as f:
                f.write(text)
                f.truncate()

    def request_cancel(self) -> None:
        (self.path / CANCEL).touch()

    @property
    def cancel_requested(self) -> bool:
        return (self.path / CANCEL).exists()

    def stop_reason(self) -> str | None:
        """Why the target stopped the run, when it did so for a reason of its own (a time
        limit): the first line of ``stop_reason``, which the target writes before it sends the
        stop signal. None for a stop on request (a cancel) or no stop at all."""
        try:
            text = (self.path / STOP_REASON).read_text(errors="replace").strip()
        except OSError:
            return None
        return text.splitlines()[0][:300] if text else None

    # -- log -------------------------------------------------------------------
    def read_log(self, offset: int = 0, *, final: bool = False) -> Iterator[tuple[int, str]]:
        """Complete lines of the log past byte ``offset`` as ``(next_offset, line)``.

        A trailing partial line is held back (it may still grow) unless ``final``.
        """
        try:
            with open(self.log, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return
        yield from log_lines(data, offset, final=final)

    # -- metrics ---------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        """Every metric record, in the order logged (a half-written last line is skipped)."""
        out: list[dict[str, Any]] = []
        try:
            text = self.metrics.read_text()
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def summary(self) -> dict[str, float]:
        """The last value of each metric."""
        return {m["name"]: m["value"] for m in self.read_metrics()}


def append_metric(path: Path, name: str, value: float, step: int | None) -> None:
    """Append one metric record; one ``write`` of one line, so concurrent writers interleave
    whole lines only."""
    line = json.dumps({"name": name, "value": float(value), "step": step, "time": time.time()})
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def log_lines(data: bytes, offset: int, *, final: bool) -> Iterator[tuple[int, str]]:
    """``(next_offset, line)`` for each complete line of ``data``, the log's bytes from byte
    ``offset`` on: the framing every backend's :meth:`RunHandle.logs` yields. A trailing
    partial line is held back (it may still grow) unless ``final``."""
    pos = offset
    for raw in data.splitlines(keepends=True):
        if not raw.endswith(b"\n") and not final:
            return
        pos += len(raw)
        yield pos, raw.decode("utf-8", "replace")


def lost_or_cancelled(rd: RunDir, why: str) -> RunStatus:
    """The status of a run whose worker is gone without a final status."""
    if rd.cancel_requested:
        return RunStatus(RunState.CANCELLED, exit_code=None, message="cancelled")
    return RunStatus(RunState.LOST, message=why)


class LocalDirHandleMixin:
    """``logs`` and ``fetch_outputs`` for run handles whose run directory is on this machine
    (the worker writes into it directly: a local process, a bind-mounted container)."""

    rd: RunDir
    status: Any  # the RunHandle it is mixed into provides status()

    def logs(self, offset: int = 0) -> Iterator[tuple[int, str]]:
        final = self.status().terminal
        yield from self.rd.read_log(offset, final=final)

    def fetch_outputs(self, dest: Path) -> None:
        if Path(dest).resolve() != self.rd.path.resolve():
            safe_copy_tree(self.rd.path, Path(dest))


def safe_copy_tree(src: Path, dest: Path, *, max_bytes: int | None = None) -> list[str]:
    """Copy the regular files and folders of ``src`` into ``dest``, with the safety of a
    fetch from another machine: links (wherever they point), devices and fifos are skipped,
    nothing is written through a link in ``dest``, sparse files stay sparse, and the total
    stays within ``max_bytes``. Returns the skipped paths (relative to ``src``)."""
    skipped: list[str] = []
    total = 0
    dest.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        rel = os.path.relpath(dirpath, src)
        here = os.path.normpath(os.path.join(root, rel))
        if os.path.realpath(here) != here:
            skipped.append(rel)  # a folder in dest is a link: never write through it
            dirnames[:] = []
            continue
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                skipped.append(os.path.normpath(os.path.join(rel, d)))
                dirnames.remove(d)
            else:
                os.makedirs(os.path.join(here, d), exist_ok=True)
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                skipped.append(os.path.normpath(os.path.join(rel, name)))
                continue
            total += st.st_blocks * 512 if st.st_blocks * 512 < st.st_size else st.st_size
            if max_bytes is not None and total > max_bytes:
                from runner.errors import UserError
                from runner.units import size_text

                raise UserError(f"the run directory is over the {size_text(max_bytes)} cap "
                                f"for a fetch (at {os.path.join(rel, name)}).",
                                "write less into outputs/, or fetch with a larger --max-mb.")
            target = os.path.join(here, name)
            if os.path.islink(target):
                os.unlink(target)  # replaced by the file itself, never written through
            _copy_sparse(path, target, st)
    return skipped


def _copy_sparse(src: str, dst: str, st: os.stat_result) -> None:
    """Copy one regular file; runs of zeros in a file with holes become holes again."""
    sparse = st.st_blocks * 512 < st.st_size
    tmp = dst + ".runner-part"
    with open(src, "rb") as fi, open(tmp, "wb") as fo:
        while chunk := fi.read(1 << 20):
            if sparse and not chunk.strip(b"\0"):
                fo.seek(len(chunk), os.SEEK_CUR)
            else:
                fo.write(chunk)
        fo.truncate()
    os.chmod(tmp, stat.S_IMODE(st.st_mode))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, dst)
