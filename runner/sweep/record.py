"""Reading a sweep back from the ledger: its jobs and their latest runs, `runner sweep SWEEP`,
``--resume`` of the jobs that did not succeed, and the cancel marker a launcher obeys."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from runner.backend import RunState
from runner.errors import UserError
from runner.launch import Runs
from runner.rundir import RunDir, read_json
from runner.store import RunRecord
from runner.sweep.session import RESUMABLE, SKIPPED, Sweep
from runner.views import attempt_label, jobs_table


@dataclass(frozen=True)
class SweepJob:
    """One job of a recorded sweep and its latest run."""

    num: int
    key: str
    overrides: list[str]
    choices: dict[str, str]
    config: dict[str, Any]
    run: RunRecord | None  #: the newest run of this job (None if it never got one)
    reused: bool = False  #: the run is from another sweep (the job was skipped as done)


def sweep_jobs(runs: Runs, sweep_id: str) -> list[SweepJob]:
    """The jobs of a recorded sweep, each with its newest run (refreshed from the target)."""
    if runs.store.sweep(sweep_id) is None:
        recent = _recent_sweeps(runs)
        raise UserError(f"no sweep '{sweep_id}' in the ledger at {runs.store.home}.",
                        f"recent sweeps: {', '.join(recent)}" if recent else
                        "no sweeps yet: `runner submit -m key=a,b` starts one.")
    home = runs.store.home / "sweeps" / sweep_id / "jobs"
    latest: dict[str, RunRecord] = {}
    for r in runs.store.list(sweep_id=sweep_id):  # newest first
        if r.job_key and r.job_key not in latest:
            latest[r.job_key] = runs.refresh(r) if not r.state.terminal else r
    out = []
    for path in sorted(home.glob("*.json"), key=lambda p: int(p.stem)) if home.is_dir() else []:
        data = read_json(path) or {}
        rec: RunRecord | None = latest.get(data["key"])
        reused = False
        if rec is None:
            rec = runs.store.find_by_job_key(data["key"], RunState.SUCCEEDED)
            reused = rec is not None
        out.append(SweepJob(int(data["num"]), data["key"], list(data["overrides"]),
                            dict(data["choices"]), dict(data["config"]), rec, reused))
    return out


def _recent_sweeps(runs: Runs, n: int = 5) -> list[str]:
    seen: list[str] = []
    for rec in runs.store.list(limit=200):
        if rec.sweep_id and rec.sweep_id not in seen:
            seen.append(rec.sweep_id)
    return seen[:n]


def mark_cancelled(runs: Runs, sweep_id: str) -> None:
    """Tell a launcher still driving ``sweep_id`` (in another process) to stop starting jobs."""
    home = runs.store.home / "sweeps" / sweep_id
    home.mkdir(parents=True, exist_ok=True)
    (home / "cancel").touch()


def show(runs: Runs, sweep_id: str) -> int:
    """``runner sweep SWEEP``: the sweep's jobs, their latest runs, states and metrics."""
    jobs = sweep_jobs(runs, sweep_id)
    info = runs.store.sweep(sweep_id) or {}
    objective = (info.get("info") or {}).get("objective")
    rows = []
    for j in jobs:
        rec = j.run
        state = rec.state.value if rec else "NOT STARTED"
        if j.reused and rec is not None:
            state = SKIPPED
        took = ((rec.finished or time.time()) - rec.created) if rec else None
        rows.append((j.num, j.overrides, attempt_label(rec.id, rec.attempt) if rec else None, state,
                     dict(rec.summary) if rec else {}, took))
    jobs_table(sweep_id, rows, objective, stderr=False)
    todo = [j for j in jobs if j.run is None or j.run.state in RESUMABLE]
    if todo:
        print(f"{len(todo)} job(s) failed, were cancelled or lost: `runner sweep {sweep_id} --resume` "
              "runs them again.", file=sys.stderr)
    return 0


def resume(runs: Runs, sweep_id: str, *, fail_fast: bool = False, max_parallel: int | None = None,
           on_sweep: Callable[[Sweep], None] | None = None) -> int:
    """``runner sweep SWEEP --resume``: run again only the jobs whose latest run failed, was
    cancelled or was lost, with the sweep's snapshot and the configs recorded at submit."""
    jobs = sweep_jobs(runs, sweep_id)
    info = (runs.store.sweep(sweep_id) or {}).get("info") or {}
    todo = [j for j in jobs if j.run is None or (j.run.state in RESUMABLE and not j.reused)]
    running = [j for j in jobs if j.run is not None and not j.run.state.terminal]
    if running:
        raise UserError(
            f"sweep {sweep_id} still has {len(running)} running job(s) "
            f"({', '.join(j.run.id for j in running if j.run)}).",
            f"wait for them, or `runner cancel {sweep_id}` first.")
    sweep = Sweep(runs, sweep_id=sweep_id, fail_fast=fail_fast, max_parallel=max_parallel,
                  objective=info.get("objective"))
    if on_sweep:
        on_sweep(sweep)
    if not sweep.code_dir.is_dir():
        raise UserError(f"sweep {sweep_id}: its code snapshot ({sweep.code_dir}) is gone.",
                        "the jobs cannot be re-run with the code they were submitted with.")
    if not todo:
        sweep._say(f"sweep {sweep_id}: nothing to resume, every job succeeded.")
        return 0
    sweep._cancel_marker().unlink(missing_ok=True)
    sweep._say(f"sweep {sweep_id}: resuming {len(todo)} of {len(jobs)} jobs "
               f"({', '.join(str(j.num) for j in todo)})")
    for j in todo:
        # a job whose last run left a checkpoint goes on from it, as `runner resume` would
        last = j.run if j.run is not None and RunDir(j.run.run_dir).has_checkpoint() else None
        sweep.add(j.num, OmegaConf.create(j.config), j.overrides, j.choices, key=j.key,
                  continues=last)
    try:
        sweep.run(sweep.jobs)
    finally:
        show(runs, sweep_id)  # the whole sweep, with the jobs that had succeeded before
    return sweep.exit_code()
