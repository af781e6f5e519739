"""Run containers: ``docker run`` argument lists, mounts, the worker's command, start errors,
and the container options of a Docker target checked before anything starts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.errors import UserError
from runner.plugins._docker.engine import Result
from runner.plugins._docker.names import CACHE_MOUNT, DATA_MOUNT, NETWORKS, RUN_MOUNT
from runner.request import DataInput


# -- run containers ---------------------------------------------------------------------------------
def gpu_args(gpus: str | None) -> list[str]:
    """``--gpus`` for a GPU set: None → nothing, "all" → all, "0,1" → those devices."""
    if gpus in (None, "", "none"):
        return []
    if gpus == "all":
        return ["--gpus", "all"]
    # the quotes keep docker's CSV parser from splitting the device list at its commas
    return ["--gpus", f'"device={gpus}"']


def visible_devices(gpus: str | None) -> str | None:
    """CUDA_VISIBLE_DEVICES inside a container given ``gpus``: the engine renumbers a device
    set from 0, so "2,3" on the host is "0,1" in the container."""
    if gpus in (None, "", "none", "all"):
        return None
    return ",".join(str(i) for i in range(len(str(gpus).split(","))))


def mount_arg(source: str, target: str, *, readonly: bool = False) -> str:
    """A ``--mount`` value; fields are CSV-quoted so paths may hold commas."""
    def q(s: str) -> str:
        return f'"{s}"' if ("," in s or '"' in s) else s

    spec = f"type=bind,{q('source=' + source)},{q('target=' + target)}"
    return spec + (",readonly" if readonly else "")


@dataclass(frozen=True)
class ContainerSpec:
    """One detached run container."""

    name: str  # container name
    image: str  # image reference (ID or tag)
    command: list[str]  # what runs inside
    labels: Mapping[str, str] = field(default_factory=dict)
    mounts: Sequence[tuple[str, str]] = ()  # (host path, container path) bind mounts
    readonly: Sequence[tuple[str, str]] = ()  # the same, read-only (the run's data)
    volumes: Sequence[tuple[str, str]] = ()  # (named volume, container path): the cache
    workdir: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)  # NAME=value
    pass_env: Sequence[str] = ()  # NAMEs whose values docker copies from the caller's env
    user: str | None = None  # "uid:gid"
    network: str = "default"  # default | host | none
    cpus: float | None = None
    memory: str | None = None
    shm_size: str | None = None
    gpus: str | None = None
    init: bool = True  # a tiny init as PID 1: forwards signals, reaps zombies

    def argv(self) -> list[str]:
        """``docker run -d ...`` arguments (without the leading ``docker``)."""
        a = ["run", "-d", "--name", self.name]
        if self.init:
            a.append("--init")
        for k, v in sorted(self.labels.items()):
            a += ["--label", f"{k}={v}"]
        for src, dst in self.mounts:
            a += ["--mount", mount_arg(src, dst)]
        for src, dst in self.readonly:
            a += ["--mount", mount_arg(src, dst, readonly=True)]
        for name, dst in self.volumes:
            a += ["--mount", f"type=volume,source={name},target={dst}"]
        if self.workdir:
            a += ["--workdir", self.workdir]
        if self.user:
            a += ["--user", self.user]
        for k, v in sorted(self.env.items()):
            a += ["--env", f"{k}={v}"]
        for k in self.pass_env:
            a += ["--env", k]
        if self.network != "default":
            a += ["--network", self.network]
        if self.cpus:
            a += ["--cpus", str(self.cpus)]
        if self.memory:
            # swap limit = memory limit: a run over its limit is killed, it does not swap
            a += ["--memory", self.memory, "--memory-swap", self.memory]
        if self.shm_size:
            a += ["--shm-size", self.shm_size]
        a += gpu_args(self.gpus)
        return a + [self.image, *self.command]


def data_mounts(inputs: Sequence[DataInput], host_path: Callable[[DataInput], str], *,
                folders: bool = False) -> list[tuple[str, str]]:
    """Read-only mounts that put each data input where the worker looks for it
    (:meth:`DataInput.target_path` under ``DATA_MOUNT``); data already on the target is
    mounted at its own path. ``host_path`` says where an input lies on the engine's host:
    the file or folder itself, or with ``folders`` a folder that holds the input as the
    worker expects it (a file input under its own name: a content store's tree)."""
    out = []
    for d in inputs:
        if d.on_target:
            out.append((d.source, d.source))
        elif folders:
            out.append((host_path(d), f"{DATA_MOUNT}/{d.key}"))
        else:
            out.append((host_path(d), d.target_path(DATA_MOUNT)))
    return out


def cache_env() -> dict[str, str]:
    """Environment variables that point frameworks' download caches into the cache volume."""
    return {"KERAS_HOME": f"{CACHE_MOUNT}/keras", "PIP_CACHE_DIR": f"{CACHE_MOUNT}/pip",
            "HF_HOME": f"{CACHE_MOUNT}/huggingface", "TORCH_HOME": f"{CACHE_MOUNT}/torch",
            "XDG_CACHE_HOME": f"{CACHE_MOUNT}/xdg"}


def valid_volume_name(name: str) -> bool:
    """Docker's rule for volume names."""
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]+", name))


def worker_command(run_mount: str = RUN_MOUNT) -> list[str]:
    """The container's command: the worker, its output appended to the run's log file (the
    log file is the one source of logs, so reading it by byte offset resumes exactly)."""
    log = f"{run_mount}/log.txt"
    return ["sh", "-c", f"exec python -m runner.worker {run_mount} >>{log} 2>&1"]


def start_error(r: Result, where: str, image: str, gpus: str | None) -> UserError:
    """The UserError for a failed ``docker run``."""
    cause = r.last_error()
    hints = []
    if "could not select device driver" in cause:
        hints.append(f"the engine on {where} has no NVIDIA runtime: install the NVIDIA container "
                     "toolkit there and restart dockerd, or run without GPUs (gpus: null).")
    elif "No such image" in cause or "Unable to find image" in cause:
        hints.append(f"image {image} is gone; run `runner prepare` again to rebuild it.")
    else:
        hints.append("check the target's cpus/memory/shm_size/network values against "
                     "`docker run --help`.")
    if gpus:
        hints.append(f"(GPUs asked for: {gpus})")
    return UserError(f"docker could not start the run's container on {where}: {cause}", *hints)


def check_target(c: Any, *, hint: str = "") -> None:
    """Refuse the container options of a Docker target (local or remote) that cannot work:
    a network mode the engine lacks, no slots, a non-positive CPU limit."""
    if c.network not in NETWORKS:
        raise UserError(f"target.network: '{c.network}' is not a network mode of this backend.",
                        f"valid: {', '.join(NETWORKS)}{hint}")
    if c.slots < 1:
        raise UserError(f"target.slots: must be at least 1, got {c.slots}.")
    cache = getattr(c, "cache_volume", None)
    if cache is not None and not valid_volume_name(str(cache)):
        raise UserError(f"target.cache_volume: {cache!r} is not a Docker volume name.",
                        "use letters, digits, '_', '.', '-' (e.g. runner-cache), or null for none.")
    if c.cpus is not None and c.cpus <= 0:
        raise UserError(f"target.cpus: must be a positive number of CPUs, got {c.cpus}.")
