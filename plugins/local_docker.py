"""The ``local_docker`` backend: each env is an image built once and cached by content; each run
is a detached, labelled container on this machine's Docker engine, with the run directory
bind-mounted as its working and output area.

Orphaned containers (a run the ledger no longer tracks, a start that failed half-way) are found
with :func:`orphans` and removed with :func:`clean`; env images nothing uses any more are listed
and removed by :func:`runner.plugins._docker.prune_report` (``runner docker-prune``).
"""

from __future__ import annotations

import math
import os
import shlex
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner import hookimpl
from runner.backend import (
    Backend,
    BackendConfig,
    Capability,
    Command,
    Prepared,
    RunHandle,
    RunSpec,
    RunState,
    RunStatus,
)
from runner.bundle import worker_bundle
from runner.errors import UserError
from runner.plugins import _docker as dk
from runner.request import DATA_DIR_ENV
from runner.rundir import LocalDirHandleMixin, RunDir, lost_or_cancelled

#: seconds a container may sit in "Created" before its run counts as never started
CREATED_PATIENCE = 60.0
#: seconds a "the container runs" answer from the engine is trusted before asking again
RECHECK = 1.0


@dataclass
class LocalDockerConfig(BackendConfig):
    backend: str = "local_docker"  # this backend
    slots: int = 1  # concurrent runs (sweeps)
    gpus: str | None = None  # GPUs this machine offers to runs: null, "all" or "0,1"
    docker: str = "docker"  # the docker CLI to call
    base_image: str = "runner-base:bookworm"  # base of envs that name no base_image
    pull: bool = False  # `docker pull` a missing base image (needs a reachable registry)
    cpus: float | None = None  # CPU limit per run (docker --cpus); null = no limit
    memory: str | None = None  # memory limit per run, e.g. "4g"; over it the run is OOM-killed
    shm_size: str | None = None  # /dev/shm size, e.g. "1g"; null = the engine's 64m
    network: str = "default"  # run network: default (the engine's), host or none
    build_network: str = "host"  # network for image builds (pip and apt need DNS)
    gpu_preflight: bool = True  # check in prepare that the framework in the image sees a GPU
    cancel_grace: float = 10.0  # seconds between SIGTERM and SIGKILL when cancelling
    cache_volume: str | None = "runner-cache"  # named volume at /runner/cache for downloads; null = none


