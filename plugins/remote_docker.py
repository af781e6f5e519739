"""The ``remote_docker`` backend: a GPU box reached over SSH runs each run in a labelled Docker
container, with env images built there under the same content key as ``local_docker``.

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

import base64
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shlex
import sys
import tarfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import hookimpl
from runner.backend import (
    Backend,
    BackendConfig,
    Capability,
    Check,
    Command,
    Prepared,
    RunHandle,
    RunSpec,
    RunState,
    RunStatus,
)
from runner.bundle import worker_bundle
from runner.environment import env_inputs, env_key
from runner.errors import UserError
from runner.plugins import _docker as dk
from runner.plugins import _store as store
from runner.plugins._ssh import ConnectionLost, KeyRefused, Session, SSHExecutor, SSHSettings
from runner.request import DATA_DIR_ENV, RunRequest
from runner.rundir import CODE, LOG, OUTPUTS, RunDir, write_json_atomic
from runner.units import size_text

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
_NOT_SHIPPED = {CODE, OUTPUTS, LOG, "metrics.jsonl", "worker.json", "status.json", "cancel",
                REMOTE_JSON}


@dataclass
class RemoteDockerConfig(BackendConfig):
    backend: str = "remote_docker"  # this backend
    host: str = ""  # host name, address, or a Host alias of the ssh_config file
    user: str | None = None  # login user (default: the ssh_config's User, else your local user)
    port: int | None = None  # SSH port (default: the ssh_config's Port, else 22)
    key: str | None = None  # private key file (the SSH agent is used too); never a password
    ssh_config: str | None = None  # ssh_config file for aliases/ProxyCommand (default ~/.ssh/config)
    known_hosts: str | None = None  # known_hosts file checked (default: ssh_config's, else ~/.ssh/known_hosts)
    slots: int = 1  # runs at once on this host (across every client; sweeps respect it too)
    gpus: str | None = None  # GPUs of the host offered to runs: null, "all" or "0,1"
    work_dir: str = "~/.runner-remote"  # on the host: content store and run directories
    docker: str = "docker"  # the docker command on the host (e.g. /usr/bin/docker, "sudo docker")
    base_image: str = "runner-base:bookworm"  # base of envs that name no base_image
    pull: bool = False  # `docker pull` a missing base image on the host
    cpus: float | None = None  # CPU limit per run (docker --cpus); null = no limit
    memory: str | None = None  # memory limit per run, e.g. "16g"; over it the run is OOM-killed
    shm_size: str | None = None  # /dev/shm size, e.g. "8g" (data loaders need it)
    network: str = "default"  # run network: default (the engine's), host or none
    build_network: str = "host"  # network for image builds on the host (pip and apt need DNS)
    gpu_preflight: bool = True  # prepare checks driver, runtime and framework before a GPU run
    cancel_grace: float = 10.0  # seconds between SIGTERM and SIGKILL when cancelling
    cache_volume: str | None = "runner-cache"  # named volume at /runner/cache for downloads; null = none
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


# -- safe extraction ----------------------------------------------------------------------------
def safe_extract(data: bytes, dest: Path, *, max_bytes: int) -> list[str]:
    """Extract a tar archive into ``dest``: only regular files and folders, nothing outside
    ``dest`` (absolute names, ``..``, links and devices are skipped), at most ``max_bytes``.
    Returns the names skipped."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    skipped: list[str] = []
    total = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for m in tar:
            name = m.name.lstrip("./") if m.name.startswith("./") else m.name
            if name in ("", "."):
                continue
            target = os.path.realpath(os.path.join(root, name))
            if (os.path.isabs(m.name) or ".." in Path(m.name).parts
                    or not target.startswith(root + os.sep)):
                skipped.append(m.name)
                continue
            if m.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            if not m.isfile():
                skipped.append(m.name)  # links, devices, fifos never come back
                continue
            total += m.size
            if total > max_bytes:
                raise UserError(f"the fetched run directory is over the {size_text(max_bytes)} cap.",
                                "raise target.max_fetch_mb, or write less into outputs/.")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.realpath(os.path.dirname(target)) != os.path.dirname(target):
                skipped.append(m.name)  # a folder on the way is a link: never write through it
                continue
            src = tar.extractfile(m)
            assert src is not None
            tmp = target + ".runner-part"
            with open(tmp, "wb") as f:
                while chunk := src.read(1 << 20):
                    f.write(chunk)
            os.chmod(tmp, 0o755 if m.mode & 0o111 else 0o644)
            os.replace(tmp, target)
    return skipped


