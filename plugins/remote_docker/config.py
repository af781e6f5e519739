"""A remote Docker target: its keys, the names it uses on the host, and its SSH session."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from runner.errors import UserError
from runner.plugins import _docker as dk
from runner.plugins._ssh import Session, SSHTarget, session_of

#: Label on run containers that count against a host's slots.
L_SLOTS = f"{dk.LABEL}.slots"
#: Label on run containers: the data trees (digests, comma-separated) they mount.
L_DATA = f"{dk.LABEL}.data"
#: Exit code of the start script when every slot is busy.
_BUSY = 75


@dataclass
class RemoteDockerConfig(SSHTarget, dk.DockerTargetConfig):
    """The keys of a remote Docker target: those of every Docker target (``gpus``, ``docker``,
    ``memory`` ... apply to the host and its engine), and how to reach the host (``host``,
    ``user``, ``key``, ``ssh_config`` ...: see :class:`~runner.plugins._ssh.SSHTarget`)."""

    backend: str = "remote_docker"  # this backend
    work_dir: str = "~/.runner-remote"  # on the host: content store and run directories
    min_free_mb: int = 1024  # refuse to start a run when the work dir has less free space
    slot_wait: float = 3600.0  # seconds a submit waits for a free slot before giving up


# -- connections --------------------------------------------------------------------------------
def _attach_hint(c: RemoteDockerConfig, name: str = "<target>") -> str:
    parts = [name, "--host", c.host]
    for flag, value in (("--user", c.user), ("--port", c.port), ("--key", c.key),
                        ("--ssh-config", c.ssh_config), ("--known-hosts", c.known_hosts)):
        if value:
            parts += [flag, str(value)]
    return "runner attach " + shlex.join(parts) + " --force"


def session_for(c: RemoteDockerConfig, *, trust: str | None = None) -> Session:
    """The process-wide connection to the target's host."""
    if not c.host:
        raise UserError("target.host is empty: a remote_docker target needs the host to reach.",
                        "write one with: runner attach NAME --host HOST")
    return session_of(c, trust=trust, trust_hint=_attach_hint(c))


def _q(s: str) -> str:
    return shlex.quote(s)
