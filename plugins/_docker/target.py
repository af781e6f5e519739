"""The Docker target: what ``local_docker`` and ``remote_docker`` share above the engine.

Both backends apply the same rules, written here once: the target keys they have in common
(:class:`DockerTargetConfig`), which GPUs a run gets, the labels and the container of a run,
the GPU preflight and its error, and how the engine's view of a container (its ``State``)
becomes a :class:`~runner.backend.RunStatus`. What differs between them is only how commands
and files reach the engine: a subprocess and bind mounts here, SSH and a content store there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runner.backend import BackendConfig, Prepared, RunSpec, RunState, RunStatus
from runner.errors import UserError
from runner.plugins._docker.containers import (
    ContainerSpec,
    cache_env,
    data_mounts,
    visible_devices,
    worker_command,
)
from runner.plugins._docker.engine import DockerCLI
from runner.plugins._docker.images import image_tag
from runner.plugins._docker.names import (
    CACHE_MOUNT,
    DATA_MOUNT,
    L_ENV_KEY,
    L_KIND,
    L_MANAGED,
    L_PROJECT,
    L_RUN_DIR,
    L_RUN_ID,
    L_TARGET,
    LABEL,
    RUN_MOUNT,
)
from runner.plugins._docker.preflight import Preflight, gpu_preflight
from runner.request import DATA_DIR_ENV, DataInput

__all__ = ["LIVE", "DockerTargetConfig", "check_gpus", "ended_status", "run_container",
           "run_gpus", "running_status"]

#: container states in which the worker may still be working
LIVE = ("running", "paused", "restarting")


@dataclass
class DockerTargetConfig(BackendConfig):
    """Keys of every Docker target file (``local_docker``, ``remote_docker``)."""

    slots: int = 1  # runs at once on the engine (sweeps respect it too)
    gpus: str | None = None  # GPUs the engine's machine offers to runs: null, "all" or "0,1"
    docker: str = "docker"  # the docker command (a full path, or "sudo -n docker" on a host)
    base_image: str = "runner-base:bookworm"  # base of envs that name no base_image
    pull: bool = False  # `docker pull` a missing base image (needs a reachable registry)
    cpus: float | None = None  # CPU limit per run (docker --cpus); null = no limit
    memory: str | None = None  # memory limit per run, e.g. "4g"; over it the run is OOM-killed
    shm_size: str | None = None  # /dev/shm size, e.g. "1g" (data loaders); null = the engine's 64m
    network: str = "default"  # run network: default (the engine's), host or none
    build_network: str = "host"  # network for image builds (pip and apt need DNS)
    gpu_preflight: bool = True  # prepare checks that the framework in the image sees the GPUs
    cancel_grace: float = 10.0  # seconds between SIGTERM and SIGKILL when cancelling
    cache_volume: str | None = "runner-cache"  # named volume at /runner/cache for downloads; null = none


def run_gpus(spec: RunSpec) -> str | None:
    """The GPUs a run's container gets: the run's own set (a sweep slot's), else the env's;
    an env that requires a GPU and names none gets all; "" and "none" mean no GPU."""
    gpus = spec.gpus if spec.gpus is not None else spec.env.gpus
    if gpus is None and spec.env.require_gpu:
        gpus = "all"
    return None if gpus in ("", "none") else gpus


def run_container(
    config: DockerTargetConfig, spec: RunSpec, prepared: Prepared, *, run_dir: str,
    data_path: Callable[[DataInput], str], folders: bool = False, user: str | None,
    labels: Mapping[str, str] | None = None, pass_env: Sequence[str] = (),
) -> ContainerSpec:
    """The detached container of one run.

    ``run_dir`` is the run directory as the engine's machine sees it (bind-mounted at
    ``/runner/run``); ``data_path`` says where each data input lies there (``folders``: a
    folder holding it as the worker expects, see :func:`~.containers.data_mounts`);
    ``user`` is the "uid:gid" the run writes files as; ``labels`` are added to the run's own;
    ``pass_env`` are names whose values docker copies from the caller's environment.
    The worker starts in the run directory, not in the code snapshot: a project with a
    top-level package of its own named ``runner`` must not hide the worker's (the worker
    moves into ``code/`` itself before it calls the model).
    """
    request = spec.request
    if request is None:
        raise ValueError(f"run {spec.run_id}: a run container needs the spec's request")
    gpus = run_gpus(spec)
    env = {"TINI_KILL_PROCESS_GROUP": "1"}  # a cancel reaches the model's own children
    if user and not user.startswith("0:"):
        env["HOME"] = "/tmp"  # the run's uid has no home in the image
    visible = visible_devices(gpus)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    if any(not d.on_target for d in request.data_inputs):
        env[DATA_DIR_ENV] = DATA_MOUNT
    if config.cache_volume:
        env.update(cache_env())
    return ContainerSpec(
        name=f"runner-{spec.run_id}",
        image=str(prepared.details.get("image") or image_tag(prepared.env_key)),
        command=worker_command(),
        labels={
            L_MANAGED: "1", L_KIND: "run", L_RUN_ID: spec.run_id, L_TARGET: spec.target_name,
            L_PROJECT: str(spec.project_root), L_RUN_DIR: run_dir, L_ENV_KEY: prepared.env_key,
            **{f"{LABEL}.label.{k}": str(v) for k, v in spec.labels.items()},
            **(labels or {}),
        },
        mounts=[(run_dir, RUN_MOUNT)],
        readonly=data_mounts(request.data_inputs, data_path, folders=folders),
        volumes=[(config.cache_volume, CACHE_MOUNT)] if config.cache_volume else [],
        workdir=RUN_MOUNT,
        env=env, pass_env=list(pass_env), user=user,
        network=config.network, cpus=config.cpus, memory=config.memory,
        shm_size=config.shm_size, gpus=gpus,
    )


#: (engine, image id, GPUs) whose GPU preflight passed in this process
_PREFLIGHT_PASSED: set[tuple[str, str, str | None]] = set()


def check_gpus(cli: DockerCLI, spec: RunSpec, image: str, image_id: str, gpus: str,
               details: dict[str, Any], *, checked_before: str = "") -> None:
    """Run the GPU preflight of ``image`` with ``gpus`` (once per engine, image and GPU set
    in a process: a sweep prepares once per job), put its report in ``details`` and raise a
    UserError naming the missing layer when the framework does not see the GPUs.
    ``checked_before`` is a report line of a check the caller made first (the host driver)."""
    passed = (cli.where, image_id, gpus)
    if passed in _PREFLIGHT_PASSED:
        details["gpu_preflight"] = "passed earlier in this process for this image and GPUs"
        return
    pre: Preflight = gpu_preflight(cli, image, gpus)
    details["gpu_preflight"] = checked_before + pre.render()
    if pre.ok:
        _PREFLIGHT_PASSED.add(passed)
        return
    raise UserError(
        f"GPU preflight failed for env {spec.env.name} on {cli.where} (--gpus {gpus}, image "
        f"{image}): missing layer: {pre.missing}.",
        *pre.render().splitlines(),
        "the run was not started (it would have trained on the CPU). Fix the missing layer, "
        "or run without GPUs (gpus: null).",
    )


def running_status(worker: RunStatus | None) -> RunStatus:
    """The status of a run whose container is live: the worker's own once it says RUNNING;
    RUNNING ("finishing") when it wrote its final status and is exiting."""
    if worker is not None and worker.state == RunState.RUNNING:
        return worker
    if worker is not None and worker.terminal:
        return RunStatus(RunState.RUNNING, message="finishing")
    return RunStatus(RunState.RUNNING)


def ended_status(worker: RunStatus | None, state: Mapping[str, Any] | None, *, cancelled: bool,
                 memory: str | None, gone: str) -> RunStatus:
    """The final status of a run whose container ended (``state``: its ``State``) or is
    gone (``state`` None; ``gone`` says how). The engine's OOM kill wins over everything; then
    the worker's own final status; then a requested cancel; else the run is LOST, with the
    container's exit code when there is one. ``memory`` is the limit, for the OOM message."""
    if state is not None and state.get("OOMKilled"):
        code = worker.exit_code if worker is not None and worker.terminal else None
        return RunStatus(
            RunState.FAILED, exit_code=code or state.get("ExitCode") or 137, oom=True,
            message="out of memory: killed for exceeding the container's memory limit"
                    f"{f' of {memory}' if memory else ''} (raise target.memory, or use less)")
    if worker is not None and worker.terminal:
        return worker
    if cancelled:
        return RunStatus(RunState.CANCELLED, message="cancelled")
    if state is None:
        return RunStatus(RunState.LOST, message=f"the worker ended without a final status ({gone})")
    code = state.get("ExitCode")
    return RunStatus(RunState.LOST, exit_code=code,
                     message=f"the worker ended without a final status (container exit code {code})")
