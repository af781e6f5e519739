"""A remote Docker target: its keys, the names it uses on the host, and its SSH session."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from runner.errors import UserError
from runner.plugins import _docker as dk
from runner.plugins._ssh import Session, SSHSettings
from runner.rundir import CODE, LOG, OUTPUTS

#: Label on run containers that count against a host's slots.
L_SLOTS = f"{dk.LABEL}.slots"
#: Label on run containers: the data trees (digests, comma-separated) they mount.
L_DATA = f"{dk.LABEL}.data"
#: Exit code of the start script when every slot is busy.
_BUSY = 75
#: Written into the local run directory at submit: where the run lives on the host.
REMOTE_JSON = "remote.json"
#: What a file system says when a write fails (the line worth showing).
_FS_ERRORS = ("No space left", "Read-only", "Permission denied", "Not a directory",
              "Disk quota exceeded")
#: Files of the local run directory that never travel (the worker writes them on the target).
#: ``metrics.jsonl`` does: a resumed run starts with its parent's, and a new run has none.
_NOT_SHIPPED = {CODE, OUTPUTS, LOG, "worker.json", "status.json", "cancel", REMOTE_JSON}


@dataclass
class RemoteDockerConfig(dk.DockerTargetConfig):
    """The keys of a remote Docker target: those of every Docker target (``gpus``, ``docker``,
    ``memory`` ... apply to the host and its engine), and how to reach the host."""

    backend: str = "remote_docker"  # this backend
    host: str = ""  # host name, address, or a Host alias of the ssh_config file
    user: str | None = None  # login user (default: the ssh_config's User, else your local user)
    port: int | None = None  # SSH port (default: the ssh_config's Port, else 22)
    key: str | None = None  # private key file (the SSH agent is used too); never a password
    ssh_config: str | None = None  # ssh_config file for aliases/ProxyCommand (default ~/.ssh/config)
    known_hosts: str | None = None  # known_hosts file checked (default: ssh_config's, else ~/.ssh/known_hosts)
    work_dir: str = "~/.runner-remote"  # on the host: content store and run directories
    min_free_mb: int = 1024  # refuse to start a run when the work dir has less free space
    max_fetch_mb: int = 2048  # outputs larger than this stay on the host (with a message)
    slot_wait: float = 3600.0  # seconds a submit waits for a free slot before giving up
    connect_timeout: float = 15.0  # seconds for the SSH connection and handshake


# -- connections --------------------------------------------------------------------------------
_SESSIONS: dict[tuple[SSHSettings, str | None], Session] = {}


def _settings(c: RemoteDockerConfig) -> SSHSettings:
    return SSHSettings(host=c.host, user=c.user, port=c.port, key=c.key, ssh_config=c.ssh_config,
                       known_hosts=c.known_hosts, connect_timeout=c.connect_timeout)


def _attach_hint(c: RemoteDockerConfig, name: str = "<target>") -> str:
    parts = [name, "--host", c.host]
    for flag, value in (("--user", c.user), ("--port", c.port), ("--key", c.key),
                        ("--ssh-config", c.ssh_config), ("--known-hosts", c.known_hosts)):
        if value:
            parts += [flag, str(value)]
    return "runner attach " + shlex.join(parts) + " --force"


def session_for(c: RemoteDockerConfig, *, trust: str | None = None) -> Session:
    """The process-wide connection to the target's host (prepare, submit and every handle of
    one client share it)."""
    if not c.host:
        raise UserError("target.host is empty: a remote_docker target needs the host to reach.",
                        "write one with: runner attach NAME --host HOST")
    key = (_settings(c), trust)
    s = _SESSIONS.get(key)
    if s is None:
        s = _SESSIONS[key] = Session(key[0], trust=trust, trust_hint=_attach_hint(c))
    return s


def _q(s: str) -> str:
    return shlex.quote(s)
