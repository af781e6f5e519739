"""The worker: what executes a run *on the target*.

``python -m runner.worker RUN_DIR`` reads the request in the run directory, records what it
sees (host, Python, packages, GPUs), seeds the RNGs, calls the model plugin, and writes the
final status atomically. Every backend starts exactly this; only how the run directory gets
to the target differs. Only the standard library, pluggy and the runner package are needed
here (no Hydra, no OmegaConf): a target's environment does not have to carry the client.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from runner.backend import RunState, RunStatus
from runner.request import DATA_DIR_ENV, RunRequest
from runner.rundir import WORKER, RunDir, append_metric, disk_full, write_json_atomic
from runner.secrets import StreamMasker, mask_text, mask_values, resolve_refs


class Cancelled(BaseException):
    """Raised in the worker when SIGTERM arrives (a cancel) and the model does not stop by
    itself (:attr:`runner.model.Model.graceful_stop` is False)."""


#: the environment variable that names the run's checkpoint folder (for scripts)
CHECKPOINT_ENV = "RUNNER_CHECKPOINT_DIR"


class _Stop:
    """The stop signal as the worker received it: raised at once as :class:`Cancelled`, or,
    for a model that stops by itself, a flag it reads plus the callbacks it registered."""

    def __init__(self) -> None:
        self.graceful = False
        self.requested = False
        self.callbacks: list[Callable[[], None]] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if not self.graceful:
            raise Cancelled()
        first = not self.requested
        self.requested = True
        if first:  # os.write: a print here could re-enter one the main thread is in
            os.write(1, b"[runner] stop requested: the model saves a checkpoint and stops\n")
        for cb in list(self.callbacks):
            cb()


class _Context:
    """The :class:`runner.model.RunContext` the worker hands to a model."""

    def __init__(self, rd: RunDir, request: RunRequest, info: dict[str, Any],
                 data: Mapping[str, Any], hidden: list[str], stop: _Stop | None = None) -> None:
        self._rd = rd
        self._stop = stop or _Stop()
        self._info = info
        self._hidden = hidden
        self.run_id: str = request.run_id
        self.run_dir = rd.path
        self.work_dir = rd.code if rd.code.is_dir() else rd.path
        self.outputs_dir = rd.outputs
        self.checkpoint_dir = rd.checkpoints
        self.seed: int = request.seed
        self.data: Mapping[str, Any] = data
        self.env: Mapping[str, Any] = request.env
        self.gpus: str | None = request.gpus

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        append_metric(self._rd.metrics, mask_text(name, self._hidden), value, step)

    def set_meta(self, key: str, value: Any) -> None:
        self._info.setdefault("meta", {})[key] = value
        _write_info(self._rd, self._info, self._hidden)

    @property
    def stop_requested(self) -> bool:
        return self._stop.requested

    def on_stop(self, callback: Callable[[], None]) -> None:
        self._stop.callbacks.append(callback)


def resolve_env_refs(value: Any) -> Any:
    """Resolve ``${oc.env:VAR}`` left in the request by the client (secrets travel as
    references, never as values) from the worker's environment."""
    return resolve_refs(value, os.environ)


def _write_info(rd: RunDir, info: dict[str, Any], hidden: list[str]) -> None:
    """Write ``worker.json`` with the run's secret values masked."""
    write_json_atomic(rd.path / WORKER, mask_values(info, hidden))


