"""A run as a Slurm job: its status (the run directory first, Slurm for the rest), its
log (read by byte offset from the run directory), and its cancel (``scancel``, verified)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from runner.backend import RunHandle, RunState, RunStatus
from runner.plugins.slurm.client import Slurm
from runner.plugins.slurm.states import JobInfo, job_info
from runner.rundir import LocalDirHandleMixin, RunDir, lost_or_cancelled, safe_copy_tree

#: seconds between two questions to Slurm about one job (the run directory is read each time)
_ASK_EVERY = 1.0


class SlurmHandle(LocalDirHandleMixin, RunHandle):
    """One Slurm job running the worker on a run directory the compute node sees.

    ``rd`` is that run directory: the project's own, or its copy in the target's work dir
    (then ``home`` is the project's, and what the run wrote is copied back once it ended).
    """

    poll_interval = 0.5

    def __init__(self, run_id: str, slurm: Slurm, job_id: str, run_dir: Path, home: Path,
                 grace: float) -> None:
        super().__init__(run_id)
        self.slurm = slurm
        self.job_id = job_id
        self.rd = RunDir(run_dir)
        self.home = RunDir(home)
        self.grace = grace
        self._asked: tuple[float, JobInfo | None] | None = None
        self._synced = False

    @property
    def locator(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "work_run_dir": str(self.rd.path)}

    def _info(self, fresh: bool = False) -> JobInfo | None:
        now = time.monotonic()
        if fresh or self._asked is None or now - self._asked[0] >= _ASK_EVERY:
            self._asked = (now, job_info(self.slurm, self.job_id, fresh=fresh))
        return self._asked[1]

    def status(self) -> RunStatus:
        st = self.rd.status()
        if st is not None and st.terminal:
            return self._ended(st)
        info = self._info()
        if info is None or info.ended:
            st = self.rd.status()  # the worker may have ended between the two reads
            if st is not None and st.terminal:
                return self._ended(st)
            if info is None:
                final = lost_or_cancelled(self.rd, f"Slurm no longer knows job {self.job_id} and "
                                                   "the worker left no final status")
            else:
                final = info.run_status(self.rd.cancel_requested)
            self.rd.write_status(final)
            return self._ended(final)
        if st is not None and st.state == RunState.RUNNING:
            return st
        return info.queued_status()

    def _ended(self, st: RunStatus) -> RunStatus:
        """A final status, corrected where the worker could not know why it was stopped, and
        (for a copy in the work dir) brought home."""
        if st.state in (RunState.CANCELLED, RunState.FAILED) and not self.rd.cancel_requested:
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
                st = info.run_status(False)
                self.rd.write_status(st)
        if not self._synced and self.home.path.resolve() != self.rd.path.resolve():
            safe_copy_tree(self.rd.path, self.home.path)
        self._synced = True
        return st

    def cancel(self) -> RunStatus:
        st = self.status()
        if st.terminal:
            return st
        self.rd.request_cancel()
        if self.home.path.resolve() != self.rd.path.resolve():
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
