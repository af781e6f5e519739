"""A Slurm target: its keys, and how they become ``sbatch`` options."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from runner.backend import BackendConfig
from runner.errors import UserError
from runner.plugins._ssh import SSHTarget

#: Slurm's time formats: "MM", "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS"
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


@dataclass
class SlurmConfig(SSHTarget, BackendConfig):
    """The keys of a Slurm target. Without ``host``, ``runner`` runs on a machine that can
    submit to the cluster (a login node). With ``host``, it reaches that login node over SSH
    (the keys of the remote targets: ``user``, ``key``, ``ssh_config``, ``known_hosts`` ...,
    see :class:`~runner.plugins._ssh.SSHTarget`): every Slurm command runs there, and the
    runs, their code and the envs live in ``work_dir`` on the cluster, reached only over SSH."""

    backend: str = "slurm"  # this backend
    host: str = ""  # the login node to reach over SSH (a Host alias works); "" = this machine
    slots: int = 0  # runs of a sweep at once (the array's %K); 0 = no limit but max_parallel
    gpus: str | None = None  # GPUs each run asks for (a count: --gres=gpu:N); None = no GPU
    gres: str | None = None  # a full --gres request instead of gpus (e.g. "gpu:a100:1")
    partition: str | None = None  # --partition; None = the cluster's default partition
    account: str | None = None  # --account; None = your default account
    qos: str | None = None  # --qos; None = the account's default
    time_limit: str | None = None  # --time, in Slurm's format ("30", "2:00:00", "1-00:00:00")
    cpus_per_task: int = 1  # --cpus-per-task
    mem_mb: int | None = None  # --mem in MiB; None = the partition's default per CPU
    warn_before_s: int = 120  # seconds before the time limit at which the run is warned
    sbatch_args: list[str] | None = None  # further sbatch options, passed as they are
    #: a folder the compute nodes see (a shared file system): run directories are copied to
    #: runs/ there and envs built in envs/; None = runs stay in the project's .runner/runs and
    #: envs in the runner cache (both must then be on a shared file system). Required with
    #: ``host`` (a path on the cluster; ``~/`` is the login user's home there)
    work_dir: str | None = None
    slurm_conf: str | None = None  # SLURM_CONF for the Slurm commands (a path where they run)
    command_timeout: float = 30.0  # seconds any one Slurm command may take
    cancel_grace: float = 30.0  # seconds a cancel waits for the job to leave the queue


def check(c: SlurmConfig) -> None:
    """Refuse values Slurm would misread, naming the key."""
    if c.gpus is not None and c.gres is not None:
        raise UserError("target.gpus and target.gres are both set; each run asks for one gres.",
                        "keep target.gres for a typed request (gpu:a100:1), else target.gpus=N.")
    gpu_count(c.gpus)
    if c.time_limit is not None:
        time_limit_minutes(str(c.time_limit), "target.time_limit")
    if c.cpus_per_task < 1:
        raise UserError(f"target.cpus_per_task: must be at least 1, got {c.cpus_per_task}.")
    if c.mem_mb is not None and c.mem_mb < 1:
        raise UserError(f"target.mem_mb: must be a positive number of MiB, got {c.mem_mb}.")
    if c.warn_before_s < 0:
        raise UserError(f"target.warn_before_s: must be 0 or more seconds, got {c.warn_before_s}.")
    if c.host and not c.work_dir:
        raise UserError(f"target.work_dir is unset: a Slurm target reached over SSH "
                        f"(target.host={c.host}) keeps its runs, code and envs in a folder on "
                        "the cluster's shared file system.",
                        "set target.work_dir to such a folder (the compute nodes must mount it), "
                        "e.g. target.work_dir=~/runner-work or a path on /scratch.")
    if not c.host and c.slurm_conf is not None and not Path(c.slurm_conf).expanduser().is_file():
        raise UserError(f"target.slurm_conf: {c.slurm_conf} is not a file.",
                        "point it at the cluster's slurm.conf, or leave it unset to use the "
                        "cluster's own (/etc/slurm/slurm.conf or $SLURM_CONF).")


def gpu_count(gpus: str | int | None, where: str = "target.gpus") -> int:
    """The number of GPUs ``gpus`` asks for (0 for None)."""
    text = "" if gpus is None else str(gpus).strip()
    if text in ("", "none", "0"):
        return 0
    if text.isdigit():
        return int(text)
    raise UserError(f"{where}={gpus!r}: a Slurm run asks for a number of GPUs, not for devices.",
                    "give a count (target.gpus=1); Slurm picks the devices and sets "
                    "CUDA_VISIBLE_DEVICES. For a GPU type: target.gres=gpu:TYPE:N")


def time_limit_minutes(text: str, where: str) -> float | None:
    """Minutes in a Slurm time string; None for "UNLIMITED"/"INFINITE"."""
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = _TIME.match(text.strip())
    if m is None:
        raise UserError(f"{where}={text!r} is not a Slurm time.",
                        'valid: "MM", "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS".')
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        return days * 1440 + (a or 0) * 60 + (b or 0) + (c or 0) / 60
    if c is not None:  # HH:MM:SS
        return (a or 0) * 60 + (b or 0) + c / 60
    if b is not None:  # MM:SS
        return (a or 0) + b / 60
    return float(a or 0)  # MM


def gres_request(c: SlurmConfig, gpus: str | None) -> str | None:
    """The ``--gres`` value of a run: the target's gres, else ``gpu:N`` for its GPU count."""
    if c.gres:
        return str(c.gres)
    n = gpu_count(gpus)
    return f"gpu:{n}" if n else None


def sbatch_options(c: SlurmConfig, gpus: str | None) -> list[str]:
    """The sbatch options a target's keys give (no output file, no script)."""
    opts = []
    for flag, value in (("--partition", c.partition), ("--account", c.account),
                        ("--qos", c.qos), ("--time", c.time_limit)):
        if value not in (None, ""):
            opts.append(f"{flag}={value}")
    opts.append(f"--cpus-per-task={c.cpus_per_task}")
    if c.mem_mb:
        opts.append(f"--mem={c.mem_mb}M")
    gres = gres_request(c, gpus)
    if gres:
        opts.append(f"--gres={gres}")
    if c.warn_before_s:
        # B: to the batch shell only, which notes it in the log and warns the worker
        opts.append(f"--signal=B:USR1@{c.warn_before_s}")
    opts += [str(a) for a in (c.sbatch_args or [])]
    return opts
