"""The ``subprocess`` backend: a complete backend plugin written against the contract alone.

Each run's worker is a detached process on this machine (``python -m runner.worker RUN_DIR``
in a session of its own), run by the interpreter that runs the client. The backend builds
nothing: ``prepare`` accepts envs that need no building, keys them with
:mod:`runner.environment`, and on a miss checks once that a fresh interpreter loads the worker
and the plugins. A handle finds its run again from the worker's PID and start time, so
``runner logs -f`` and ``runner cancel`` work from any shell.

Select it with ``backend: subprocess`` in a target file, or ``runner submit target=subprocess``
(the :class:`SubprocessConfig` schema is offered as a config option; no YAML needed).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import hookimpl
from runner.backend import (
    Backend,
    BackendConfig,
    Capability,
    Prepared,
    RunHandle,
    RunSpec,
    RunState,
    RunStatus,
)
from runner.bundle import bundle_hash, cache_root
from runner.environment import env_inputs, env_key, explain_miss
from runner.errors import UserError
from runner.proc import proc_stat
from runner.request import DATA_DIR_ENV
from runner.rundir import RunDir, lost_or_cancelled, read_json, write_json_atomic


@dataclass
class SubprocessConfig(BackendConfig):
    """Schema of a ``backend: subprocess`` target file."""

    backend: str = "subprocess"  # this backend
    cancel_grace: float = 10.0  # seconds between SIGTERM and SIGKILL when a run is cancelled


def _start_time(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot); with the PID it names one process for good."""
    st = proc_stat(pid)
    return st.start_time if st else None


class SubprocessHandle(RunHandle):
    """A worker process on this machine; the worker leads a process group of its own, so
    the script it starts is signalled with it."""

    def __init__(self, run_id: str, run_dir: Path, pid: int, started: str | None, grace: float,
                 proc: subprocess.Popen[bytes] | None = None) -> None:
        super().__init__(run_id)
        self.rd = RunDir(run_dir)
        self.pid, self.started, self.grace = pid, started, grace
        self._proc = proc  # only in the process that started the worker

    @property
    def locator(self) -> dict[str, Any]:
        return {"pid": self.pid, "started": self.started}

    def _alive(self) -> bool:
        """Whether anything of the run's process group still runs (zombies do not count)."""
        if self._proc is not None:
            self._proc.poll()  # reap our own child, or it lingers as a zombie
        if self.started and _start_time(self.pid) not in (None, self.started):
            return False  # the PID now belongs to another process: ours ended long ago
        members = (proc_stat(p) for p in os.listdir("/proc") if p.isdigit())
        return any(st is not None and st.pgid == self.pid and st.alive for st in members)

    def status(self) -> RunStatus:
        st = self.rd.status()  # None until the client (PREPARING) or the worker (RUNNING) wrote one
        if (st is None or not st.terminal) and not self._alive():
            st = self.rd.status()  # the worker may have written its final status meanwhile
            if st is None or not st.terminal:  # it died without one (SIGKILL, OOM killer)
                st = lost_or_cancelled(self.rd, "the worker process ended without a final status")
                self.rd.write_status(st)  # the worker cannot: record it for every later reader
        return st or RunStatus(RunState.QUEUED)

    def cancel(self) -> RunStatus:
        if self.status().terminal:
            return self.status()
        self.rd.request_cancel()  # first: a worker that dies from now on is CANCELLED, not LOST
        # SIGTERM: the worker writes CANCELLED itself (exit code 143); SIGKILL after the grace
        # period: it cannot write anything, and status() records CANCELLED for it
        if not self._stop(signal.SIGTERM, self.grace) and not self._stop(signal.SIGKILL, 10.0):
            raise RuntimeError(f"run {self.run_id}: process group {self.pid} survived SIGKILL")
        return self.status()

    def _stop(self, sig: signal.Signals, seconds: float) -> bool:
        """Send ``sig`` to the run's process group; True once nothing of it is left."""
        if self._alive():  # never signal a group whose PID was reused
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
        deadline = time.monotonic() + seconds
        while self._alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self._alive()

    def logs(self, offset: int = 0) -> Iterator[tuple[int, str]]:
        # a last line without its newline may still grow; once the run ended it is complete
        yield from self.rd.read_log(offset, final=self.status().terminal)

    def fetch_outputs(self, dest: Path) -> None:
        # the worker wrote into the run directory itself: copy it unless it is ``dest``
        if Path(dest).resolve() != self.rd.path.resolve():
            shutil.copytree(self.rd.path, dest, dirs_exist_ok=True)