# -- the handle ---------------------------------------------------------------------------------
class RemoteHandle(RunHandle):
    """A run container on a remote host's engine, its run directory there."""

    def __init__(self, backend: RemoteDockerBackend, run_id: str, run_dir: Path, container: str,
                 remote_dir: str) -> None:
        super().__init__(run_id)
        self.backend = backend
        self.rd = RunDir(run_dir)
        self.container = container
        self.remote_dir = remote_dir
        self.grace = backend.config.cancel_grace
        self._settled = False

    @property
    def session(self) -> Session:
        return self.backend.session

    @property
    def locator(self) -> dict[str, Any]:
        return {"host": self.session.label, "container": self.container,
                "remote_run_dir": self.remote_dir}

    # -- what the host says ------------------------------------------------------------------
    def _observe(self) -> tuple[RunStatus | None, dict[str, Any] | None, bool]:
        """(status.json on the host, the container's State or None when gone, cancel asked)."""
        d = self.backend.docker
        r = self.session.run(
            f"cat {_q(self.remote_dir)}/status.json 2>/dev/null; echo; echo '@@runner@@'; "
            f"[ -e {_q(self.remote_dir)}/cancel ] && echo cancel; echo '@@runner@@'; "
            f"{d} inspect --format '{{{{json .State}}}}' {_q(self.container)} 2>&1", timeout=60)
        status_text, cancel_text, state_text = (r.stdout.split("@@runner@@\n") + ["", ""])[:3]
        try:
            st = RunStatus.from_dict(json.loads(status_text)) if status_text.strip() else None
        except (json.JSONDecodeError, KeyError, ValueError):
            st = None
        state: dict[str, Any] | None
        if r.ok:
            state = json.loads(state_text.strip().splitlines()[-1])
        elif "no such" in state_text.lower():
            state = None
        else:
            raise RuntimeError(f"docker inspect on {self.session.label} failed: "
                               f"{state_text.strip() or r.last_error()}")
        return st, state, cancel_text.strip() == "cancel"

    def status(self) -> RunStatus:
        if self._settled:
            local = self.rd.status()
            if local is not None:
                return local
        st, state, cancelled = self._observe()
        if state is None:
            if st is not None and st.terminal:
                return self._settle(st, None, cancelled)
            return self._settle(None, None, cancelled)
        if state.get("Status") in ("running", "paused", "restarting"):
            if st is not None and st.state == RunState.RUNNING:
                return st
            if st is not None and st.terminal:
                return RunStatus(RunState.RUNNING, message="finishing")
            return RunStatus(RunState.RUNNING)
        if state.get("Status") == "created":
            return RunStatus(RunState.QUEUED)
        return self._settle(st, state, cancelled)

    def _final(self, st: RunStatus | None, state: Mapping[str, Any] | None,
               cancelled: bool) -> RunStatus:
        if state is not None and state.get("OOMKilled"):
            limit = self.backend.config.memory
            return RunStatus(RunState.FAILED, exit_code=(st.exit_code if st and st.terminal
                                                          else None) or state.get("ExitCode") or 137,
                             oom=True, message="out of memory: killed for exceeding the container's "
                             f"memory limit{f' of {limit}' if limit else ''} (raise target.memory, "
                             "or use less)")
        if st is not None and st.terminal:
            return st
        if cancelled:
            return RunStatus(RunState.CANCELLED, message="cancelled")
        code = state.get("ExitCode") if state is not None else None
        where = f"container exit code {code}" if state is not None else \
            f"container {self.container} vanished on {self.session.label}"
        return RunStatus(RunState.LOST, exit_code=code,
                         message=f"the worker ended without a final status ({where})")

    def _settle(self, st: RunStatus | None, state: Mapping[str, Any] | None,
                cancelled: bool) -> RunStatus:
        """The run has ended: record the truth on the host, bring the run directory back,
        remove the container and verify it is gone."""
        final = self._final(st, state, cancelled)
        if final != st:
            blob = json.dumps(final.to_dict() | {"time": time.time()})
            self.session.run(f"cd {_q(self.remote_dir)} 2>/dev/null && printf '%s' {_q(blob)} "
                             "> .status.json.tmp && mv -f .status.json.tmp status.json",
                             timeout=60)
        try:
            self._fetch(self.rd.path)
        finally:
            self.backend.cli.remove(self.container)
            self.rd.write_status(final)
            self._settled = True
        return final

    def _fetch(self, dest: Path) -> None:
        cfg = self.backend.config
        cap_k = int(cfg.max_fetch_mb) * 1024
        out = f"{self.backend.work_dir}/outgoing/{self.run_id}.{os.getpid()}.tar"
        r = self.session.run(
            f"cd {_q(self.remote_dir)} || exit 3; mkdir -p {_q(os.path.dirname(out))}; "
            f"sz=$(du -sk --exclude=./code . | cut -f1); ex=''; "
            f"if [ \"$sz\" -gt {cap_k} ]; then ex=--exclude=./outputs; echo \"over $sz\"; fi; "
            f"tar -cf {_q(out)} --exclude=./code --exclude=./.runner-env $ex . 2>&1 "
            "|| { echo 'tar failed'; exit 4; }", timeout=600)
        if r.returncode == 3:
            print(f"warning: run {self.run_id}: its directory {self.remote_dir} is gone from "
                  f"{self.session.label}; nothing to fetch.", file=sys.stderr)
            return
        if not r.ok:
            raise UserError(f"run {self.run_id}: packing {self.remote_dir} on "
                            f"{self.session.label} failed: {r.stdout.strip() or r.last_error()}")
        buf = bytearray()
        try:
            self.session.get_file(out, buf.extend)
        finally:
            self.session.run(f"rm -f {_q(out)}", timeout=60)
        skipped = safe_extract(bytes(buf), dest, max_bytes=cap_k * 1024 + (64 << 20))
        if skipped:
            print(f"warning: run {self.run_id}: not fetched (links or paths outside the run "
                  f"directory): {', '.join(skipped[:5])}", file=sys.stderr)
        over = next((ln for ln in r.stdout.splitlines() if ln.startswith("over ")), None)
        if over:
            size = int(over.split()[1]) * 1024
            note = (f"the outputs of run {self.run_id} are {size_text(size)} on {self.session.label}, "
                    f"over target.max_fetch_mb ({cfg.max_fetch_mb} MiB): they stay at "
                    f"{self.remote_dir}/outputs. Raise target.max_fetch_mb, or copy them with "
                    f"scp/rsync.")
            (Path(dest) / OUTPUTS).mkdir(parents=True, exist_ok=True)
            (Path(dest) / OUTPUTS / "NOT_FETCHED.txt").write_text(note + "\n")
            print(f"warning: {note}", file=sys.stderr)

    # -- control -----------------------------------------------------------------------------
    def cancel(self) -> RunStatus:
        st = self.status()
        if st.terminal:
            self.backend.cli.remove(self.container)
            return st
        self.rd.request_cancel()
        d = self.backend.docker
        grace = max(1, math.ceil(self.grace))
        self.session.run(f"touch {_q(self.remote_dir)}/cancel; "
                         f"{d} stop --time {grace} {_q(self.container)} >/dev/null 2>&1",
                         timeout=grace + 60)
        deadline = time.monotonic() + 10
        while True:
            st2, state, _ = self._observe()
            running = state is not None and state.get("Status") in ("running", "paused")
            if not running or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if running:
            self.session.run(f"{d} kill {_q(self.container)} >/dev/null 2>&1", timeout=60)
            st2, state, _ = self._observe()
        return self._settle(st2, state, True)

    # -- logs and outputs --------------------------------------------------------------------
    def logs(self, offset: int = 0) -> Iterator[tuple[int, str]]:
        if self._settled:
            yield from self.rd.read_log(offset, final=True)
            return
        data = self.session.read_file(f"{self.remote_dir}/{LOG}", offset)
        if not data:
            return
        self._mirror(offset, data)
        pos = offset
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break  # a partial line may still grow: held back until it ends
            pos += len(raw)
            yield pos, raw.decode("utf-8", "replace")

    def _mirror(self, offset: int, data: bytes) -> None:
        """Keep the local log.txt a prefix of the host's, so `runner logs RUN` works offline."""
        try:
            with open(self.rd.log, "r+b" if self.rd.log.exists() else "wb") as f:
                if f.seek(0, os.SEEK_END) >= offset:
                    f.seek(offset)
                    f.write(data)
        except OSError:
            pass

    def fetch_outputs(self, dest: Path) -> None:
        if not self._settled:
            self.status()
        if Path(dest).resolve() == self.rd.path.resolve():
            return  # fetched when the run ended
        self._fetch(Path(dest))


