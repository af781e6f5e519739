"""What Slurm says about a job, and what that means for a run.

The run directory's ``status.json`` (written by the worker) is the first witness; Slurm is
asked only for what the worker cannot say: that the job still waits in the queue, or how it
ended when the worker was killed (time limit, memory, preemption, a failed node, a cancel).
Slurm is asked with ``scontrol show job`` (live jobs and those ended within ``MinJobAge``),
then ``sacct`` where the cluster keeps accounting.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from runner.backend import RunState, RunStatus
from runner.errors import UserError
from runner.plugins.slurm.client import Slurm

#: Slurm's end states, with the run state and the one line each gives
_ENDED: dict[str, tuple[RunState, str]] = {
    "COMPLETED": (RunState.LOST, "the Slurm job ended without the worker's final status"),
    "FAILED": (RunState.FAILED, "the Slurm job failed"),
    "CANCELLED": (RunState.CANCELLED, "the Slurm job was cancelled (scancel)"),
    "TIMEOUT": (RunState.FAILED, "killed at the Slurm time limit (TIMEOUT) before it "
                                  "stopped by itself; raise target.time_limit, or "
                                  "target.warn_before_s to give it time to save a checkpoint"),
    "OUT_OF_MEMORY": (RunState.FAILED, "killed for using more memory than it asked for "
                                       "(Slurm OUT_OF_MEMORY); raise target.mem_mb"),
    "PREEMPTED": (RunState.LOST, "preempted by Slurm for a job of higher priority (PREEMPTED)"),
    "NODE_FAIL": (RunState.LOST, "its node failed (Slurm NODE_FAIL)"),
    "BOOT_FAIL": (RunState.LOST, "its node failed to boot (Slurm BOOT_FAIL)"),
    "DEADLINE": (RunState.FAILED, "not started before its deadline (Slurm DEADLINE)"),
    "REVOKED": (RunState.LOST, "revoked by Slurm (REVOKED)"),
}
_FIELD = re.compile(r"(\w+)=(\S*)")


@dataclass(frozen=True)
class JobInfo:
    """One job as Slurm reports it."""

    state: str  #: Slurm's state name (PENDING, RUNNING, TIMEOUT ...)
    exit_code: int | None = None  #: the batch script's exit status
    signal: int = 0  #: the signal that killed it, 0 for none
    reason: str = ""  #: why it waits or ended (Priority, Resources, TimeLimit ...)

    @property
    def ended(self) -> bool:
        return self.state in _ENDED

    def run_status(self, cancel_requested: bool) -> RunStatus:
        """The run's status for a job that ended without the worker's final status."""
        state, why = _ENDED.get(self.state, (RunState.LOST, f"the Slurm job ended ({self.state})"))
        if cancel_requested and self.state in ("CANCELLED", "COMPLETED", "FAILED"):
            return RunStatus(RunState.CANCELLED, exit_code=None, message="cancelled")
        code = 128 + self.signal if self.signal else self.exit_code
        return RunStatus(state, exit_code=code, oom=self.state == "OUT_OF_MEMORY", message=why)

    def queued_status(self) -> RunStatus:
        """The run's status while the job is live and the worker has said nothing yet."""
        if self.state == "PENDING":
            return RunStatus(RunState.QUEUED, message=f"waiting in the Slurm queue ({self.reason})"
                             if self.reason and self.reason != "None" else "")
        return RunStatus(RunState.RUNNING)


def _exit(text: str) -> tuple[int | None, int]:
    code, _, sig = text.partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return None, 0


def parse_scontrol(text: str) -> JobInfo | None:
    """The job in ``scontrol -o show job ID`` output (the first record: an array's own)."""
    line = next((ln for ln in text.splitlines() if "JobState=" in ln), "")
    fields = dict(_FIELD.findall(line))
    if "JobState" not in fields:
        return None
    code, sig = _exit(fields.get("ExitCode", ""))
    return JobInfo(fields["JobState"], code, sig, fields.get("Reason", ""))


def parse_sacct(text: str) -> JobInfo | None:
    """The job in ``sacct -X -n -P -o State,ExitCode,Reason`` output."""
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) >= 2 and parts[0]:
            code, sig = _exit(parts[1])
            return JobInfo(parts[0].split()[0], code, sig, parts[2] if len(parts) > 2 else "")
    return None


#: seconds one ``squeue`` listing of this user's jobs answers for every run of this client
_QUEUE_TTL = 1.0
_queues: dict[str, tuple[float, dict[str, JobInfo]]] = {}


def _queue(slurm: Slurm) -> dict[str, JobInfo]:
    """This user's live jobs, one line per array task (``squeue -r``), from one ``squeue``
    a second for all the runs this client watches (a sweep of a hundred runs asks once, not a
    hundred times); empty when squeue does not answer."""
    key = slurm.cache_key()
    now = time.monotonic()
    hit = _queues.get(key)
    if hit is not None and now - hit[0] < _QUEUE_TTL:
        return hit[1]
    r = slurm.run("squeue", "-h", "-r", "-u", slurm.user(), "-o", "%i|%T|%r")
    jobs: dict[str, JobInfo] = {}
    for line in r.out.splitlines() if r.ok else ():
        parts = line.strip().split("|")
        if len(parts) == 3:
            jobs[parts[0]] = JobInfo(parts[1], reason=parts[2])
    _queues[key] = (now, jobs)
    return jobs


def job_info(slurm: Slurm, job_id: str, *, fresh: bool = False) -> JobInfo | None:
    """What Slurm knows of ``job_id`` now; None when it has forgotten it (or never knew it).

    A live job is found in the shared ``squeue`` listing (up to a second old; ``fresh`` asks
    about this job alone); a job that is not there (ended, or submitted since the listing) is
    asked about alone, where its exit status is."""
    live = None if fresh else _queue(slurm).get(job_id)
    if live is not None and not live.ended:
        return live
    r = slurm.run("scontrol", "-o", "show", "job", job_id)
    if r.ok:
        info = parse_scontrol(r.out)
        if info is not None:
            return info
    if not r.ok and "Invalid job id" not in r.err:
        raise UserError(f"cannot ask Slurm about job {job_id}: scontrol says: {r.first_error()}",
                        "check that the controller answers (scontrol ping) and that SLURM_CONF "
                        "or target.slurm_conf names the cluster's slurm.conf.")
    acct = slurm.run("sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State,ExitCode,Reason")
    return parse_sacct(acct.out) if acct.ok else None  # exit 1: the cluster keeps no accounting