class SubprocessBackend(Backend):
    """Runs the worker as a detached process of the client's own interpreter."""

    name = "subprocess"
    Config = SubprocessConfig
    capabilities = frozenset({Capability.CANCEL, Capability.FOLLOW_LOGS, Capability.OUTPUTS,
                              Capability.GPU})
    config: SubprocessConfig

    def prepare(self, spec: RunSpec) -> Prepared:
        env, python, version = spec.env, sys.executable, platform.python_version()
        wrong_python = env.python is not None and not f"{version}.".startswith(f"{env.python}.")
        if env.requirements or env.base_image or env.apt or wrong_python:
            raise UserError(
                f"env {env.name}: backend subprocess runs {python} (Python {version}) as it is; "
                "it installs nothing and cannot pick another Python.",
                "use an env without requirements, base_image, apt or python (env=current), or a "
                "target whose backend builds environments (target=local, target=local_docker).")
        inputs = env_inputs(env, python=version, runner_hash=bundle_hash(), interpreter=python)
        key, known = env_key(inputs), cache_root() / "subprocess-envs"
        if (known / f"{key}.json").exists():
            return Prepared(key, True, "cached", {"python": python})
        reason = explain_miss(inputs, filter(None, map(read_json, known.glob("*.json"))))
        known.mkdir(parents=True, exist_ok=True)
        check = subprocess.run(  # once per key: a fresh interpreter, as the worker will be
            [python, "-c", "import runner.registry as r; r.collect(r.make_plugin_manager())"],
            capture_output=True, text=True, cwd=known)
        if check.returncode != 0:
            raise UserError(f"env {env.name}: {python} cannot load the worker and the plugins:",
                            *check.stderr.strip().splitlines()[-3:])
        write_json_atomic(known / f"{key}.json", inputs)
        return Prepared(key, False, reason, {"python": python})

    def submit(self, spec: RunSpec, prepared: Prepared) -> RunHandle:
        rd = RunDir(spec.run_dir)
        # the worker inherits the client's variables: the secrets the config references
        # (``request.secret_env``) reach it that way, never on a command line
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop(DATA_DIR_ENV, None)  # nothing is staged: the worker reads data in place
        gpus = spec.request.gpus if spec.request else None
        if gpus and gpus != "all":  # set, not left to the worker: it keeps an inherited value
            env["CUDA_VISIBLE_DEVICES"] = gpus
        with open(rd.log, "ab") as log:  # the worker's stdout and stderr are the run's log
            proc = subprocess.Popen(
                [str(prepared.details["python"]), "-m", "runner.worker", str(rd.path)], env=env,
                cwd=rd.path,  # not code/: a project's own `runner` module must not shadow ours
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)  # outlives the client; one process group to signal
        return SubprocessHandle(spec.run_id, rd.path, proc.pid, _start_time(proc.pid),
                                self.config.cancel_grace, proc)

    def reattach(self, run_id: str, run_dir: Path, locator: Mapping[str, Any]) -> RunHandle:
        return SubprocessHandle(run_id, run_dir, int(locator["pid"]), locator.get("started"),
                                self.config.cancel_grace)


@hookimpl
def runner_register_backends(register: Callable[[type[Backend]], None]) -> None:
    """Register the ``subprocess`` backend (``backend: subprocess`` in a target file)."""
    register(SubprocessBackend)
