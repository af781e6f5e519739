"""Running the Slurm commands (``sbatch``, ``squeue``, ``scontrol``, ``scancel``, ``sinfo``,
``sacct``) where jobs are submitted, with the target's ``SLURM_CONF`` and a time limit: on
this machine (:class:`Slurm`), or on the login node over SSH (:class:`SSHSlurm`)."""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass

from runner.errors import UserError
from runner.plugins._ssh import ConnectionLost, Session
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
    """The Slurm client commands, as this target runs them (on this machine)."""

    #: where the commands run, as messages name it
    where = "this machine"

    def __init__(self, config: SlurmConfig) -> None:
        self.config = config

    def cache_key(self) -> str:
        """What tells two clusters apart (one shared ``squeue`` listing per cluster)."""
        return self.env().get("SLURM_CONF", "")

    def user(self) -> str:
        """The user whose jobs these are."""
        return getpass.getuser()

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

    def run(self, *argv: str, retry: bool = True) -> Result:
        """Run one command; a timeout or a missing program is a failed :class:`Result`.
        ``retry``: the command may run twice (over SSH, after a dropped connection)."""
        try:
            p = subprocess.run(list(argv), capture_output=True, text=True, env=self.env(),
                               timeout=self.config.command_timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return Result(124, "", f"{argv[0]} did not answer within {self.config.command_timeout:g} s")
        except OSError as e:
            return Result(127, "", f"{argv[0]}: {e.strerror or e}")
        return Result(p.returncode, p.stdout, p.stderr.strip())


class SSHSlurm(Slurm):
    """The Slurm client commands run on the login node, through the target's SSH session
    (reopened after a dropped connection; a command that must not run twice is not retried)."""

    def __init__(self, config: SlurmConfig, session: Session) -> None:
        super().__init__(config)
        self.session = session

    @property
    def where(self) -> str:  # type: ignore[override]
        return self.session.label

    def cache_key(self) -> str:
        return f"{self.session.settings}|{self.config.slurm_conf or ''}"

    def user(self) -> str:
        return str(self.session.connect().user)

    def available(self) -> bool:
        return self.session.run("command -v sbatch && command -v squeue", timeout=60).ok

    def require(self) -> None:
        if self.available():
            return
        path = self.session.run('echo "$PATH"', timeout=60).stdout.strip()
        raise UserError(
            f"no Slurm on {self.where}: the Slurm client commands (sbatch, squeue, scontrol, "
            "scancel) are not on its PATH for SSH commands.",
            f"commands over SSH get a non-interactive PATH: {path}",
            "point target.host at the cluster's login node (where `sbatch` works), or put the "
            "Slurm commands on that PATH there (e.g. in ~/.ssh/environment or /etc/environment).")

    def run(self, *argv: str, retry: bool = True) -> Result:
        env = f"SLURM_CONF={shlex.quote(self.config.slurm_conf)} " if self.config.slurm_conf else ""
        # the shell reports its own time limit (124); the command's own is the same
        try:
            r = self.session.run(env + shlex.join(argv), timeout=self.config.command_timeout,
                                 retry=retry)
        except ConnectionLost:
            if retry:
                raise  # dropped twice: the caller decides (a handle waits for the host)
            self.session.drop()
            return Result(255, "", f"the connection to {self.where} dropped while {argv[0]} "
                                   "ran: whether it took effect is unknown (squeue shows)")
        return Result(r.returncode, r.stdout, r.stderr.strip())


def slurm_for(config: SlurmConfig, session: Session | None) -> Slurm:
    """The Slurm commands of a target: over ``session`` when it has a host."""
    return SSHSlurm(config, session) if session is not None else Slurm(config)
