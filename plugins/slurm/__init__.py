"""The built-in ``slurm`` backend: each run is one Slurm batch job.

Modules, one concern each: ``config`` (the target's keys and the sbatch options they give),
``client`` (running the Slurm commands, here or over SSH), ``jobdirs`` (the jobs' files, as the
client reaches them: here, or over SSH), ``cluster`` (what ``sinfo`` says, and the checks of a
target against it), ``envs`` (the interpreter or virtualenv a run uses), ``script`` (the batch
script), ``states`` (Slurm's job states as run states), ``handle`` (status, logs, cancel),
``backend`` (prepare and submit) and ``doctor``.

``runner`` runs where jobs can be submitted (the login node), and the run directory (or its
copy in ``work_dir``) must be on a file system the compute nodes mount; or, with
``target.host``, it reaches the login node over SSH and keeps everything in ``work_dir`` on
the cluster, read and written only through that session.
"""

from __future__ import annotations

from typing import Any

from runner import hookimpl


@hookimpl
def runner_register_backends(register: Any) -> None:
    from runner.plugins.slurm.backend import SlurmBackend

    register(SlurmBackend)
