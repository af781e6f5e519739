"""The handle of a run on a remote host: status from one command, logs by byte offset over
SFTP, cancel, and the run directory brought back when the run ends."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.backend import (
    RunHandle,
    RunState,
    RunStatus,
)
from runner.plugins import _docker as dk
from runner.plugins._shipping import fetch, mirror_log, write_final_status
from runner.plugins._ssh import Session
from runner.plugins.remote_docker.config import _q
from runner.rundir import LOG, RunDir, log_lines

if TYPE_CHECKING:
    from runner.plugins.remote_docker.backend import RemoteDockerBackend


# -- the handle ---------------------------------------------------------------------------------
class RemoteHandle(RunHandle):
    """A run container on a remote host's engine, its run directory there."""

    def __init__(self, backend: RemoteDockerBackend, run_id: str, run_dir: Path, container: str,
                 remote_dir: str) -> None:
        super().__init__(run_id)
        self.backend = backend
        self.rd = RunDir(run_dir)
        self.container = container
        self.remote_dir = remote_dir
        self.grace = backend.config.cancel_grace
        self._settled = False

    @property
    def session(self) -> Session:
        return self.backend.session

    @property
    def locator(self) -> dict[str, Any]:
        return {"host": self.session.label, "container": self.container,
                "remote_run_dir": self.remote_dir}

    # -- what the host says ------------------------------------------------------------------
    def _observe(self) -> tuple[RunStatus | None, dict[str, Any] | None, bool]:
        """(status.json on the host, the container's State or None when gone, cancel asked)."""
        d = self.backend.docker
        r = self.session.run(
            f"cat {_q(self.remote_dir)}/status.json 2>/dev/null; echo; echo '@@runner@@'; "
            f"[ -e {_q(self.remote_dir)}/cancel ] && echo cancel; echo '@@runner@@'; "
            f"{d} inspect --format '{{{{json .State}}}}' {_q(self.container)} 2>&1", timeout=60)
        status_text, cancel_text, state_text = (r.stdout.split("@@runner@@\n") + ["", ""])[:3]
        try:
            st = RunStatus.from_dict(json.loads(status_text)) if status_text.strip() else None
        except (json.JSONDecodeError, KeyError, ValueError):
            st = None
        state: dict[str, Any] | None
        if r.ok:
            state = json.loads(state_text.strip().splitlines()[-1])
        elif "no such" in state_text.lower():
            state = None
        else:
            raise RuntimeError(f"docker inspect on {self.session.label} failed: "
                               f"{state_text.strip() or r.last_error()}")
        return st, state, cancel_text.strip() == "cancel"

    def status(self) -> RunStatus:
        if self._settled:
            local = self.rd.status()
            if local is not None:
                return local
        st, state, cancelled = self._observe()
        if state is None and (st is None or not st.terminal):
            st, state, cancelled = self._observe()  # the same race, with a container removed
        if state is None:
            if st is not None and st.terminal:
                return self._settle(st, None, cancelled)
            return self._settle(None, None, cancelled)
        if state.get("Status") in dk.LIVE:
            return dk.running_status(st)
        if state.get("Status") == "created":
            return RunStatus(RunState.QUEUED)
        if st is None or not st.terminal:
            # status.json was read a moment before the engine was asked: a worker that wrote
            # its final status and exited in between must not be taken for lost. Read again,
            # now that the container is known to have ended.
            st, state, cancelled = self._observe()
        return self._settle(st, state, cancelled)

    def _settle(self, st: RunStatus | None, state: Mapping[str, Any] | None,
                cancelled: bool) -> RunStatus:
        """The run has ended: record the truth on the host, bring the run directory back,
        remove the container and verify it is gone."""
        final = dk.ended_status(st, state, cancelled=cancelled, memory=self.backend.config.memory,
                                gone=f"container {self.container} vanished on {self.session.label}")
        if final != st:
            final = write_final_status(self.session, self.remote_dir, final)
        try:
            self._fetch(self.rd.path)
        finally:
            self.backend.cli.remove(self.container)
            self.rd.write_status(final)
            self._settled = True
        return final

    def _fetch(self, dest: Path) -> None:
        fetch(self.session, self.backend.work_dir, self.run_id, self.remote_dir, dest,
              max_fetch_mb=self.backend.config.max_fetch_mb)

    # -- control -----------------------------------------------------------------------------
    def cancel(self) -> RunStatus:
        st = self.status()
        if st.terminal:
            self.backend.cli.remove(self.container)
            return st
        self.rd.request_cancel()
        d = self.backend.docker
        grace = max(1, math.ceil(self.grace))
        # `docker stop` waits the grace period out: started in the background on the host, so
        # that the cancels of several runs on one host (one SSH session, one command at a
        # time) wait their grace periods together, not one after another
        stop = f"{d} stop --time {grace} {_q(self.container)}"
        self.session.run(f"touch {_q(self.remote_dir)}/cancel; "
                         f"nohup sh -c {_q(stop)} >/dev/null 2>&1 </dev/null &", timeout=60)
        deadline = time.monotonic() + grace + 10
        while True:
            st2, state, _ = self._observe()
            running = state is not None and state.get("Status") in ("running", "paused")
            if not running or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        if running:
            self.session.run(f"{d} kill {_q(self.container)} >/dev/null 2>&1", timeout=60)
            st2, state, _ = self._observe()
        return self._settle(st2, state, True)

    # -- logs and outputs --------------------------------------------------------------------
    def logs(self, offset: int = 0) -> Iterator[tuple[int, str]]:
        if self._settled:
            yield from self.rd.read_log(offset, final=True)
            return
        data = self.session.read_file(f"{self.remote_dir}/{LOG}", offset)
        if not data:
            return
        mirror_log(self.rd.log, offset, data)
        yield from log_lines(data, offset, final=False)  # a partial line may still grow

    def fetch_outputs(self, dest: Path) -> None:
        if not self._settled:
            self.status()
        if Path(dest).resolve() == self.rd.path.resolve():
            return  # fetched when the run ended
        self._fetch(Path(dest))