class DockerHandle(LocalDirHandleMixin, RunHandle):
    """A run container on this machine's engine."""

    def __init__(self, run_id: str, run_dir: Path, container: str, cli: dk.DockerCLI,
                 grace: float) -> None:
        super().__init__(run_id)
        self.rd = RunDir(run_dir)
        self.container = container
        self.cli = cli
        self.grace = grace
        self._settled = False  # final status recorded and the container removed
        self._seen_running = 0.0  # monotonic time the engine last said the container runs

    @property
    def locator(self) -> dict[str, Any]:
        return {"container": self.container, "docker": self.cli.docker}

    def status(self) -> RunStatus:
        st = self.rd.status()
        if self._settled and st is not None:
            return st
        if (st is not None and st.state == RunState.RUNNING
                and time.monotonic() - self._seen_running < RECHECK):
            return st  # asked again within RECHECK seconds: spare the engine a call
        info = self.cli.inspect_one(self.container)
        if info is None:
            st = self.rd.status()
            if st is not None and st.terminal:
                self._settled = True
                return st
            final = lost_or_cancelled(self.rd, f"container {self.container} vanished without a "
                                               "final status (removed, or the engine restarted)")
            self.rd.write_status(final)
            self._settled = True
            return final
        state = info.get("State") or {}
        if state.get("Status") in ("running", "paused", "restarting"):
            if st is not None and st.terminal:
                # the worker wrote its final status and is exiting; settle once it has
                info = self._await_exit(5.0) or info
                if (info.get("State") or {}).get("Status") in ("running", "paused", "restarting"):
                    return st
            elif st is not None and st.state == RunState.RUNNING:
                self._seen_running = time.monotonic()
                return st
            else:
                return RunStatus(RunState.RUNNING)
        elif state.get("Status") == "created":
            if _age(str(info.get("Created", ""))) < CREATED_PATIENCE:
                return st if st is not None and not st.terminal else RunStatus(RunState.QUEUED)
            # its client died between create and start: it will never run
            final = lost_or_cancelled(self.rd, f"container {self.container} was created but "
                                               "never started (its client ended during submit)")
            self.rd.write_status(final)
            self.cli.remove(self.container)
            self._settled = True
            return final
        return self._settle(info)

    def _await_exit(self, seconds: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            info = self.cli.inspect_one(self.container)
            if info is None or (info.get("State") or {}).get("Status") not in ("running", "paused"):
                return info
            time.sleep(0.05)
        return self.cli.inspect_one(self.container)

    def _settle(self, info: Mapping[str, Any] | None) -> RunStatus:
        """The container has ended: record the final status (with the OOM flag) and remove it."""
        st = self.rd.status()
        if info is None:
            return st or lost_or_cancelled(self.rd, "the container is gone")
        state = info.get("State") or {}
        code = state.get("ExitCode")
        if state.get("OOMKilled"):
            limit = int((info.get("HostConfig") or {}).get("Memory") or 0)
            where = f" of {_size(limit)}" if limit else ""
            worker_code = st.exit_code if st is not None and st.terminal else None
            final = RunStatus(
                RunState.FAILED, exit_code=worker_code or code or 137, oom=True,
                message=f"out of memory: killed for exceeding the container's memory limit{where}"
                        " (raise target.memory, or use less)")
        elif st is not None and st.terminal:
            final = st
        else:
            final = lost_or_cancelled(
                self.rd, f"the worker ended without a final status (container exit code {code})")
            if final.state == RunState.LOST:
                final = RunStatus(RunState.LOST, exit_code=code, message=final.message)
        if final != st:
            self.rd.write_status(final)
        self.cli.remove(self.container)
        self._settled = True
        return final

    def cancel(self) -> RunStatus:
        st = self.status()
        if st.terminal:
            self.cli.remove(self.container)  # nothing left behind, even after a failed settle
            return st
        self.rd.request_cancel()
        # SIGTERM to the whole process group (the init forwards it), SIGKILL after the grace
        self.cli("stop", "--time", str(max(1, math.ceil(self.grace))), self.container,
                 timeout=self.grace + 60)
        info = self._await_exit(10.0)
        if info is not None and (info.get("State") or {}).get("Status") == "running":
            self.cli("kill", self.container, timeout=30)
            info = self._await_exit(10.0)
        final = self._settle(info) if info is not None else self.status()
        self.cli.remove(self.container)
        return final



def _age(created: str) -> float:
    """Seconds since docker's RFC 3339 ``Created`` time (0 when it cannot be read)."""
    try:
        t = datetime.fromisoformat(created.split(".")[0].rstrip("Z")).replace(tzinfo=UTC)
    except ValueError:
        return 0.0
    return time.time() - t.timestamp()


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}".replace(".0 ", " ")
        n = n / 1024  # type: ignore[assignment]
    return str(n)


#: (engine, image id, GPUs) whose GPU preflight passed in this process
_PREFLIGHT_PASSED: set[tuple[str, str, str | None]] = set()


