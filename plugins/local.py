"""The ``local`` backend: the worker as a detached process group on this machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
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
from runner.bundle import cache_root, worker_bundle
from runner.environment import build_venv, env_inputs, env_key, explain_miss
from runner.errors import UserError
from runner.proc import env_values, proc_stat
from runner.request import DATA_DIR_ENV
from runner.rundir import LocalDirHandleMixin, RunDir, disk_full, lost_or_cancelled


@dataclass
class LocalConfig(BackendConfig):
    backend: str = "local"  # this backend
    slots: int = 1  # concurrent runs (sweeps)
    gpus: str | None = None  # GPUs this machine offers to runs: None, "all" or "0,1"
    cancel_grace: float = 10.0  # seconds between SIGTERM and SIGKILL on cancel


def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of ``pid``, or None if it does not exist."""
    st = proc_stat(pid)
    return None if st is None else (st.state, st.pgid)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_state(int(entry))
            if st and st[1] == pgid and st[0] not in ("Z", "X"):
                out.append(int(entry))
    return out


def _start_time(pid: int) -> str | None:
    st = proc_stat(pid)
    return None if st is None else st.start_time


class LocalHandle(LocalDirHandleMixin, RunHandle):
    """A worker process group on this machine."""

    def __init__(
        self, run_id: str, run_dir: Path, pgid: int, start: str | None, grace: float,
        proc: subprocess.Popen[bytes] | None = None,
    ) -> None:
        super().__init__(run_id)
        self.rd = RunDir(run_dir)
        self.pgid = pgid
        self.start = start
        self.grace = grace
        self._proc = proc

    @property
    def locator(self) -> dict[str, Any]:
        return {"pgid": self.pgid, "start": self.start}

    def _alive(self) -> bool:
        if self._proc is not None:
            self._proc.poll()  # reap our own child so it does not linger as a zombie
        if self.start is not None and _start_time(self.pgid) not in (None, self.start):
            return False  # the PID was reused by an unrelated process; ours is gone
        return bool(group_members(self.pgid))

    def status(self) -> RunStatus:
        st = self.rd.status()
        if st is not None and st.terminal:
            return st
        if self._alive():
            return st or RunStatus(RunState.QUEUED)
        st = self.rd.status()  # it may have finished between the two reads
        if st is not None and st.terminal:
            return st
        code = self._proc.returncode if self._proc is not None else None
        why = "the worker process ended without a final status"
        if code is not None and code < 0:
            why += f" (killed by signal {-code})"
        final = lost_or_cancelled(self.rd, why)
        if final.state == RunState.LOST and disk_full(self.rd.path):
            # not lost: it could not record its end (nor, likely, go on) on a full disk
            final = RunStatus(RunState.FAILED, message=(
                f"the disk holding the run directory ({self.rd.path}) is full: the worker "
                "could not record how the run ended; free space there (its log says more)"))
        if code is not None:
            final = RunStatus(final.state, exit_code=128 - code if code < 0 else code, message=final.message)
        try:
            self.rd.write_status(final)
        except OSError as e:  # a full disk: the ledger still records it
            print(f"warning: cannot write the final status of run {self.rd.path.name}: {e}",
                  file=sys.stderr)
        return final

    def _strays(self) -> list[int]:
        """Processes of the run that left its process group (a new session or group of their
        own): they still carry the run's ``RUNNER_RUN_DIR``, which the worker sets for all."""
        mine = self.rd.path.resolve()
        group = set(group_members(self.pgid)) if self._alive() else set()
        return [pid for pid, value in env_values("RUNNER_RUN_DIR").items()
                if pid not in group and pid != os.getpid() and Path(value).resolve() == mine]

    def _anything_left(self) -> bool:
        return self._alive() or bool(self._strays())

    def cancel(self) -> RunStatus:
        st = self.status()
        if st.terminal:
            self._kill_strays(signal.SIGKILL)  # a run that ended leaves nothing running either
            return st
        self.rd.request_cancel()
        self._signal(signal.SIGTERM)
        self._kill_strays(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while self._anything_left() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._anything_left():
            self._signal(signal.SIGKILL)
            self._kill_strays(signal.SIGKILL)
            deadline = time.monotonic() + 10
            while self._anything_left() and time.monotonic() < deadline:
                time.sleep(0.05)
        if self._alive():
            raise RuntimeError(f"run {self.run_id}: process group {self.pgid} survived SIGKILL")
        left = self._strays()
        if left:
            raise RuntimeError(f"run {self.run_id}: processes {left} survived SIGKILL")
        return self.status()

    def _signal(self, sig: int) -> None:
        if not self._alive():
            return  # never signal a group whose leader's PID now names another process
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass

    def _kill_strays(self, sig: int) -> None:
        for pid in self._strays():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass



def _check_local(c: LocalConfig) -> None:
    if c.slots < 1:
        raise UserError(f"target.slots: must be at least 1 (runs at once on this machine), "
                        f"got {c.slots}.")
    if c.cancel_grace < 0:
        raise UserError(f"target.cancel_grace: must be 0 or more seconds, got {c.cancel_grace}.")


class LocalBackend(Backend):
    """Runs the worker as a detached process group; envs are cached virtualenvs."""

    name = "local"
    Config = LocalConfig
    capabilities = frozenset({Capability.CANCEL, Capability.FOLLOW_LOGS, Capability.OUTPUTS,
                              Capability.GPU, Capability.VENV})
    config: LocalConfig

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        _check_local(self.config)

    # -- environments ---------------------------------------------------------
    def _python_for(self, version: str | None) -> str:
        if version is None or sys.version.startswith(version + ".") or sys.version.split()[0] == version:
            return sys.executable
        exe = shutil.which(f"python{version}")
        if exe is None:
            raise UserError(
                f"env.python: Python {version} is not installed on this machine "
                f"(no python{version} on PATH).",
                f"this machine has Python {sys.version.split()[0]}; set env.python to it, or install {version}.",
            )
        return exe

    def prepare(self, spec: RunSpec) -> Prepared:
        if spec.env.is_current:
            return Prepared(
                env_key=f"current-py{sys.version.split()[0]}",
                cached=True,
                reason="cached (env=current: the running interpreter, nothing to build)",
                details={"python": sys.executable},
            )
        py = self._python_for(spec.env.python)
        version = subprocess.run(
            [py, "-c", "import platform; print(platform.python_version())"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        bundle, bundle_key = worker_bundle()
        inputs = env_inputs(spec.env, python=version, runner_hash=bundle_key)
        key = env_key(inputs)
        root = cache_root() / "venvs"
        venv = root / key
        if (venv / ".complete").exists():
            return Prepared(key, True, "cached", {"python": str(venv / "bin" / "python")})
        cached = [
            json.loads(p.read_text()) for p in sorted(root.glob("*/inputs.json"))
            if (p.parent / ".complete").exists()
        ] if root.is_dir() else []
        reason = explain_miss(inputs, cached)
        print(f"[runner] env {spec.env.name}: {reason}; building virtualenv {key}", flush=True)
        build_venv(venv, py, inputs, bundle)
        return Prepared(key, False, reason, {"python": str(venv / "bin" / "python")})

    # -- runs -----------------------------------------------------------------
    def submit(self, spec: RunSpec, prepared: Prepared) -> RunHandle:
        rd = RunDir(spec.run_dir)
        python = str(prepared.details.get("python") or sys.executable)
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        # data is read in place here; a staging folder set for this client (a run that
        # submits runs) must not redirect the worker
        env.pop(DATA_DIR_ENV, None)
        if spec.gpus not in (None, "", "all"):
            env["CUDA_VISIBLE_DEVICES"] = str(spec.gpus)
        with open(rd.log, "ab") as log:
            proc = subprocess.Popen(
                [python, "-m", "runner.worker", str(rd.path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=rd.path, env=env, start_new_session=True,
            )
        return LocalHandle(spec.run_id, rd.path, proc.pid, _start_time(proc.pid),
                           self.config.cancel_grace, proc)

    def reattach(self, run_id: str, run_dir: Path, locator: Mapping[str, Any]) -> RunHandle:
        return LocalHandle(run_id, run_dir, int(locator["pgid"]), locator.get("start"),
                           self.config.cancel_grace)


@hookimpl
def runner_register_backends(register: Any) -> None:
    register(LocalBackend)