# -- the backend --------------------------------------------------------------------------------
@dataclass(frozen=True)
class HostFacts:
    """What one command learns about the host at prepare."""

    home: str
    uid: str
    gid: str
    work_dir: str
    free_kb: int | None
    base_id: str | None
    env_tags: dict[str, str]  # tag -> image id


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

    def gpu_devices(self) -> list[str] | None:
        """``gpus: all`` is counted with ``nvidia-smi -L`` on the host."""
        from runner.gpus import count_listed, device_ids

        def count() -> int | None:
            r = self.session.run("nvidia-smi -L", timeout=30)
            return count_listed(r.stdout) if r.ok else None

        return device_ids(self.config.gpus, count)

    # -- facts about the host ------------------------------------------------------------------
    def facts(self, base: str | None = None, *, refresh: bool = False) -> HostFacts:
        """One command: home, uid, docker's answer, the work dir (made, writable, free space),
        the base image's ID and the env images present. Each failure is a clear UserError."""
        if self._facts is not None and not refresh and base is None:
            return self._facts
        c, d = self.config, self.docker
        wd = c.work_dir
        wd_expr = '"$HOME"/' + _q(wd[2:]) if wd.startswith("~/") else _q(wd)
        base_part = (f"echo '@@base'; {d} image inspect --format '{{{{.Id}}}}' {_q(base)} "
                     "2>/dev/null || echo -; " if base else "")
        script = (
            "echo \"$HOME\"; id -u; id -g; "
            f"v=$({d} version --format '{{{{.Server.Version}}}}' 2>&1); rc=$?; "
            "if [ $rc -ne 0 ]; then echo '@@docker'; echo \"$rc\"; echo \"$v\"; "
            "echo \"PATH=$PATH\"; exit 0; fi; "
            f"W={wd_expr}; echo \"$W\"; "
            "e=$(mkdir -p \"$W/objects\" \"$W/runs\" \"$W/incoming\" \"$W/outgoing\" 2>&1 && "
            "touch \"$W/.write-probe\" 2>&1 && rm -f \"$W/.write-probe\"); "
            "if [ -n \"$e\" ]; then echo '@@workdir'; echo \"$e\"; exit 0; fi; "
            "df -Pk \"$W\" | tail -1 | awk '{print $4}'; "
            + base_part
            + f"echo '@@envs'; {d} image ls --no-trunc --filter label={dk.L_KIND}=env "
            "--format '{{.Repository}}:{{.Tag}} {{.ID}}'"
        )
        r = self.session.run(script, timeout=60)
        lines = r.stdout.splitlines()
        where = self.session.label
        if "@@docker" in lines:
            i = lines.index("@@docker")
            rc, msg, path = lines[i + 1], "\n".join(lines[i + 2:-1]), lines[-1]
            raise self._docker_error(rc, msg, path, where)
        if "@@workdir" in lines:
            i = lines.index("@@workdir")
            raise self._workdir_error(lines[i + 1] if len(lines) > i + 1 else "", lines[3]
                                      if len(lines) > 3 else wd, where)
        if not r.ok or len(lines) < 5:
            raise UserError(f"could not inspect {where}: {r.last_error()}")
        home, uid, gid, work, free = lines[:5]
        base_id = None
        tags: dict[str, str] = {}
        if "@@base" in lines:
            b = lines[lines.index("@@base") + 1]
            base_id = None if b == "-" else b
        for ln in lines[lines.index("@@envs") + 1:] if "@@envs" in lines else []:
            tag, _, image_id = ln.partition(" ")
            tags[tag] = image_id
        self._facts = HostFacts(home, uid, gid, work, int(free) if free.isdigit() else None,
                                base_id, tags)
        return self._facts

    def _docker_error(self, rc: str, msg: str, path: str, where: str) -> UserError:
        cmd = self.docker
        if rc == "127" or "not found" in msg:
            return UserError(
                f"`{cmd}` is not on the non-interactive PATH of {where} ({msg.strip()}).",
                f"commands over SSH get a shorter PATH than a login shell: {path}",
                "set target.docker to its full path (find it with `ssh HOST 'bash -lc \"command "
                "-v docker\"'`, e.g. /usr/bin/docker), or install Docker there.",
            )
        if "permission denied" in msg.lower():
            return UserError(
                f"{where}: this user may not use the Docker engine ({msg.strip()}).",
                "add the user to the docker group on the host (`sudo usermod -aG docker USER`, "
                "then log in again), or set target.docker: \"sudo -n docker\".",
            )
        return UserError(f"the Docker engine on {where} does not answer: {msg.strip()}",
                         "start it there (`sudo systemctl start docker`) and check that "
                         "`docker version` works for this user.")

    def _workdir_error(self, msg: str, wd: str, where: str) -> UserError:
        if "No space left" in msg:
            what = "is full"
        elif "Read-only" in msg:
            what = "is on a read-only file system"
        else:
            what = "cannot be written"
        return UserError(f"the remote work dir {wd} on {where} {what}: {msg.strip()}",
                         "free space there, fix its permissions, or point target.work_dir at a "
                         "writable folder with room (runs, code objects and outputs live there).")

    # -- environments --------------------------------------------------------------------------
    def _gpus(self, spec: RunSpec) -> str | None:
        gpus = spec.gpus if spec.gpus is not None else spec.env.gpus
        if gpus is None and spec.env.require_gpu:
            gpus = "all"
        return None if gpus in ("", "none") else gpus

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
        gpus = self._gpus(spec)
        if gpus and self.config.gpu_preflight:
            self._gpu_preflight(spec, image.tag, gpus, details)
        return Prepared(image.key, image.cached, image.reason, details)

    def _gpu_preflight(self, spec: RunSpec, tag: str, gpus: str, details: dict[str, Any]) -> None:
        where = self.session.label
        r = self.session.run("nvidia-smi -L 2>&1", timeout=60)
        if not r.ok or "GPU" not in r.stdout:
            seen = r.stdout.strip() or r.last_error()
            raise UserError(
                f"GPU preflight failed for env {spec.env.name} on {where} (--gpus {gpus}): "
                "missing layer: host driver.",
                f"MISSING host driver: `nvidia-smi -L` on the host answered: {seen[:300]}",
                "install the NVIDIA driver on the host (nvidia-smi must list the GPUs), or run "
                "without GPUs (gpus: null). The run was not started.",
            )
        pre = dk.gpu_preflight(self.cli, tag, gpus)
        details["gpu_preflight"] = f"ok      host driver: {r.stdout.strip()}\n" + pre.render()
        if not pre.ok:
            raise UserError(
                f"GPU preflight failed for env {spec.env.name} on {where} (--gpus {gpus}, image "
                f"{tag}): missing layer: {pre.missing}.",
                *pre.render().splitlines(),
                "the run was not started (it would have trained on the CPU). Fix the missing "
                "layer, or run without GPUs (gpus: null).",
            )

    # -- runs ------------------------------------------------------------------------------------
    def _manifest(self, request: RunRequest, rd: RunDir) -> dict[str, list[Any]]:
        """{path: [sha256, size, mode]} of the run's code (the snapshot's, else hashed now)."""
        manifest = request.code_manifest
        if manifest:
            return {k: list(v) for k, v in manifest.items()}
        out: dict[str, list[Any]] = {}
        if rd.code.is_dir():
            for p in sorted(rd.code.rglob("*")):
                if p.is_file() and not p.is_symlink():
                    data = p.read_bytes()
                    out[p.relative_to(rd.code).as_posix()] = [
                        hashlib.sha256(data).hexdigest(), len(data), p.stat().st_mode & 0o777]
        return out

    def _ask(self, hashes: list[str], digests: list[str]) -> tuple[set[str], set[str]]:
        """One command: the code objects the host lacks, the data trees it has (each tree
        found is touched: its age is the time since a run last used it, for remote-gc)."""
        w = self.work_dir
        if not hashes and not digests:
            return set(), set()
        trees = "".join(f"[ -d data/{d} ] && touch data/{d} && echo tree:{d}; " for d in digests)
        r = self.session.run(f"cd {_q(w)} && {trees}cd objects && for h in {' '.join(hashes)}; "
                             "do [ -f \"$h\" ] || echo \"$h\"; done", timeout=120)
        if not r.ok:
            raise UserError(f"could not list the content store {w}/objects on "
                            f"{self.session.label}: {r.last_error()}")
        words = r.stdout.split()
        return ({h for h in words if not h.startswith("tree:")},
                {h[5:] for h in words if h.startswith("tree:")})

    def _ship(self, spec: RunSpec, request: RunRequest, rd: RunDir, remote_rd: str,
              secrets_env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Send the data inputs and the run directory, by content: only objects the host lacks
        travel. Returns what the code and what the data cost."""
        w = self.work_dir
        manifest = self._manifest(request, rd)
        hashes = sorted({v[0] for v in manifest.values()})
        staged = [d for d in request.data_inputs if not d.on_target and d.digest]
        missing, trees = self._ask(hashes, sorted({str(d.digest) for d in staged}))
        data_cost: dict[str, Any] = {}
        if staged:
            facts = self.facts()
            free = None if facts.free_kb is None else max(
                0, facts.free_kb - self.config.min_free_mb * 1024)
            shipped, totals = store.stage(self.session, w, staged, trees, free_kb=free)
            data_cost = {"inputs": [dataclasses.asdict(s) for s in shipped], **totals}
            for s in shipped:
                print(s.line(self.session.label), file=sys.stderr, flush=True)
            # code files that are data too are in objects/ now: sending them again would
            # replace the objects the data trees link to with new copies
            missing -= {sha for d in staged for sha, _ in d.manifest.values()}
        by_hash = {v[0]: p for p, v in manifest.items()}
        rid = spec.run_id
        buf = io.BytesIO()
        sent = 0

        def add(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))

        with tarfile.open(fileobj=buf, mode="w") as tar:
            for h in sorted(missing):
                data = (rd.code / by_hash[h]).read_bytes()
                if hashlib.sha256(data).hexdigest() != h:
                    raise UserError(f"run {rid}: code/{by_hash[h]} changed after the snapshot was "
                                    "taken; submit again.")
                add(f"objects/{h}", data)
                sent += len(data)
            for p in sorted(rd.path.iterdir()):
                if p.name not in _NOT_SHIPPED and p.is_file():
                    add(f"run/{p.name}", p.read_bytes())
            if secrets_env:
                # secrets go in a 0600 file read by `docker run --env-file`, removed right after
                # the start: never on a command line, never in the run directory that comes back
                add("run/.runner-env",
                    "".join(f"{k}={v}\n" for k, v in secrets_env.items()).encode(), 0o600)
            dirs = sorted({str(Path(p).parent) for p in manifest if "/" in p})
            setup = ["set -e", f"cd {_q(w)}", f"mkdir -p {_q(remote_rd)}/code {_q(remote_rd)}/outputs"]
            if dirs:
                setup.append("cd " + _q(f"{remote_rd}/code") + " && mkdir -p "
                             + " ".join(_q(d) for d in dirs) + " && cd " + _q(w))
            for path, (h, _size, _mode) in sorted(manifest.items()):
                setup.append(f"cp objects/{h} {_q(remote_rd + '/code/' + path)}")
            execs = [p for p, v in manifest.items() if int(v[2]) & 0o111]
            if execs:
                setup.append("cd " + _q(f"{remote_rd}/code") + " && chmod +x "
                             + " ".join(_q(p) for p in execs) + " && cd " + _q(w))
            add("run/.runner-setup.sh", ("\n".join(setup) + "\n").encode())
        archive = buf.getvalue()
        incoming = f"{w}/incoming/{rid}"
        try:
            self.session.write_file(incoming + ".tar", archive, mode=0o600)
        except OSError as e:
            raise self._workdir_error(str(e), w, self.session.label) from None
        # unpack next to the store, publish objects by rename (a concurrent submit never sees a
        # half-written one), then move the run files into place and assemble code/
        r = self.session.run(
            f"set -e; cd {_q(w)}; rm -rf {_q(incoming)}; mkdir -p {_q(incoming)} {_q(remote_rd)}; "
            f"tar -xf {_q(incoming)}.tar -C {_q(incoming)} 2>&1; "
            f"if [ -d {_q(incoming)}/objects ]; then find {_q(incoming)}/objects -type f -exec "
            "mv -f -t objects {} +; fi; "
            f"mv -f {_q(incoming)}/run/* {_q(incoming)}/run/.runner-* {_q(remote_rd)}/ 2>&1; "
            f"sh {_q(remote_rd)}/.runner-setup.sh 2>&1; "
            f"rm -rf {_q(incoming)} {_q(incoming)}.tar {_q(remote_rd)}/.runner-setup.sh; "
            f": > {_q(remote_rd)}/{LOG}", timeout=600, retry=False)
        if not r.ok:
            self.session.run(f"rm -rf {_q(incoming)} {_q(incoming)}.tar", timeout=60)
            lines = (r.stdout + r.stderr).strip().splitlines() or [r.last_error()]
            telling = [ln for ln in lines if any(k in ln for k in _FS_ERRORS)]
            raise self._workdir_error((telling or lines)[-1], w, self.session.label)
        total = sum(int(v[1]) for v in manifest.values())
        return {"files": len(manifest), "bytes": total, "sent_files": len(missing),
                "sent_bytes": sent, "archive_bytes": len(archive)}, data_cost

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
        shipped, data_shipped = self._ship(spec, request, rd, remote_rd, secrets_env)
        gpus = self._gpus(spec)
        staged = [d for d in request.data_inputs if not d.on_target]
        labels = {
            dk.L_MANAGED: "1", dk.L_KIND: "run", dk.L_RUN_ID: spec.run_id,
            dk.L_TARGET: spec.target_name, dk.L_PROJECT: str(spec.project_root),
            dk.L_RUN_DIR: remote_rd, dk.L_ENV_KEY: prepared.env_key, L_SLOTS: "1",
            **{f"{dk.LABEL}.label.{k}": str(v) for k, v in spec.labels.items()},
        }
        if staged:
            labels[L_DATA] = ",".join(sorted({str(d.digest) for d in staged}))
        env = {"TINI_KILL_PROCESS_GROUP": "1"}
        if facts.uid != "0":
            env["HOME"] = "/tmp"  # the host user's uid has no home in the image
        visible = dk.visible_devices(gpus)
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        if staged:
            env[DATA_DIR_ENV] = dk.DATA_MOUNT
        if c.cache_volume:
            env.update(dk.cache_env())
        container = dk.ContainerSpec(
            name=f"runner-{spec.run_id}",
            image=str(prepared.details.get("image") or dk.image_tag(prepared.env_key)),
            command=dk.worker_command(), labels=labels,
            mounts=[(remote_rd, dk.RUN_MOUNT)],
            readonly=dk.data_mounts(request.data_inputs,
                                     lambda d: store.tree_path(facts.work_dir, d), folders=True),
            volumes=[(c.cache_volume, dk.CACHE_MOUNT)] if c.cache_volume else [],
            workdir=f"{dk.RUN_MOUNT}/code",
            env=env, user=f"{facts.uid}:{facts.gid}",
            network=c.network, cpus=c.cpus, memory=c.memory, shm_size=c.shm_size, gpus=gpus,
        )
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
        return _doctor(self)


def _doctor(b: RemoteDockerBackend) -> list[Check]:
    """The checks of ``runner doctor TARGET``: each layer a run needs, with a fix for each."""
    c, out = b.config, []
    t0 = time.monotonic()
    try:
        b.session.connect()
    except UserError as e:
        out.append(Check("ssh", False, e.message, " ".join(e.hints)))
        return out + [Check(n, False, "not checked: no SSH connection", "fix ssh first")
                      for n in ("docker on PATH", "docker permission", "work dir", "disk space",
                                "gpu", "clock skew")]
    s = b.session
    out.append(Check("ssh", True, f"{s.label} in {time.monotonic() - t0:.2f}s (host key known)"))
    try:
        s.sftp()
        out.append(Check("sftp", True, "file transfer subsystem answers"))
    except UserError as e:
        out.append(Check("sftp", False, e.message, " ".join(e.hints)))
    r = s.run(f"v=$({b.docker} version --format '{{{{.Server.Version}}}}' 2>&1); echo \"$?\"; "
              "echo \"$v\" | tail -1; echo \"$PATH\"; "
              "command -v bash >/dev/null && bash -lc 'command -v docker' 2>/dev/null", timeout=60)
    lines = r.stdout.splitlines() + ["", "", "", ""]
    rc, msg, path, login_docker = lines[0], lines[1], lines[2], lines[3]
    if rc == "127" or "not found" in msg:
        out.append(Check("docker on PATH", False, f"`{b.docker}` not found; non-interactive PATH "
                         f"is {path}", f"set target.docker: {login_docker or '/usr/bin/docker'}"
                         + (" (where a login shell finds it)" if login_docker else "")))
        out.append(Check("docker permission", False, "not checked: no docker command",
                         "fix docker on PATH first"))
    else:
        out.append(Check("docker on PATH", True, f"`{b.docker}` found (PATH {path})"))
        if rc == "0":
            out.append(Check("docker permission", True, f"engine {msg} answers this user"))
        elif "permission denied" in msg.lower():
            out.append(Check("docker permission", False, msg,
                             "sudo usermod -aG docker USER on the host, then reconnect; or "
                             "target.docker: \"sudo -n docker\""))
        else:
            out.append(Check("docker permission", False, f"the engine does not answer: {msg}",
                             "start it: sudo systemctl start docker"))
    try:
        facts = b.facts(refresh=True)
        out.append(Check("work dir", True, f"{facts.work_dir} writable"))
        free_mb = (facts.free_kb or 0) // 1024
        out.append(Check("disk space", free_mb >= c.min_free_mb,
                         f"{free_mb} MiB free in {facts.work_dir} (need {c.min_free_mb})",
                         "free space (old runs are in WORK_DIR/runs/), or point target.work_dir "
                         "at a bigger disk"))
    except UserError as e:
        if "work dir" in e.message:
            out.append(Check("work dir", False, e.message, " ".join(e.hints)))
        out.append(Check("disk space", False, "not checked", "fix the checks above first"))
    if c.gpus:
        g = s.run("nvidia-smi -L 2>&1", timeout=60)
        out.append(Check("gpu: host driver", g.ok and "GPU" in g.stdout,
                         (g.stdout.strip() or g.last_error())[:200],
                         "install the NVIDIA driver on the host: nvidia-smi must list the GPUs"))
        rt = s.run(f"{b.docker} info --format '{{{{json .Runtimes}}}}'", timeout=60)
        has = "nvidia" in rt.stdout
        out.append(Check("gpu: container toolkit", has,
                         "the engine has the nvidia runtime (--gpus accepted)" if has else
                         f"runtimes: {rt.stdout.strip() or rt.last_error()}",
                         "install the NVIDIA container toolkit on the host and restart dockerd"))
    else:
        out.append(Check("gpu", True, "no GPUs configured (target.gpus: null)"))
    t1 = time.time()
    d = s.run("date +%s.%N", timeout=30)
    t2 = time.time()
    try:
        skew = float(d.stdout.strip()) - (t1 + t2) / 2
        out.append(Check("clock skew", abs(skew) < 2.0, f"host clock is {skew:+.2f}s from this one",
                         "enable time sync on the host (e.g. `timedatectl set-ntp true`); run "
                         "times and metrics timestamps come from its clock"))
    except ValueError:
        out.append(Check("clock skew", False, f"`date` answered {d.stdout.strip()!r}",
                         "the host needs a POSIX date"))
    return out


# -- runner attach ------------------------------------------------------------------------------
def _attach_arguments(p: Any) -> None:
    p.add_argument("name", help="the target's name: writes conf/target/NAME.yaml")
    p.add_argument("--host", required=True, help="host name, address or ssh_config alias")
    p.add_argument("--user", help="login user (default: ssh_config's, else yours)")
    p.add_argument("--port", type=int, help="SSH port (default: ssh_config's, else 22)")
    p.add_argument("--key", help="private key file (the SSH agent is used too)")
    p.add_argument("--gpus", help='GPUs offered to runs: "all" or "0,1" (default: none)')
    p.add_argument("--slots", type=int, default=1, help="runs at once on the host (default 1)")
    p.add_argument("--work-dir", default=RemoteDockerConfig.work_dir,
                   help="folder on the host for code objects and run directories")
    p.add_argument("--docker", default="docker", help="docker command on the host")
    p.add_argument("--trust-host-key", metavar="SHA256:...",
                   help="the host key fingerprint you checked; added to the known_hosts file")
    p.add_argument("--ssh-config", help="ssh_config file with the host's alias (default ~/.ssh/config)")
    p.add_argument("--known-hosts", help="known_hosts file to check and to add a trusted key to")
    p.add_argument("--force", action="store_true", help="replace an existing target file")
    p.add_argument("--install-key", action="store_true",
                   help="when the host refuses the key: ask once for the account's password and "
                        "add KEY.pub to ~/.ssh/authorized_keys there (the password is not kept)")


def _yaml_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return json.dumps(str(v))


def target_yaml(c: RemoteDockerConfig, comment: str) -> str:
    """A commented target file for ``c`` (only the keys that differ from the defaults are
    active; the rest are listed, commented out, to show what can be set)."""
    lines = [f"# {comment}", "backend: remote_docker"]
    defaults = RemoteDockerConfig()
    for f in dataclasses.fields(RemoteDockerConfig):
        if f.name == "backend":
            continue
        v = getattr(c, f.name)
        line = f"{f.name}: {_yaml_value(v)}"
        lines.append(line if v != getattr(defaults, f.name) or f.name in ("host", "slots", "gpus")
                     else f"# {line}")
    return "\n".join(lines) + "\n"


#: The key ``--install-key`` installs when ``--key`` is not given.
DEFAULT_KEY = "~/.ssh/id_ed25519"


def _public_key(key: Path) -> str:
    """The one authorized_keys line of ``key``'s pair (``KEY.pub``), checked."""
    pub = key.with_name(key.name + ".pub")
    make = f"make one with: ssh-keygen -t ed25519 -f {key} (then load it into the SSH agent " \
           "if you give it a passphrase), and run this again"
    if not key.is_file() or not pub.is_file():
        missing = ", ".join(str(p) for p in (key, pub) if not p.is_file())
        raise UserError(f"--install-key: no key pair to install ({missing} does not exist).",
                        make + "; or name an existing pair's private key with --key.")
    lines = [ln for ln in pub.read_text(errors="replace").splitlines() if ln.strip()]
    parts = lines[0].split() if len(lines) == 1 else []
    try:
        ok = len(parts) >= 2 and bool(base64.b64decode(parts[1], validate=True))
    except ValueError:
        ok = False
    if not ok:
        raise UserError(f"--install-key: {pub} is not an OpenSSH public key (one line: "
                        "TYPE BASE64 [COMMENT]).", make + ".")
    return " ".join(parts)


def _install_key(c: RemoteDockerConfig, refused: KeyRefused, trust: str | None, hint: str) -> None:
    """Ask once for the password of the account that refused the key, log in with it (the
    host key checked as for any connection), install the public key and disconnect."""
    import getpass  # deferred: only this path asks anything
    import warnings

    key = Path(c.key or DEFAULT_KEY).expanduser()
    line = _public_key(key)
    try:
        with warnings.catch_warnings():  # without a terminal getpass says so itself, once
            warnings.simplefilter("ignore", getpass.GetPassWarning)
            password = getpass.getpass(
                f"password for {refused.where} (asked once, used only to install {key}.pub "
                "there; not stored): ")
    except (EOFError, KeyboardInterrupt):
        password = ""
    if not password:
        raise UserError(f"--install-key: no password was given for {refused.where}; nothing "
                        "was installed or written.",
                        "run the command again from a terminal and type the account's password "
                        "at the prompt.")
    session = Session(_settings(c), trust=trust, trust_hint=hint)
    try:
        session.connect(password=password)
        del password
        added = session.install_public_key(line)
        label = session.label
    finally:
        session.close()
    print(f"{'installed' if added else 'already there:'} {key}.pub in ~/.ssh/authorized_keys "
          f"of {label}; the password is not kept")


def _attach(args: Any) -> int:
    from runner.store import find_project_root

    trust = args.trust_host_key
    if trust is not None and not trust.startswith("SHA256:"):
        raise UserError(f"--trust-host-key: '{trust}' is not a SHA256 fingerprint.",
                        "copy it as the refusal printed it: SHA256:<43 characters>")
    key = args.key or (DEFAULT_KEY if args.install_key else None)
    c = RemoteDockerConfig(
        host=args.host, user=args.user, port=args.port,
        key=str(Path(key).expanduser().resolve()) if key else None,
        ssh_config=str(Path(args.ssh_config).expanduser().resolve()) if args.ssh_config else None,
        known_hosts=str(Path(args.known_hosts).expanduser().resolve()) if args.known_hosts else None,
        gpus=args.gpus, slots=args.slots, work_dir=args.work_dir, docker=args.docker)
    root = find_project_root()
    path = root / "conf" / "target" / f"{args.name}.yaml"
    if path.exists() and not args.force:
        raise UserError(f"{path} already exists.", "pick another name, or pass --force to "
                        "replace it.")
    if args.install_key:
        _public_key(Path(c.key or DEFAULT_KEY))  # a missing pair is refused before any login
    hint = _attach_hint(c, args.name)
    session = Session(_settings(c), trust=trust, trust_hint=hint)
    try:
        try:
            session.connect()
        except KeyRefused as refused:
            if not args.install_key:
                raise
            _install_key(c, refused, trust, hint)
            try:
                session.connect()
            except KeyRefused as e:
                raise UserError(
                    f"{e.where} still refuses {c.key} after it was added to "
                    "~/.ssh/authorized_keys there.",
                    "the host's sshd may read keys from another file (AuthorizedKeysFile) or "
                    "ignore them because the home folder is group- or world-writable "
                    "(StrictModes); `ssh -v` shows why.") from None
        backend = RemoteDockerBackend(c)
        backend._session = session
        facts = backend.facts()
        if c.gpus:
            r = session.run("nvidia-smi -L 2>&1", timeout=60)
            gpu_line = r.stdout.strip().splitlines()[0] if r.ok and r.stdout.strip() else \
                "nvidia-smi does not answer (`runner doctor` says more)"
        else:
            gpu_line = "none requested"
        label = session.label
    finally:
        session.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(target_yaml(c, f"{label}: a Docker engine reached over SSH (runner attach)"))
    print(f"attached {args.name}: {label}, Docker answers, work dir {facts.work_dir} "
          f"({(facts.free_kb or 0) // 1024} MiB free), GPUs: {gpu_line}")
    print(f"wrote {path}; use it with: runner submit target={args.name}")
    return 0


def attach_command() -> Command:
    return Command("attach", "attach a remote Docker host over SSH as a target "
                   "(writes conf/target/NAME.yaml)", _attach_arguments, _attach)


# -- runner remote-gc ---------------------------------------------------------------------------
#: What a run directory's name may be (anything else under runs/ was not made by the runner).
_RUN_DIR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class OldRunDir:
    """A run directory under the host's ``WORK_DIR/runs`` that garbage collection may remove."""

    run_id: str
    age: float  # seconds since its run ended (ledger), else since the folder last changed (host)
    size_kb: int
    known: bool  # this project's ledger has the run


def load_remote_target(name: str) -> tuple[Any, RemoteDockerBackend]:
    """The ledger (:class:`runner.launch.Runs`) and a backend for target ``name`` of the
    current project, loaded and validated as ``runner doctor NAME`` does."""
    from omegaconf import DictConfig, OmegaConf

    from runner import config as conf
    from runner.launch import Runs

    runs = Runs()
    path = conf.config_file("target", name, runs.dirs)
    names = conf.options("target", runs.dirs)
    if not Path(path).is_file():
        raise UserError(f"unknown target '{name}'.",
                        f"available target options: {', '.join(names) or 'none'}",
                        "attach a host as a target with: runner attach NAME --host HOST")
    cfg = OmegaConf.create({"target": OmegaConf.load(path)})
    cls, target_conf = conf.target_config(cfg, name, runs.registry, runs.dirs)
    if not issubclass(cls, RemoteDockerBackend):
        def backend_of(n: str) -> Any:
            node = OmegaConf.load(conf.config_file("target", n, runs.dirs))
            return node.get("backend") if isinstance(node, DictConfig) else None

        remote = [n for n in names if backend_of(n) == RemoteDockerBackend.name]
        raise UserError(
            f"target '{name}' ({path}) uses backend '{cls.name}'; remote-gc cleans hosts of "
            f"{RemoteDockerBackend.name} targets.",
            f"{RemoteDockerBackend.name} targets here: {', '.join(remote) or 'none'}",
            "for this machine's engine: runner docker-orphans, runner docker-prune")
    return runs, cls(target_conf)


def old_run_dirs(b: RemoteDockerBackend, records: Mapping[str, Any], older_than: float,
                 keep: set[str]) -> list[OldRunDir]:
    """Run directories under the host's work dir whose run ended more than ``older_than``
    seconds ago. ``records``: this project's ledger by run id (a known run's age is from its
    end there; an unknown run's from the newest change to the folder, its status or its log,
    by the host's clock). ``keep``: run ids never to list (in flight, or with a container)."""
    runs_dir = f"{b.work_dir}/runs"
    r = b.session.run(
        f"cd {_q(runs_dir)} 2>/dev/null || exit 0; date +%s; for d in *; do "
        "[ -d \"$d\" ] || continue; "
        "t=$(stat -c %Y \"$d\" \"$d/status.json\" \"$d/log.txt\" 2>/dev/null | sort -n | tail -1); "
        "k=$(du -sk \"$d\" 2>/dev/null | cut -f1); "
        "printf '%s %s %s\\n' \"${t:-0}\" \"${k:-0}\" \"$d\"; "
        "done", timeout=300)
    if not r.ok:
        raise UserError(f"could not list {runs_dir} on {b.session.label}: {r.last_error()}")
    lines = r.stdout.splitlines()
    if not lines:
        return []
    host_now = float(lines[0])
    out = []
    for line in lines[1:]:
        mtime, size, run_id = (line.split(" ", 2) + ["", ""])[:3]
        if not _RUN_DIR_NAME.fullmatch(run_id) or run_id in keep:
            continue
        rec = records.get(run_id)
        if rec is not None and not rec.state.terminal:
            continue
        if rec is not None:
            age = time.time() - (rec.finished or rec.updated)
        else:
            age = host_now - float(mtime or 0)
        if age > older_than:
            out.append(OldRunDir(run_id, age, int(size or 0), rec is not None))
    return out


def remove_run_dirs(b: RemoteDockerBackend, dirs: list[OldRunDir]) -> None:
    """``rm -rf`` those run directories on the host; verify they are gone."""
    if not dirs:
        return
    names = " ".join(_q(d.run_id) for d in dirs)
    runs_dir = f"{b.work_dir}/runs"
    r = b.session.run(f"cd {_q(runs_dir)} || exit 3; rm -rf -- {names} 2>&1; "
                      f"for d in {names}; do [ -e \"$d\" ] && echo \"left $d\"; done; true",
                      timeout=600)
    left = [ln.split(" ", 1)[1] for ln in r.stdout.splitlines() if ln.startswith("left ")]
    if not r.ok or left:
        cause = next((ln for ln in r.stdout.splitlines() if not ln.startswith("left ")),
                     r.last_error())
        raise UserError(f"could not remove run directories under {runs_dir} on "
                        f"{b.session.label}: {', '.join(left) or '?'} ({cause}).",
                        "check their owner and permissions on the host; a run's container "
                        "writes as the SSH user.")


def old_data(b: RemoteDockerBackend, older_than: float, in_use: set[str]
             ) -> tuple[list[tuple[str, int, float]], int, int]:
    """Data trees under ``data/`` that no run used for ``older_than`` seconds (a submit
    touches the tree it mounts) and that no container mounts (``in_use``), as (digest, size
    KiB, age); and the objects nothing links to any more (count, KiB): code objects, and
    data objects whose trees are gone. Objects are only a cache: removing one costs a
    re-upload at most."""
    minutes = int(older_than // 60)
    r = b.session.run(
        f"cd {_q(b.work_dir)} 2>/dev/null || exit 0; now=$(date +%s); "
        "for d in data/*; do [ -d \"$d\" ] || continue; "
        "t=$(stat -c %Y \"$d\"); printf 'tree %s %s %s\\n' \"${d#data/}\" "
        "\"$(du -sk \"$d\" | cut -f1)\" \"$((now - t))\"; done; "
        f"find objects -type f -links 1 -mmin +{minutes} -printf 'obj %k\\n' 2>/dev/null",
        timeout=600)
    trees, count, kib = [], 0, 0
    for line in r.stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["tree"] and len(parts) == 4 and re.fullmatch(r"[0-9a-f]{64}", parts[1]):
            if parts[1] not in in_use and float(parts[3]) > older_than:
                trees.append((parts[1], int(parts[2]), float(parts[3])))
        elif parts[:1] == ["obj"] and len(parts) == 2:
            count, kib = count + 1, kib + int(parts[1])
    return trees, count, kib


def remove_data(b: RemoteDockerBackend, trees: list[str], older_than: float) -> None:
    """Remove those trees, then every object nothing links to that is older than
    ``older_than`` seconds."""
    names = " ".join(f"data/{d}" for d in trees)
    r = b.session.run(f"cd {_q(b.work_dir)} || exit 3; rm -rf -- {names} 2>&1; "
                      f"find objects -type f -links 1 -mmin +{int(older_than // 60)} -delete 2>&1",
                      timeout=600)
    if not r.ok:
        raise UserError(f"could not remove data under {b.work_dir} on {b.session.label}: "
                        f"{(r.stdout.strip() or r.last_error())[-300:]}")


def _gc_arguments(p: Any) -> None:
    p.add_argument("target", help="a remote_docker target (conf/target/TARGET.yaml)")
    p.add_argument("--older-than", type=float, default=7.0, metavar="DAYS",
                   help="run directories whose run ended more than DAYS ago (default 7)")
    p.add_argument("--keep", type=int, default=1, metavar="N",
                   help="newest env images of each env to keep, used or not (default 1)")
    p.add_argument("--env", metavar="NAME", help="only the env images of this env")
    p.add_argument("--all-projects", action="store_true",
                   help="also containers started from other projects (only when no other "
                        "project uses the host: their runs are not in this ledger)")
    p.add_argument("--yes", action="store_true",
                   help="remove what is listed; without it, only list (a dry run)")


def _gc(args: Any) -> int:
    if args.older_than < 0:
        raise UserError(f"--older-than: must be 0 or more days, got {args.older_than:g}.",
                        "run directories whose run ended longer ago than that are removed.")
    if args.keep < 0:
        raise UserError(f"--keep: must be 0 or more, got {args.keep}.",
                        "it is how many of the newest images of each env stay (default 1).")
    runs, b = load_remote_target(args.target)
    runs.reconcile()
    records = {r.id: r for r in runs.store.list()}
    active = {i for i, r in records.items() if not r.state.terminal}
    facts = b.facts()
    print(f"{args.target}: {b.session.label}, work dir {facts.work_dir}")
    project = None if args.all_projects else str(runs.project_root)
    strays = dk.find_orphans(b.cli, active, project)
    hosted = dk.our_containers(b.cli)  # every project's: a run with a container keeps its dir
    keep = active | ({c.run_id for c in hosted} - {c.run_id for c in strays})
    dirs = old_run_dirs(b, records, args.older_than * 86400, keep)
    whose = "any project" if args.all_projects else "this project"
    if strays:
        print(f"containers with our labels that no in-flight run of {whose} accounts for "
              f"({len(strays)}):")
        for c in strays:
            print(f"  {c.name}  {c.state:10}  run {c.run_id or '-'}  ({c.kind})")
        if args.yes:
            b.cli.remove(*[c.id for c in strays])
            print(f"removed {len(strays)} container(s)")
    else:
        print(f"no stray containers of {whose} on {b.session.label}")
    if dirs:
        print(f"run directories under {facts.work_dir}/runs whose run ended over "
              f"{args.older_than:g} days ago ({len(dirs)}, {dk.size_text(sum(d.size_kb for d in dirs) * 1024)}):")
        for d in dirs:
            note = "" if d.known else "  (unknown to this project's ledger)"
            print(f"  runs/{d.run_id}  {dk.age_text(d.age)} ago  "
                  f"{dk.size_text(d.size_kb * 1024)}{note}")
        if args.yes:
            remove_run_dirs(b, dirs)
            print(f"removed {len(dirs)} run director{'y' if len(dirs) == 1 else 'ies'}")
    else:
        print(f"no run directories under {facts.work_dir}/runs ended over "
              f"{args.older_than:g} days ago")
    mounted = {dg for d in b.cli.labelled({dk.L_MANAGED: "1"})
               for dg in ((d.get("Config") or {}).get("Labels") or {}).get(L_DATA, "").split(",")
               if dg}
    trees, n_obj, obj_kb = old_data(b, args.older_than * 86400, mounted)
    if trees or n_obj:
        print(f"data trees under {facts.work_dir}/data no run used for {args.older_than:g} days "
              f"({len(trees)}, {dk.size_text(sum(t[1] for t in trees) * 1024)}), and objects "
              f"nothing links to ({n_obj}, {dk.size_text(obj_kb * 1024)}; the trees' own "
              "objects go with them):")
        for digest, kb, age in trees:
            print(f"  data/{digest[:16]}...  {dk.age_text(age)} ago  {dk.size_text(kb * 1024)}")
        if args.yes:
            remove_data(b, [t[0] for t in trees], args.older_than * 86400)
            print(f"removed {len(trees)} data tree(s) and the objects nothing links to")
    else:
        print(f"no data trees unused for {args.older_than:g} days under {facts.work_dir}/data")
    images = dk.prune_report(b.cli, keep=args.keep, env_name=args.env, yes=args.yes,
                             ignoring_containers=[c.id for c in strays])
    if not args.yes and (strays or dirs or images or trees or n_obj):
        again = ["runner", "remote-gc", args.target]
        for flag, value, default in (("--older-than", f"{args.older_than:g}", "7"),
                                     ("--keep", str(args.keep), "1"), ("--env", args.env, None)):
            if value is not None and value != default:
                again += [flag, value]
        again += ["--all-projects"] * bool(args.all_projects) + ["--yes"]
        print(f"dry run, nothing removed: `{shlex.join(again)}` removes what is listed")
    return 0


def gc_command() -> Command:
    return Command("remote-gc", "list (and with --yes remove) stray containers, old run "
                   "directories, unused data trees and objects, and unused env images on a "
                   "remote_docker target's host",
                   _gc_arguments, _gc)


@hookimpl
def runner_register_backends(register: Any) -> None:
    register(RemoteDockerBackend)


@hookimpl
def runner_register_commands(register: Any) -> None:
    register(attach_command())
    register(gc_command())


__all__ = ["RemoteDockerBackend", "RemoteDockerConfig", "RemoteHandle", "safe_extract",
           "target_yaml", "ConnectionLost"]