class LocalDockerBackend(Backend):
    """Runs the worker in a container on this machine; envs are images cached by content."""

    name = "local_docker"
    Config = LocalDockerConfig
    capabilities = frozenset({Capability.CANCEL, Capability.FOLLOW_LOGS, Capability.OUTPUTS,
                              Capability.DOCKER, Capability.GPU})
    config: LocalDockerConfig

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        c = self.config
        dk.check_target(c, hint=" (the engine here has no bridge to add others to)")
        self.cli = dk.DockerCLI(docker=c.docker, where="this machine")

    # -- environments -------------------------------------------------------------------------
    def _gpus(self, spec: RunSpec) -> str | None:
        gpus = spec.gpus if spec.gpus is not None else spec.env.gpus
        if gpus is None and spec.env.require_gpu:
            gpus = "all"
        return None if gpus in ("", "none") else gpus

    def prepare(self, spec: RunSpec) -> Prepared:
        bundle, bundle_key = worker_bundle()
        base = spec.env.base_image or self.config.base_image
        image = dk.ensure_env_image(self.cli, spec.env, base, bundle, bundle_key,
                                    build_network=self.config.build_network, pull=self.config.pull)
        details: dict[str, Any] = {"image": image.tag, "image_id": image.image_id,
                                   "python": image.python}
        gpus = self._gpus(spec)
        passed = (self.cli.where, image.image_id, gpus)
        if gpus and self.config.gpu_preflight and passed in _PREFLIGHT_PASSED:
            details["gpu_preflight"] = "passed earlier in this process for this image and GPUs"
        elif gpus and self.config.gpu_preflight:
            pre = dk.gpu_preflight(self.cli, image.tag, gpus)
            details["gpu_preflight"] = pre.render()
            if pre.ok:
                # a sweep prepares once per job: check each image and GPU set once, not per job
                _PREFLIGHT_PASSED.add(passed)
            if not pre.ok:
                raise UserError(
                    f"GPU preflight failed for env {spec.env.name} on {self.cli.where} "
                    f"(--gpus {gpus}, image {image.tag}): missing layer: {pre.missing}.",
                    *pre.render().splitlines(),
                    "the run was not started (it would have trained on the CPU). Fix the missing "
                    "layer, or run without GPUs (gpus: null).",
                )
        return Prepared(image.key, image.cached, image.reason, details)

    # -- runs ---------------------------------------------------------------------------------
    def submit(self, spec: RunSpec, prepared: Prepared) -> RunHandle:
        rd = RunDir(spec.run_dir)
        rd.log.touch()
        request = spec.request
        if request is None:
            raise ValueError(f"run {spec.run_id}: submit needs the spec's request")
        gpus = self._gpus(spec)
        labels = {
            dk.L_MANAGED: "1", dk.L_KIND: "run", dk.L_RUN_ID: spec.run_id,
            dk.L_TARGET: spec.target_name, dk.L_PROJECT: str(spec.project_root),
            dk.L_RUN_DIR: str(rd.path.resolve()),
            dk.L_ENV_KEY: prepared.env_key,
            **{f"{dk.LABEL}.label.{k}": str(v) for k, v in spec.labels.items()},
        }
        env = {"TINI_KILL_PROCESS_GROUP": "1"}  # a cancel reaches the model's own children
        user = dk.user_arg()
        if user and not user.startswith("0:"):
            env["HOME"] = "/tmp"  # the client's uid has no home in the image
        visible = dk.visible_devices(gpus)
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        # data stays where it is: bind-mounted read-only, never copied
        staged = [d for d in request.data_inputs if not d.on_target]
        if staged:
            env[DATA_DIR_ENV] = dk.DATA_MOUNT
        if self.config.cache_volume:
            env.update(dk.cache_env())
        container = dk.ContainerSpec(
            name=f"runner-{spec.run_id}",
            image=str(prepared.details.get("image") or dk.image_tag(prepared.env_key)),
            command=dk.worker_command(),
            labels=labels,
            mounts=[(str(rd.path.resolve()), dk.RUN_MOUNT)],
            readonly=dk.data_mounts(request.data_inputs, lambda d: d.source),
            volumes=[(self.config.cache_volume, dk.CACHE_MOUNT)] if self.config.cache_volume else [],
            workdir=f"{dk.RUN_MOUNT}/code" if rd.code.is_dir() else dk.RUN_MOUNT,
            env=env,
            # secrets travel by name only: docker copies their values from this process's env
            pass_env=[n for n in request.secret_env if n in os.environ],
            user=user,
            network=self.config.network, cpus=self.config.cpus, memory=self.config.memory,
            shm_size=self.config.shm_size, gpus=gpus,
        )
        r = self.cli(*container.argv(), timeout=120)
        if not r.ok:
            self.cli("rm", "-f", container.name, timeout=60)  # a failed start leaves "Created"
            raise dk.start_error(r, self.cli.where, container.image, gpus)
        return DockerHandle(spec.run_id, rd.path, container.name, self.cli, self.config.cancel_grace)

    def reattach(self, run_id: str, run_dir: Path, locator: Mapping[str, Any]) -> RunHandle:
        cli = dk.DockerCLI(docker=str(locator.get("docker") or self.config.docker))
        return DockerHandle(run_id, run_dir, str(locator["container"]), cli, self.config.cancel_grace)