def data_on_target(request: RunRequest) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``data`` config with each input's in-target path, and what was found there.

    Backends that staged the inputs under one folder say where in ``RUNNER_STAGED_DATA``;
    without it the inputs are read in place. A missing input is an error naming the key.
    """
    data_dir = os.environ.get(DATA_DIR_ENV) or None
    data = dict(request.data)
    seen = []
    for d in request.data_inputs:
        where = d.target_path(data_dir)
        if not os.path.exists(where):
            how = ("it was marked target: (on the target already)" if d.on_target
                   else f"the backend staged it under {data_dir}" if data_dir
                   else "it is read in place")
            raise _Fail(f"data.{d.key}={d.given!r}: {where} does not exist on "
                        f"{socket.gethostname()} ({how})")
        data[d.key] = where
        seen.append({**d.record(), "path": where})
    return data, seen


def gpu_info() -> list[dict[str, Any]]:
    """The GPUs this process can see, as ``nvidia-smi`` reports them (empty without one)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    allowed = None if visible in (None, "", "all") else set(visible.split(","))
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4 and (allowed is None or parts[0] in allowed):
            gpus.append({"index": parts[0], "name": parts[1], "memory": parts[2], "driver": parts[3]})
    return gpus


def _packages() -> dict[str, str]:
    """Installed distributions and versions, read off the ``*.dist-info`` folder names
    (reading every METADATA file costs a fifth of a second with a large environment)."""
    out: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for n in names:
            if n.endswith(".dist-info") and "-" in n:
                name, _, version = n[: -len(".dist-info")].partition("-")
                out.setdefault(name.replace("_", "-"), version)
    return dict(sorted(out.items(), key=lambda kv: kv[0].lower()))


def seed_everything(seed: int, *, seed_numpy: bool = True) -> None:
    """Seed Python's and (when installed) NumPy's RNGs; frameworks are seeded by models.
    Child processes get the seed as ``RUNNER_SEED`` (and ``PYTHONHASHSEED``)."""
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    os.environ["RUNNER_SEED"] = str(seed)
    if not seed_numpy:
        return
    try:
        import numpy  # cheap when present; models use it for data shuffling

        numpy.random.seed(seed % (2**32))
    except ImportError:
        pass


def _masked_output(secret_values: list[str]) -> Any:
    """Route fds 1 and 2 (and so every child's output) through a pipe whose reader masks
    secrets before they reach the log (a value written in pieces too: see
    :class:`runner.secrets.StreamMasker`). Returns the function that restores and drains it."""
    import select
    import threading

    log_fd = os.dup(1)
    r, w = os.pipe()
    os.dup2(w, 1)
    os.dup2(w, 2)
    os.close(w)
    masker = StreamMasker(secret_values)

    def write(data: bytes) -> None:
        while data:
            data = data[os.write(log_fd, data):]

    def pump() -> None:
        while True:
            ready, _, _ = select.select([r], [], [], 0.3)
            if not ready:  # quiet for a moment: let a partial line (a prompt, a bar) through
                write(masker.partial())
                continue
            chunk = os.read(r, 65536)
            if not chunk:
                break
            write(masker.feed(chunk))
        write(masker.close())
        os.close(r)

    thread = threading.Thread(target=pump, name="runner-log", daemon=True)
    thread.start()

    def restore() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        thread.join(timeout=10)

    return restore


