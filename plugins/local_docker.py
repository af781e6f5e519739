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
from runner.plugins import _docker as dk
from runner.rundir import LocalDirHandleMixin, RunDir, lost_or_cancelled
from runner.units import size_text

#: seconds a container may sit in "Created" before its run counts as never started
CREATED_PATIENCE = 60.0
#: seconds a "the container runs" answer from the engine is trusted before asking again
RECHECK = 1.0


@dataclass
class LocalDockerConfig(dk.DockerTargetConfig):
    """The keys of ``conf/target/local_docker.yaml``: those of every Docker target."""

    backend: str = "local_docker"  # this backend


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
        if state.get("Status") in dk.LIVE:
            if st is not None and st.terminal:
                # the worker wrote its final status and is exiting; settle once it has
                info = self._await_exit(5.0) or info
                if (info.get("State") or {}).get("Status") in dk.LIVE:
                    return st
            else:
                if st is not None and st.state == RunState.RUNNING:
                    self._seen_running = time.monotonic()
                return dk.running_status(st)
        elif state.get("Status") == "created":
            created = dk.created_epoch(str(info.get("Created", "")))  # 0: unreadable, so young
            if not created or time.time() - created < CREATED_PATIENCE:
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
        limit = int((info.get("HostConfig") or {}).get("Memory") or 0)
        final = dk.ended_status(st, state, cancelled=self.rd.cancel_requested,
                                memory=size_text(limit).replace(".0 ", " ") if limit else None,
                                gone="")
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
    def prepare(self, spec: RunSpec) -> Prepared:
        bundle, bundle_key = worker_bundle()
        base = spec.env.base_image or self.config.base_image
        image = dk.ensure_env_image(self.cli, spec.env, base, bundle, bundle_key,
                                    build_network=self.config.build_network, pull=self.config.pull)
        details: dict[str, Any] = {"image": image.tag, "image_id": image.image_id,
                                   "python": image.python}
        gpus = dk.run_gpus(spec)
        if gpus and self.config.gpu_preflight:
            dk.check_gpus(self.cli, spec, image.tag, image.image_id, gpus, details)
        return Prepared(image.key, image.cached, image.reason, details)

    # -- runs ---------------------------------------------------------------------------------
    def submit(self, spec: RunSpec, prepared: Prepared) -> RunHandle:
        rd = RunDir(spec.run_dir)
        rd.log.touch()
        request = spec.request
        if request is None:
            raise ValueError(f"run {spec.run_id}: submit needs the spec's request")
        # data stays where it is: bind-mounted read-only, never copied
        container = dk.run_container(
            self.config, spec, prepared, run_dir=str(rd.path.resolve()),
            data_path=lambda d: d.source, user=dk.user_arg(),
            # secrets travel by name only: docker copies their values from this process's env
            pass_env=[n for n in request.secret_env if n in os.environ])
        r = self.cli(*container.argv(), timeout=120)
        if not r.ok:
            self.cli("rm", "-f", container.name, timeout=60)  # a failed start leaves "Created"
            raise dk.start_error(r, self.cli.where, container.image, container.gpus)
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

    runs = args.context.runs  # the ledger and plugins the CLI loaded (runner.commands)
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
