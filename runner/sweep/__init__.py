"""Sweeps: every job of a Hydra sweep submitted through its target's backend at once.

A :class:`Sweep` is what ``runner submit -m`` (through the ``runner`` Hydra launcher in
``hydra_plugins/runner_launcher``) and ``runner sweep SWEEP --resume`` drive. It

- takes the code snapshot **once** (``.runner/sweeps/SWEEP/code``) and prepares each distinct
  environment once, so every job of the sweep runs the same code and env however long it lasts;
- records the sweep in the ledger, and each job's *key*: a hash of the job's composed config,
  the snapshot's manifest and the env key (``--skip-done`` reuses a job whose key succeeded);
- submits jobs detached, at most ``max_parallel`` at once and at most the target's ``slots``
  (``slots: 0`` lets the backend place runs itself, as Ray does), each with its own GPU when
  the target lists GPUs;
- prints one line per job state change and every job's log prefixed by ``[job N]``, and ends
  with a table of jobs, states and key metrics;
- keeps going when a job fails, unless ``fail_fast``; Ctrl-C or ``runner cancel SWEEP``
  cancels every job and leaves nothing running.

The sweep's folder also keeps each job's resolved config (``jobs/NUM.json``), so a resume
re-runs exactly the jobs that were asked for, without composing anything again.
"""

from __future__ import annotations

from runner.sweep.capacity import Capacity
from runner.sweep.keys import job_key, swept_keys
from runner.sweep.record import SweepJob, mark_cancelled, resume, show, sweep_jobs
from runner.sweep.session import RESUMABLE, SKIPPED, Job, JobFailed, Sweep, SweepCancelled

__all__ = ["RESUMABLE", "SKIPPED", "Capacity", "Job", "JobFailed", "Sweep", "SweepCancelled",
           "SweepJob", "job_key", "mark_cancelled", "resume", "show", "sweep_jobs", "swept_keys"]