# -- orphans ----------------------------------------------------------------------------------------
def orphans(known_run_ids: Iterable[str], *, project: Path | str | None = None,
            docker: str = "docker") -> list[dk.Container]:
    """Containers on this machine's engine carrying the runner's labels that none of
    ``known_run_ids`` (the runs a ledger still considers in flight) accounts for.

    ``project`` limits the search to containers started from that project root (each project
    has its own ledger, so one project must not call another's runs orphans).
    """
    cli = dk.DockerCLI(docker=docker)
    return dk.find_orphans(cli, known_run_ids, str(project) if project is not None else None)


def clean(containers: Iterable[dk.Container], *, docker: str = "docker") -> list[str]:
    """Remove ``containers`` (running ones are killed); return the names removed. A run whose
    container is removed this way is reported LOST by its next status check."""
    cli = dk.DockerCLI(docker=docker)
    found = list(containers)
    cli.remove(*[c.id for c in found])
    return [c.name for c in found]


@hookimpl
def runner_register_backends(register: Any) -> None:
    register(LocalDockerBackend)


def _orphan_arguments(parser: Any) -> None:
    parser.add_argument("--clean", action="store_true",
                        help="remove them (running ones are killed); without it, only list")
    parser.add_argument("--docker", default="docker", help="the docker command (default: docker)")


def _orphans_command(args: Any) -> int:
    # the ledger knows which runs are still in flight; everything else labelled ours is an orphan
    from runner.backend import RunState
    from runner.launch import Runs

    runs = Runs()
    runs.reconcile()
    active = [r.id for r in runs.store.list(states=(RunState.QUEUED, RunState.PREPARING,
                                                     RunState.RUNNING))]
    found = orphans(active, project=runs.project_root, docker=args.docker)
    if not found:
        print("no orphan containers for this project")
        return 0
    for c in found:
        print(f"{c.name}  {c.state:10}  run {c.run_id or '-'}  ({c.kind})")
    if args.clean:
        removed = clean(found, docker=args.docker)
        print(f"removed {len(removed)} container(s)")
    else:
        print(f"{len(found)} orphan container(s); `runner docker-orphans --clean` removes them")
    return 0


def _prune_arguments(parser: Any) -> None:
    parser.add_argument("--keep", type=int, default=1, metavar="N",
                        help="newest images of each env to keep, used or not (default 1)")
    parser.add_argument("--env", metavar="NAME", help="only the images of this env")
    parser.add_argument("--yes", action="store_true",
                        help="remove them; without it, only list (a dry run)")
    parser.add_argument("--docker", default="docker", help="the docker command (default: docker)")


def _prune_command(args: Any) -> int:
    cli = dk.DockerCLI(docker=args.docker, where="this machine")
    found = dk.prune_report(cli, keep=args.keep, env_name=args.env, yes=args.yes)
    if found and not args.yes:
        again = ["runner", "docker-prune", *(["--env", args.env] if args.env else []),
                 *(["--keep", str(args.keep)] if args.keep != 1 else []), "--yes"]
        print(f"dry run, nothing removed: `{shlex.join(again)}` removes them")
    return 0


@hookimpl
def runner_register_commands(register: Any) -> None:
    register(Command("docker-orphans",
                     "list (and with --clean remove) this project's containers no run accounts for",
                     _orphan_arguments, _orphans_command))
    register(Command("docker-prune",
                     "list (and with --yes remove) env images no container uses, beyond the "
                     "newest N of each env", _prune_arguments, _prune_command))
