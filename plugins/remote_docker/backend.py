"""The ``remote_docker`` backend: prepare an env image on the host, ship and start a run
within the host's slots, check data that lives there, reattach."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.backend import (
    Backend,
    BackendConfig,
    Capability,
    Check,
    Prepared,
    RunHandle,
    RunSpec,
)
from runner.bundle import worker_bundle
from runner.environment import env_inputs, env_key
from runner.errors import UserError
from runner.plugins import _docker as dk
from runner.plugins import _store as store
from runner.plugins._shipping import REMOTE_JSON, ship
from runner.plugins._ssh import Session
from runner.plugins.remote_docker.config import (
    _BUSY,
    L_DATA,
    L_SLOTS,
    RemoteDockerConfig,
    _q,
    session_for,
)
from runner.plugins.remote_docker.executor import SSHExecutor
from runner.plugins.remote_docker.handle import RemoteHandle
from runner.plugins.remote_docker.host import HostFacts, doctor, probe
from runner.rundir import RunDir, write_json_atomic
from runner.units import size_text


class RemoteDockerBackend(Backend):
    """Runs the worker in a container on a remote host's Docker engine, reached over SSH."""

    name = "remote_docker"
    Config = RemoteDockerConfig
    capabilities = frozenset({Capability.CANCEL, Capability.FOLLOW_LOGS, Capability.OUTPUTS,
                              Capability.DOCKER, Capability.GPU, Capability.REMOTE})
    config: RemoteDockerConfig

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        c = self.config
        dk.check_target(c)
        self.docker = c.docker
        self._facts: HostFacts | None = None
        self._session: Session | None = None
        self._cli: dk.DockerCLI | None = None

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = session_for(self.config)
        return self._session

    @property
    def cli(self) -> dk.DockerCLI:
        if self._cli is None:
            self._cli = dk.DockerCLI(executor=SSHExecutor(self.session, raw=[self.docker]),
                                     docker=self.docker, where=self.config.host)
        return self._cli

    @property
    def work_dir(self) -> str:
        return self.facts().work_dir

    def facts(self, base: str | None = None, *, refresh: bool = False) -> HostFacts:
        """What the host is (see :func:`.host.probe`), asked once per backend unless
        ``base`` (an image to look up) or ``refresh`` asks again."""
        if self._facts is not None and not refresh and base is None:
            return self._facts
        self._facts = probe(self, base)
        return self._facts

    def gpu_devices(self) -> list[str] | None:
        """``gpus: all`` is counted with ``nvidia-smi -L`` on the host."""
        from runner.gpus import count_listed, device_ids

        def count() -> int | None:
            r = self.session.run("nvidia-smi -L", timeout=30)
            return count_listed(r.stdout) if r.ok else None

        return device_ids(self.config.gpus, count)

    # -- facts about the host ------------------------------------------------------------------


    # -- environments --------------------------------------------------------------------------
    def prepare(self, spec: RunSpec) -> Prepared:
        base = spec.env.base_image or self.config.base_image
        facts = self.facts(base)
        bundle, bundle_key = worker_bundle()
        details: dict[str, Any] = {"host": self.session.label, "work_dir": facts.work_dir}
        image: dk.EnvImage | None = None
        if facts.base_id is not None:
            # the key local_docker computes (dk.ensure_env_image): same inputs, same image
            inputs = env_inputs(dataclasses.replace(spec.env, base_image=facts.base_id),
                                python=spec.env.python, runner_hash=bundle_key, recipe=dk.RECIPE)
            key = env_key(inputs)
            tag = dk.image_tag(key)
            if tag in facts.env_tags:
                image = dk.EnvImage(key, tag, facts.env_tags[tag], True, "cached", "")
        if image is None:
            image = dk.ensure_env_image(self.cli, spec.env, base, bundle, bundle_key,
                                        build_network=self.config.build_network,
                                        pull=self.config.pull)
            self._facts = dataclasses.replace(
                facts, env_tags={**facts.env_tags, image.tag: image.image_id})
        details |= {"image": image.tag, "image_id": image.image_id}
        gpus = dk.run_gpus(spec)
        if gpus and self.config.gpu_preflight:
            self._gpu_preflight(spec, image, gpus, details)
        return Prepared(image.key, image.cached, image.reason, details)

    def _gpu_preflight(self, spec: RunSpec, image: dk.EnvImage, gpus: str,
                       details: dict[str, Any]) -> None:
        """The host's driver first (`nvidia-smi -L` there), then the shared preflight."""
        r = self.session.run("nvidia-smi -L 2>&1", timeout=60)
        if not r.ok or "GPU" not in r.stdout:
            seen = r.stdout.strip() or r.last_error()
            raise UserError(
                f"GPU preflight failed for env {spec.env.name} on {self.session.label} "
                f"(--gpus {gpus}): missing layer: host driver.",
                f"MISSING host driver: `nvidia-smi -L` on the host answered: {seen[:300]}",
                "install the NVIDIA driver on the host (nvidia-smi must list the GPUs), or run "
                "without GPUs (gpus: null). The run was not started.",
            )
        dk.check_gpus(self.cli, spec, image.tag, image.image_id, gpus, details,
                      checked_before=f"ok      host driver: {r.stdout.strip()}\n")

    # -- runs ------------------------------------------------------------------------------------


    def submit(self, spec: RunSpec, prepared: Prepared) -> RunHandle:
        c = self.config
        facts = self.facts()
        if facts.free_kb is not None and facts.free_kb < c.min_free_mb * 1024:
            raise UserError(
                f"the remote work dir {facts.work_dir} on {self.session.label} is full: "
                f"{facts.free_kb // 1024} MiB free, target.min_free_mb is {c.min_free_mb}.",
                "free space there (old runs live in runs/), point target.work_dir elsewhere, or "
                "lower target.min_free_mb.")
        rd = RunDir(spec.run_dir)
        request = spec.request
        if request is None:
            raise ValueError(f"run {spec.run_id}: submit needs the spec's request")
        remote_rd = f"{facts.work_dir}/runs/{spec.run_id}"
        secrets_env = {n: os.environ[n] for n in request.secret_env if n in os.environ}
        t0 = time.monotonic()
        def room() -> int | None:
            free = self.facts().free_kb
            return None if free is None else max(0, free - c.min_free_mb * 1024)

        shipped, data_shipped = ship(self.session, facts.work_dir, spec.run_id, request, rd,
                                     remote_rd, secrets_env, free_kb=room)
        staged = [d for d in request.data_inputs if not d.on_target]
        extra = {L_SLOTS: "1"}
        if staged:
            extra[L_DATA] = ",".join(sorted({str(d.digest) for d in staged}))
        container = dk.run_container(
            c, spec, prepared, run_dir=remote_rd,
            data_path=lambda d: store.tree_path(facts.work_dir, d), folders=True,
            user=f"{facts.uid}:{facts.gid}", labels=extra)
        gpus = container.gpus
        argv = container.argv()
        envfile = f"{remote_rd}/.runner-env"
        if secrets_env:
            argv = argv[:2] + ["--env-file", envfile] + argv[2:]
        start = (
            f"cd {_q(facts.work_dir)} || exit 3; "
            "if command -v flock >/dev/null 2>&1; then exec 9>slots.lock; flock 9; fi; "
            f"n=$({self.docker} ps -q --filter label={L_SLOTS}=1 --filter status=running | wc -l); "
            f"if [ \"$n\" -ge {int(c.slots)} ]; then {self.docker} ps --filter label={L_SLOTS}=1 "
            f"--filter status=running --format '{{{{.Label \"{dk.L_RUN_ID}\"}}}}'; exit {_BUSY}; fi; "
            f"{self.docker} run {' '.join(_q(a) for a in argv[1:])}; rc=$?; "
            f"rm -f {_q(envfile)}; exit $rc")
        waited = False
        deadline = time.monotonic() + c.slot_wait
        while True:
            r = self.session.run(start, timeout=180, retry=False)
            if r.returncode != _BUSY:
                break
            if time.monotonic() > deadline:
                self.session.run(f"rm -f {_q(envfile)}", timeout=60)
                raise UserError(
                    f"no free slot on {self.session.label} after {c.slot_wait:.0f} s: all "
                    f"{c.slots} are busy (runs: {', '.join(r.stdout.split())}).",
                    "wait for them, cancel one (runner cancel RUN), or raise target.slots if the "
                    "host has room.")
            if not waited:
                print(f"[runner] {self.session.label}: all {c.slots} slot(s) busy (runs: "
                      f"{', '.join(r.stdout.split())}); waiting for one to free up ...",
                      file=sys.stderr, flush=True)
                waited = True
            time.sleep(1.0)
        if not r.ok:
            self.session.run(f"{self.docker} rm -f {_q(container.name)} >/dev/null 2>&1; "
                             f"rm -f {_q(envfile)}", timeout=60)
            raise dk.start_error(r, self.session.label, container.image, gpus)
        info = {"host": self.session.label, "remote_run_dir": remote_rd,
                "container": container.name, "container_id": r.stdout.strip(),
                "shipped": shipped, "submit_seconds": round(time.monotonic() - t0, 3)}
        if data_shipped:
            info["data"] = data_shipped
        write_json_atomic(rd.path / REMOTE_JSON, info)
        print(f"[runner] shipped {shipped['sent_files']} of {shipped['files']} code files "
              f"({size_text(shipped['sent_bytes'])} of {size_text(shipped['bytes'])}) to "
              f"{self.session.label}", file=sys.stderr, flush=True)
        return RemoteHandle(self, spec.run_id, rd.path, container.name, remote_rd)

    def check_data(self, spec: RunSpec) -> None:
        """Data given as ``target:/path`` must exist on the host and be readable there (one
        command; none when the run has no such input)."""
        on_host = [d for d in spec.data_inputs if d.on_target]
        if not on_host:
            return
        paths = sorted({d.source for d in on_host})
        r = self.session.run(
            f"for p in {' '.join(_q(p) for p in paths)}; do if [ ! -e \"$p\" ]; then "
            "echo \"missing $p\"; elif [ ! -r \"$p\" ] || { [ -d \"$p\" ] && [ ! -x \"$p\" ]; }; "
            "then echo \"unreadable $p\"; fi; done", timeout=60)
        if not r.ok:
            raise UserError(f"could not check the data paths on {self.session.label}: "
                            f"{r.last_error()}")
        problems = dict(reversed(ln.split(" ", 1)) for ln in r.stdout.splitlines() if " " in ln)
        for d in on_host:
            what = problems.get(d.source)
            if what is None:
                continue
            state = ("does not exist" if what == "missing" else
                     "cannot be read by the SSH user (permission denied)")
            raise UserError(
                f"data.{d.key}={d.given!r}: {d.source} {state} on {self.session.label}.",
                "data marked target: is read where it lies on the host and never shipped: "
                "put it there (e.g. rsync -a DATA HOST:" + d.source + ")"
                + (", fix its permissions (chmod -R a+rX)" if what != "missing" else "")
                + ", or give a path on this client without the target: prefix to ship it "
                "with the run.")

    def reattach(self, run_id: str, run_dir: Path, locator: Mapping[str, Any]) -> RunHandle:
        return RemoteHandle(self, run_id, run_dir, str(locator["container"]),
                            str(locator["remote_run_dir"]))

    # -- doctor ----------------------------------------------------------------------------------
    def doctor(self) -> list[Check]:
        return doctor(self)