def run(run_dir: Path) -> int:
    """Execute the run in ``run_dir``; return the process exit code."""
    rd = RunDir(run_dir)
    # the client wrote secrets (and copies of them) as ${oc.env:VAR}: resolved here, in memory
    request = RunRequest.from_dict(resolve_env_refs(rd.request()))
    hidden = [os.environ.get(v, "") for v in request.secret_env]
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    os.environ["RUNNER_RUN_DIR"] = str(rd.path)
    os.environ["RUNNER_OUTPUTS"] = str(rd.outputs)
    os.environ[CHECKPOINT_ENV] = str(rd.checkpoints)
    rd.outputs.mkdir(exist_ok=True)
    rd.checkpoints.mkdir(exist_ok=True)
    if request.gpus not in (None, "", "all"):
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", str(request.gpus))
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "started": time.time(),
        "seed": request.seed,
        "gpus": gpu_info(),
        "packages": _packages(),
    }
    _write_info(rd, info, hidden)
    restore = _masked_output(hidden)
    rd.write_status(RunStatus(RunState.RUNNING))
    status: RunStatus
    try:
        if request.require_gpu and not info["gpus"]:
            raise _Fail(
                "env.require_gpu is true but no GPU is visible to the run "
                f"(host {info['host']}: nvidia-smi missing or shows none)"
            )
        from runner.model import ModelError
        from runner.registry import collect, make_plugin_manager

        # built-ins first: scanning every installed distribution for entry points costs time
        # on each run, and is only needed for a model that a third-party package provides
        registry = collect(make_plugin_manager(entry_points=False))
        if request.model not in registry.models:
            registry = collect(make_plugin_manager())
        if request.model not in registry.models:
            raise _Fail(
                f"model '{request.model}' is not registered on the target "
                f"(available: {', '.join(sorted(registry.models))})"
            )
        model_cls = registry.models[request.model]
        data, seen = data_on_target(request)
        if seen:
            info["data"] = seen
            _write_info(rd, info, hidden)
        seed_everything(request.seed, seed_numpy=not model_cls.runs_in_subprocess)
        model = model_cls.from_mapping(dict(request.model_config))
        ctx = _Context(rd, request, info, data, hidden, stop)
        stop.graceful = model_cls.graceful_stop
        if stop.graceful and rd.cancel_requested:  # the signal came before the model could act
            stop.requested = True
        os.chdir(ctx.work_dir)
        print(f"[runner] run {ctx.run_id}: model {model.describe()} on {info['host']}, seed {ctx.seed}",
              flush=True)
        try:
            try:
                code = int(model.run(ctx) or 0)
            except Exception:
                if stop.requested:  # a model may stop by raising at its next step
                    raise Cancelled() from None
                raise
        except ModelError as e:
            raise _Fail(str(e)) from None
        except ModuleNotFoundError as e:
            if not model_cls.requires:
                raise
            raise _Fail(f"model {model_cls.name} needs {', '.join(model_cls.requires)} in the "
                        f"run's environment: {e}") from None
        if stop.requested:  # the model stopped on the signal (its checkpoint saved)
            raise Cancelled()
        status = RunStatus(
            RunState.SUCCEEDED if code == 0 else RunState.FAILED,
            exit_code=code,
            message="" if code == 0 else f"exited with code {code}",
        )
    except Cancelled:
        saved = rd.has_checkpoint()
        reason = rd.stop_reason()
        if reason and not rd.cancel_requested:  # the target's own stop (a time limit): it
            # did not finish, and was not cancelled by anyone
            status = RunStatus(RunState.FAILED, exit_code=143, message=f"{reason}; " + (
                f"checkpoint saved: runner resume {request.run_id} continues it" if saved
                else "it left no checkpoint to resume from"))
        else:
            status = RunStatus(RunState.CANCELLED, exit_code=143, message="cancelled" + (
                " (checkpoint saved: runner resume continues it)" if saved else ""))
    except _Fail as e:
        print(f"[runner] error: {e}", file=sys.stderr, flush=True)
        status = RunStatus(RunState.FAILED, exit_code=1, message=str(e))
    except Exception as e:  # the model crashed: keep its traceback in the log
        traceback.print_exc()
        status = RunStatus(RunState.FAILED, exit_code=1, message=f"{type(e).__name__}: {e}")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the final write must not be interrupted
    restore()
    info["finished"] = time.time()
    try:
        _write_info(rd, info, hidden)
    except OSError as e:  # a full disk: how the run ended matters more than its details
        print(f"[runner] warning: could not write {WORKER}: {e}", file=sys.stderr, flush=True)
    if status.state == RunState.FAILED and disk_full(rd.path):
        status = dataclasses.replace(status, message=(
            f"{status.message}; the disk holding the run directory is full"))
    rd.write_status(dataclasses.replace(status, message=mask_text(status.message, hidden)))
    return status.exit_code or 0


class _Fail(Exception):
    """An expected failure: one line in the log, no traceback."""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m runner.worker RUN_DIR", file=sys.stderr)
        return 2
    return run(Path(args[0]).resolve())


if __name__ == "__main__":
    sys.exit(main())
