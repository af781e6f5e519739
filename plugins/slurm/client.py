"""Running the Slurm commands (``sbatch``, ``squeue``, ``scontrol``, ``scancel``, ``sinfo``,
``sacct``) on the machine that submits, with the target's ``SLURM_CONF`` and a time limit."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from runner.errors import UserError
from runner.plugins.slurm.config import SlurmConfig


@dataclass(frozen=True)
class Result:
    """What one Slurm command printed and how it exited."""

    code: int  #: exit status
    out: str  #: standard output
    err: str  #: standard error, stripped

    @property
    def ok(self) -> bool:
        return self.code == 0

    def first_error(self) -> str:
        """The most telling line of stderr (sbatch prints the reason last)."""
        lines = [ln.strip() for ln in self.err.splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit status {self.code}"


class Slurm:
    """The Slurm client commands, as this target runs them."""

    def __init__(self, config: SlurmConfig) -> None:
        self.config = config

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.config.slurm_conf:
            env["SLURM_CONF"] = str(os.path.expanduser(self.config.slurm_conf))
        return env

    def available(self) -> bool:
        """True when the Slurm client commands are on PATH."""
        return shutil.which("sbatch") is not None and shutil.which("squeue") is not None

    def require(self) -> None:
        """Raise a clear error when this machine cannot submit to Slurm."""
        if not self.available():
            raise UserError(
                "the slurm backend needs the Slurm client commands (sbatch, squeue, scontrol, "
                "scancel), and they are not on PATH here.",
                "run runner on a machine that can submit jobs (the cluster's login node), or "
                "install the client: apt-get install slurm-client (then point target.slurm_conf "
                "at the cluster's slurm.conf).")

    def run(self, *argv: str, input: str | None = None) -> Result:
        """Run one command; a timeout or a missing program is a failed :class:`Result`."""
        try:
            p = subprocess.run(list(argv), capture_output=True, text=True, env=self.env(),
                               timeout=self.config.command_timeout, input=input,
                               stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return Result(124, "", f"{argv[0]} did not answer within {self.config.command_timeout:g} s")
        except OSError as e:
            return Result(127, "", f"{argv[0]}: {e.strerror or e}")
        return Result(p.returncode, p.stdout, p.stderr.strip())
