"""A run as a Slurm job: its status (the run directory first, Slurm for the rest), its
log (read by byte offset from the run directory the job writes), and its cancel (``scancel``,
verified). The run directory is reached through the target's :class:`.jobdirs.JobDirs`: on this
machine, or over the login node's SSH session."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.backend import RunHandle, RunState, RunStatus
from runner.plugins._shipping import mirror_log
from runner.plugins._ssh import ConnectionLost
from runner.plugins.slurm.client import Slurm
from runner.plugins.slurm.jobdirs import JobDirs
from runner.plugins.slurm.states import JobInfo, job_info
from runner.rundir import LOG, RunDir, log_lines

#: seconds between two questions to Slurm about one job (the run directory is read each time)
_ASK_EVERY = 1.0


class SlurmHandle(RunHandle):
    """One Slurm job running the worker on the run directory ``work`` (a path on the cluster).

    ``work`` is the project's own run directory, or its copy in the target's work dir; then
    ``home`` is the project's, and what the run wrote is brought home once it ended.
    """

    poll_interval = 0.5

    def __init__(self, run_id: str, slurm: Slurm, job_id: str, dirs: JobDirs, work: str,
                 home: Path, grace: float) -> None:
        super().__init__(run_id)
        self.slurm = slurm
        self.job_id = job_id
        self.dirs = dirs
        self.work = work
        self.home = RunDir(home)
        self.grace = grace
        self._asked: tuple[float, JobInfo | None] | None = None
        self._cancel_asked = False
        self._final: RunStatus | None = None
        self._last = RunStatus(RunState.QUEUED)

    @property
    def locator(self) -> dict[str, Any]:
        out = {"job_id": self.job_id, "work_run_dir": self.work}
        if self.dirs.host:
            out["host"] = self.dirs.host
        return out

    def _info(self, fresh: bool = False) -> JobInfo | None:
        now = time.monotonic()
        if fresh or self._asked is None or now - self._asked[0] >= _ASK_EVERY:
            self._asked = (now, job_info(self.slurm, self.job_id, fresh=fresh))
        return self._asked[1]

    def _read(self) -> RunStatus | None:
        st, self._cancel_asked = self.dirs.status(self.work)
        return st

    def status(self) -> RunStatus:
        if self._final is not None:
            return self._final
        try:
            self._last = self._observe()
        except ConnectionLost as e:  # the run goes on; the next poll reconnects
            return RunStatus(self._last.state, message=f"connection to {self.dirs.host} lost "
                                                       f"({e}); reconnecting")
        return self._last

    def _observe(self) -> RunStatus:
        st = self._read()
        if st is not None and st.terminal:
            return self._ended(st)
        info = self._info()
        if info is None or info.ended:
            st = self._read()  # the worker may have ended between the two reads
            if st is not None and st.terminal:
                return self._ended(st)
            if info is not None:
                final = info.run_status(self._cancel_asked)
            elif self._cancel_asked:
                final = RunStatus(RunState.CANCELLED, exit_code=None, message="cancelled")
            else:
                final = RunStatus(RunState.LOST, message=f"Slurm no longer knows job "
                                  f"{self.job_id} and the worker left no final status")
            return self._ended(self.dirs.write_status(self.work, final))
        if st is not None and st.state == RunState.RUNNING:
            return st
        return info.queued_status()

    def _ended(self, st: RunStatus) -> RunStatus:
        """A final status, corrected where the worker could not know why it was stopped, and
        (for a copy in the work dir) brought home."""
        if st.state in (RunState.CANCELLED, RunState.FAILED) and not self._cancel_asked:
            # no one asked runner to stop it: Slurm may have (time limit, memory, preemption, a
            # failed node, scancel by hand), signalling the worker and its children at once;
            # Slurm's own state says which, once the job has left the queue
            info = self._info()
            if info is not None and info.state == "PENDING":  # Slurm requeued it (a failed node)
                return RunStatus(RunState.QUEUED, message=f"requeued by Slurm ({info.reason}); "
                                                          "it starts again from the beginning")
            if info is not None and not info.ended:
                return RunStatus(RunState.RUNNING, message="stopping")
            if info is not None and info.state not in ("COMPLETED", "FAILED"):
                st = self.dirs.write_status(self.work, info.run_status(False))
        self.dirs.bring_home(self.run_id, self.work, self.home.path)
        if not self.dirs.same(self.work, self.home.path):
            self.home.write_status(st)
        self._final = st
        return st

    def cancel(self) -> RunStatus:
        st = self.status()
        if st.terminal:
            return st
        self.dirs.request_cancel(self.work)
        self._cancel_asked = True
        if not self.dirs.same(self.work, self.home.path):
            self.home.request_cancel()
        # the batch shell passes SIGTERM to the worker alone, which stops the model and writes
        # its final status; only then does the job end (a pending job just leaves the queue)
        info = self._info(fresh=True)
        if info is not None and info.state != "PENDING":
            self._scancel("--batch", "--signal=TERM")
        else:
            self._scancel()
        if not self._left(self.grace):
            self._scancel("--signal=KILL", "--full")  # every process of the job, now
            if not self._left(15.0):
                self._scancel()  # Slurm's own end of a job, SIGKILL after its KillWait
                if not self._left(30.0):
                    raise RuntimeError(f"run {self.run_id}: Slurm job {self.job_id} is still in "
                                       f"the queue after scancel: {self._info(fresh=True)}")
        self._info(fresh=True)  # not the shared listing, which may predate the cancel
        return self.status()

    def _scancel(self, *opts: str) -> None:
        r = self.slurm.run("scancel", *opts, self.job_id)
        if not r.ok and "Invalid job id" not in r.err:
            raise RuntimeError(f"scancel {self.job_id}: {r.first_error()}")

    def _left(self, seconds: float) -> bool:
        """Wait until the job has left the queue: ``squeue`` no longer lists it, not even as
        COMPLETING (its processes are gone). True if it did within ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            r = self.slurm.run("squeue", "-h", "-j", self.job_id, "-o", "%T")
            if (r.ok and not r.out.strip()) or "Invalid job id" in r.err:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    # -- logs and outputs ------------------------------------------------------------------
    def logs(self, offset: int = 0) -> Iterator[tuple[int, str]]:
        if self.dirs.same(self.work, self.home.path):
            final = self.status().terminal
            yield from self.home.read_log(offset, final=final)
            return
        if self._final is not None:  # brought home: the whole log is here
            yield from self.home.read_log(offset, final=True)
            return
        try:
            data = self.dirs.read(f"{self.work}/{LOG}", offset)
        except ConnectionLost:
            return  # the next read reconnects and goes on from the same offset
        if not data:
            return
        mirror_log(self.home.log, offset, data)  # `runner logs RUN` works offline
        yield from log_lines(data, offset, final=False)  # a partial line may still grow

    def fetch_outputs(self, dest: Path) -> None:
        if self._final is None:
            self.status()
        if Path(dest).resolve() != self.home.path.resolve():
            self.dirs.bring_home(self.run_id, self.work, Path(dest))
