"""The ``remote_docker`` backend: a GPU box reached over SSH runs each run in a labelled Docker
container, with env images built there under the same content key as ``local_docker``. One concern a module: ``config`` (the target's
keys, its SSH session), ``host`` (what the host is; ``runner doctor``), ``backend`` (prepare, submit), ``handle`` (status, logs, cancel, the way
back), ``attach`` (``runner attach``) and ``gc`` (``runner remote-gc``).

What crosses the wire, and when::

    prepare   one command: docker answers, the work dir is writable and has room, the base
              image's ID and the env images present (a cache hit costs nothing more)
    submit    one command asks which code objects (by sha256) the host lacks and which data
              trees it has; data whose tree is missing goes by content (see :mod:`._store`:
              only the files the host lacks, verified there, then a tree of hard links); one
              SFTP upload of a tar holding the missing code objects plus the small request
              files; one command unpacks, assembles the run directory and starts the container
              (within the host's slots), the data trees mounted read-only
    watch     status: one command (status.json + docker's view); logs: an SFTP read from a
              byte offset (a dropped connection is reopened; nothing is lost or repeated)
    end       the run directory (without code/) comes back as a tar, extracted safely and
              within a size cap; the container is removed and verified gone

Remote layout under ``work_dir``: ``objects/SHA256`` (the content store, code and data),
``data/DIGEST/`` (one tree of hard links into objects/ per data input version),
``runs/RUN_ID/`` (the run directory mounted into the container), ``incoming/`` and
``outgoing/`` (transfers).
The plugin also registers ``runner attach`` (see :func:`attach_command`) and ``runner remote-gc``
(see :func:`gc_command`): stray containers, old run directories, data trees no run used for a
while (and the objects nothing links to then), and unused env images on a host.
"""

from __future__ import annotations

from typing import Any

from runner import hookimpl
from runner.plugins._shipping import safe_extract
from runner.plugins._ssh import ConnectionLost
from runner.plugins.remote_docker.attach import attach_command, target_yaml
from runner.plugins.remote_docker.backend import RemoteDockerBackend
from runner.plugins.remote_docker.config import RemoteDockerConfig
from runner.plugins.remote_docker.gc import gc_command
from runner.plugins.remote_docker.handle import RemoteHandle


@hookimpl
def runner_register_backends(register: Any) -> None:
    register(RemoteDockerBackend)


@hookimpl
def runner_register_commands(register: Any) -> None:
    register(attach_command())
    register(gc_command())


__all__ = ["ConnectionLost", "RemoteDockerBackend", "RemoteDockerConfig", "RemoteHandle",
           "safe_extract", "target_yaml"]
