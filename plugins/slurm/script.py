"""The batch script of a run: the worker, started by the job's shell, which also passes on
Slurm's signals and exits with the worker's status.

- a cancel (scancel: SIGTERM to the batch shell) reaches the worker as SIGTERM, which stops the
  model gracefully (it saves a checkpoint) within the cluster's KillWait;
- the time-limit warning (``--signal=B:USR1@warn_before_s``) stops the run the same way, after
  writing ``stop_reason`` in the run directory, so the run ends with its checkpoint saved and
  the reason recorded (FAILED: "stopped at the time limit ..."), before Slurm would kill it.
"""

from __future__ import annotations

import shlex

#: the batch script's name in the run directory
SCRIPT = "slurm.sh"


def batch_script(*, run_id: str, python: str, run_dir: str, gpus_requested: bool,
                 warn_before_s: int, own_log: bool = False, staged_data: str | None = None,
                 time_limit: str | None = None) -> str:
    """The text of the batch script that runs the worker on ``run_dir``; ``own_log``: it
    sends its output to the run's log itself (an array task, whose sbatch --output is shared);
    ``staged_data``: the folder that holds the run's data inputs (None: read in place)."""
    q = shlex.quote
    limit_reason = (f"stopped at the time limit of its Slurm job (target.time_limit={time_limit},"
                    f" warned {warn_before_s} s before)")
    lines = [
        "#!/bin/bash",
        f"# written by runner for run {run_id}; sbatch takes its options on the command line",
        f"cd {q(run_dir)} || exit 1",
    ]
    if own_log:
        lines.append("exec >>log.txt 2>&1")
    lines += [
        "export PYTHONUNBUFFERED=1",
        f"export RUNNER_STAGED_DATA={q(staged_data)}" if staged_data else
        "unset RUNNER_STAGED_DATA  # data is read in place, on the shared file system",
        # secrets a run shipped over SSH: a 0600 file of NAME=VALUE lines, never on a command
        # line (kept until the job ends: Slurm may requeue it; never fetched)
        "if [ -f .runner-env ]; then while IFS= read -r kv; do export \"$kv\"; done < .runner-env; fi",
    ]
    if not gpus_requested:  # a run without GPUs must not see the submitter's devices
        lines.append("unset CUDA_VISIBLE_DEVICES")
    lines += [
        # its own process group, so that a cancel reaches the worker and the model's processes
        # together, as on the other backends (setsid runs in place in a background child)
        f"setsid {q(python)} -m runner.worker {q(run_dir)} &",
        "pid=$!",
        # the worker treats SIGTERM as a cancel and writes its final status
        "trap 'kill -TERM -- -$pid 2>/dev/null' TERM",
        # the time-limit warning: say so, record why, and stop the run as a cancel would
        "on_limit() {",
        f"  echo \"[runner] Slurm: the job reaches its time limit in about {warn_before_s} s: "
        "the model saves a checkpoint and stops\"",
        f"  printf '%s\\n' {q(limit_reason)} > stop_reason",
        "  kill -TERM -- -$pid 2>/dev/null",
        "}",
        "trap on_limit USR1",
        "while kill -0 $pid 2>/dev/null; do wait $pid; done",
        "wait $pid",
        "rc=$?",
        "rm -f .runner-env",
        "exit $rc",
        "",
    ]
    return "\n".join(lines)


def array_script(manifest: str) -> str:
    """The batch script of a job array: task N runs the batch script on line N+1 of
    ``manifest`` (the runs' own ``slurm.sh``, which then is the task's shell)."""
    q = shlex.quote
    return "\n".join([
        "#!/bin/bash",
        "# written by runner: one task per run, the run's batch script on the task's line",
        f'script=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {q(manifest)})',
        '[ -n "$script" ] || { echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 1; }',
        'exec /bin/bash "$script"',
        "",
    ])
