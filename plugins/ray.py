"""The ``ray`` backend: runs on an existing Ray cluster through the Ray Jobs API.

- **prepare** maps the env to a Ray runtime env: ``pip`` from the env's requirements (``-r``
  files expanded), or a container image from ``env.options.image_uri``; the worker bundle
  (the runner package and pluggy) travels as ``py_modules``, so the cluster needs only Python
  and Ray. An env with something to build is built once on the cluster by a small warm-up job;
  Ray caches it by content, and this client remembers which keys the cluster has built.
- **submit** uploads the run directory (request + code snapshot) as the job's ``working_dir``
  and starts ``python -m runner.plugins.ray`` there, reserving ``num_cpus``/``num_gpus`` so Ray
  places the run on a node with room (and queues it while there is none). Secrets the config
  references travel as the runtime env's ``env_vars`` (Ray keeps them with the job in the
  cluster, where whoever may submit jobs can read them).
- **data travels by content, never by the client's path.** Each data input from the client is
  laid out once per content digest in this client's cache (``<KEY>/...``: a folder's files, or
  the file under its own name; hard links where the filesystem allows, copies otherwise) with
  a small marker naming key and digest, and added to the job's ``py_modules``. Ray names such a
  package by the hash of its content and uploads it only when the cluster lacks it, so a
  second run on the same data uploads nothing, wherever the client's folder now lies. On the
  node the entry point finds the unpacked package by its marker and points the worker at it
  (``RUNNER_STAGED_DATA``). A package is one gRPC message (512 MiB unless the cluster sets
  ``RAY_max_grpc_message_size``): larger data must lie on the cluster (``data.path=target:/``).
  Data marked ``target:/path`` is not shipped; the worker checks it on the node.
- **results come back through the job's log.** No shared filesystem is assumed and the Jobs API
  has no file download, so when the worker ends, the entry point packs ``status.json``,
  ``metrics.jsonl``, ``worker.json``, ``outputs/`` and ``checkpoints/`` into a compressed tar
  and prints it, base64-encoded between two marker lines, at the end of the job's log. The
  client cuts that block out of what users see and unpacks it into the local run directory.
  Outputs (or checkpoints) larger than ``max_output_mb`` are not sent (the log says so; write
  big artifacts to your own storage). Metrics therefore arrive when the run ends, while the log
  streams live.
- **checkpoints** come back that way too, when the run ends or is cancelled: a cancel is
  Ray's SIGTERM, and the target's ``cancel_grace`` becomes the job's
  ``RAY_JOB_STOP_WAIT_TIME_S``, the time Ray gives the model to save a checkpoint before its
  SIGKILL. A resumed run's checkpoint travels up inside its run directory (``working_dir``).
  A run whose node is lost sends nothing back, so its retry starts from the last checkpoint the
  client holds.
- **status / logs / cancel** map Ray's job status, ``get_job_logs`` (resumable by byte offset)
  and ``stop_job`` (SIGTERM, then SIGKILL after Ray's grace period) to the run contract.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import hookimpl
from runner.backend import (
    Backend,
    BackendConfig,
    Capability,
    EnvSpec,
    Prepared,
    RunHandle,
    RunSpec,
    RunState,
    RunStatus,
)
from runner.bundle import cache_root, worker_bundle
from runner.environment import env_inputs, env_key, expand_requirements, explain_miss
from runner.errors import UserError
from runner.request import DATA_DIR_ENV, DataInput, DataKind, RunRequest
from runner.rundir import RunDir, log_lines, write_json_atomic

BEGIN = "@@runner-results"
END = "@@runner-results-end"
_SENT = ("status.json", "metrics.jsonl", "worker.json", "outputs", "checkpoints")
#: what stays on the cluster when it holds more than ``max_output_mb``
_CAPPED = ("outputs", "checkpoints")
_RAY_STATES = {"PENDING": RunState.QUEUED, "RUNNING": RunState.RUNNING}
#: the marker at the top of a data package: which input (key, digest) it holds
DATA_MARK = ".runner-data.json"
#: names Ray's packager reads as exclude lists in any folder it packs; staged under another
#: name (+ this suffix) and renamed back on the node, so a dataset's own copy excludes nothing
_IGNORE_FILES = (".gitignore", ".rayignore")
_ESCAPED = ".runner-escaped"


@dataclass
class RayConfig(BackendConfig):
    backend: str = "ray"  # this backend
    slots: int = 0  # runs at once in a sweep; 0 = submit every job and let Ray place them
    gpus: str | None = None  # not used: Ray assigns GPUs (see num_gpus)
    address: str = "http://127.0.0.1:8265"  # the cluster's dashboard (Jobs API) address
    num_cpus: float = 1.0  # CPUs Ray reserves for each run (where it runs, how many at once)
    num_gpus: float = 0.0  # GPUs Ray reserves for each run; Ray sets CUDA_VISIBLE_DEVICES
    memory_mb: int | None = None  # memory Ray reserves for each run, in MiB
    python: str = "python"  # the interpreter on the cluster's nodes (inside the runtime env)
    max_output_mb: float = 64.0  # outputs (or checkpoints) larger than this stay on the cluster
    cancel_grace: float = 10.0  # seconds a cancelled run has to save a checkpoint (then SIGKILL)
    stop_timeout: float = 30.0  # seconds a cancel waits for Ray to report the run stopped
    env_build_timeout: float = 1200.0  # seconds prepare waits for the cluster to build an env


def _client(address: str) -> Any:
    # Ray is imported only here: `runner --help` and every other backend must not pay for it.
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise UserError(
            "the ray backend needs the Ray Jobs client, which is not installed.",
            "install it: pip install 'runner[ray]'  (or: pip install 'ray[default]')",
        ) from None
    # the Jobs SDK's module logger sets its own level, so the parents' level does not reach it
    for name in ("ray", "ray.dashboard", "ray.dashboard.modules.dashboard_sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)  # no "Uploading package" chatter
    # its "file is very large, add it to excludes" advice does not fit data; the size that
    # matters is checked by _check_package_size
    logging.getLogger("ray._private.runtime_env.packaging").setLevel(logging.ERROR)
    try:
        return JobSubmissionClient(address)
    except Exception as e:
        raise UserError(
            f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0] if str(e) else e!r}",
            "check target.address (the dashboard's http address, port 8265 by default) and that "
            "the head node is up: `ray status` on it.",
        ) from None


def _runtime_env(env: EnvSpec, bundle: Path, run_id: str | None, max_output_mb: float,
                 cancel_grace: float = 10.0) -> dict[str, Any]:
    if env.apt:
        raise UserError(
            f"env {env.name}: apt packages cannot be installed in a Ray runtime env.",
            "bake them into an image that has Ray and set env.options.image_uri to it.",
        )
    renv: dict[str, Any] = {
        "py_modules": [str(bundle / "runner"), str(bundle / "pluggy")],
        "env_vars": {"PYTHONUNBUFFERED": "1", "RUNNER_RAY_MAX_OUTPUT_MB": str(max_output_mb),
                     # read by the job's supervisor: SIGTERM, then this long, then SIGKILL
                     "RAY_JOB_STOP_WAIT_TIME_S": str(max(1, math.ceil(cancel_grace)))},
    }
    if env.python:
        renv["env_vars"]["RUNNER_WANT_PYTHON"] = str(env.python)
    if run_id:
        renv["env_vars"]["RUNNER_RUN_ID"] = run_id
    reqs = expand_requirements(env.requirements, env.root or Path.cwd())
    if reqs:
        renv["pip"] = {"packages": reqs, "pip_check": False}
    image = (env.extra or {}).get("image_uri")
    if image:
        renv["image_uri"] = str(image)
    return renv


def _package_limit() -> int:
    """The largest runtime env package the cluster takes, in bytes (one gRPC message)."""
    try:
        from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE
    except ImportError:  # moved in another Ray version: its long-standing default
        return 512 * 2**20
    return int(GCS_STORAGE_MAX_SIZE)


def _check_package_size(d: DataInput) -> None:
    """Refuse data Ray could not carry: its package is an uncompressed zip of the files."""
    size = d.bytes + sum(2 * len(rel) + 128 for rel in d.manifest)  # + zip headers
    limit = _package_limit()
    if size >= limit:
        raise UserError(
            f"data.{d.key}={d.given!r}: {d.bytes / 2**20:.1f} MiB in {d.files} file(s) is over "
            f"what Ray carries in a runtime env package ({limit / 2**20:.0f} MiB, the cluster's "
            f"gRPC message limit, RAY_max_grpc_message_size).",
            f"put the data on storage the cluster's nodes share and point at it: "
            f"data.{d.key}=target:/path/on/the/nodes")


def _staged_name(rel: str) -> str:
    head, _, name = rel.rpartition("/")
    if name not in _IGNORE_FILES:
        return rel
    return f"{head}/{name}{_ESCAPED}" if head else f"{name}{_ESCAPED}"


def _stage_data(d: DataInput) -> Path:
    """The folder, in this client's cache, that Ray packs for input ``d``: the marker and
    ``<KEY>/...``. Made once per (key, digest); remade when a hard-linked file changed since."""
    if d.digest is None or not d.manifest:
        raise ValueError(f"data.{d.key}: a shipped input needs its digest and manifest")
    _check_package_size(d)
    ident = hashlib.sha256(f"{d.key}\0{d.digest}".encode()).hexdigest()[:24]
    home = cache_root() / "ray" / "data" / ident
    pkg = home / f"runner-data-{ident}"  # not an importable name: it sits on PYTHONPATH
    state = home / "state.json"
    if state.is_file():
        try:
            seen = json.loads(state.read_text())
            if all([st.st_size, st.st_mtime_ns] == seen.get(rel)
                   for rel, st in ((r, os.stat(pkg / r)) for r in seen)):
                return pkg
        except (OSError, ValueError):
            pass  # changed, half made or removed: make it again
    stale = home.exists()
    source = Path(d.source)
    files = {rel: (source / rel if d.kind is DataKind.DIR else source) for rel in d.manifest}
    clash = [r for r in files if _staged_name(r) != r and _staged_name(r) in files]
    if clash:
        raise UserError(f"data.{d.key}={d.given!r}: holds both {clash[0]} and "
                        f"{_staged_name(clash[0])}; rename the second one.")
    tmp = home.parent / f".{ident}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    tmp_pkg = tmp / pkg.name
    seen = {}
    escaped = []
    try:
        for rel, src in files.items():
            name = f"{d.key}/{_staged_name(rel)}"
            if name != f"{d.key}/{rel}":
                escaped.append(name)
            dst = tmp_pkg / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:  # another filesystem, or links not allowed: copy
                shutil.copy2(src, dst)
            st = os.stat(dst)
            if st.st_size != d.manifest[rel][1]:
                raise UserError(f"data.{d.key}={d.given!r}: {rel} changed while the run was "
                                "being submitted.", "submit again once it is written.")
            seen[name] = [st.st_size, st.st_mtime_ns]
        write_json_atomic(tmp_pkg / DATA_MARK, {"key": d.key, "digest": d.digest,
                                                "kind": d.kind.value, "escaped": escaped})
        write_json_atomic(tmp / "state.json", seen)
        if stale:  # out of date (a linked file changed): moved aside in one step, then removed
            with contextlib.suppress(OSError):
                home.rename(tmp.with_name(tmp.name + "-old"))
            shutil.rmtree(tmp.with_name(tmp.name + "-old"), ignore_errors=True)
        try:
            tmp.rename(home)
        except OSError:  # another submit made it at the same moment: the same content
            if not state.is_file():
                raise
    except OSError as e:
        raise UserError(f"data.{d.key}={d.given!r}: cannot stage it for Ray in "
                        f"{home}: {e.strerror or e}.",
                        "free space in the cache (RUNNER_CACHE_DIR) or point it elsewhere.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return pkg


class RayHandle(RunHandle):
    """A Ray job running the worker on the run directory."""

    poll_interval = 0.5

    def __init__(self, run_id: str, run_dir: Path, address: str, submission_id: str,
                 stop_timeout: float = 30.0) -> None:
        super().__init__(run_id)
        self.rd = RunDir(run_dir)
        self.address = address
        self.submission_id = submission_id
        self.stop_timeout = stop_timeout
        self._c: Any = None

    @property
    def client(self) -> Any:
        if self._c is None:
            self._c = _client(self.address)
        return self._c

    @property
    def locator(self) -> dict[str, Any]:
        return {"address": self.address, "submission_id": self.submission_id}

    @property
    def _collected(self) -> Path:
        return self.rd.path / ".ray-results"

    def status(self) -> RunStatus:
        if self._collected.exists():
            st = self.rd.status()
            if st is not None and st.terminal:
                return st
        try:
            info = self.client.get_job_info(self.submission_id)
        except Exception as e:
            if "does not exist" in str(e) or "404" in str(e) or "not found" in str(e).lower():
                return self._final(RunStatus(RunState.LOST, message=(
                    f"the Ray cluster at {self.address} no longer knows job {self.submission_id}")))
            raise
        state = str(getattr(info.status, "value", info.status))
        if state in _RAY_STATES:
            return RunStatus(_RAY_STATES[state])
        got = self._collect()
        st = self.rd.status() if got else None
        if st is not None and st.terminal:
            return st
        code = getattr(info, "driver_exit_code", None)
        if state == "STOPPED" or self.rd.cancel_requested:
            final = RunStatus(RunState.CANCELLED, exit_code=code, message="cancelled")
        elif state == "SUCCEEDED":
            final = RunStatus(RunState.LOST, exit_code=code,
                              message="the Ray job ended without sending its results back")
        else:
            pip = _pip_errors(info.message or "")
            last = _last_line(info.message or "") or "the job failed"
            final = RunStatus(RunState.FAILED, exit_code=code, message=(
                f"Ray could not install env.requirements: {pip[-1]}" if pip else f"Ray: {last}"))
        return self._final(final)

    def _final(self, st: RunStatus) -> RunStatus:
        self.rd.write_status(st)
        self._collected.touch()
        return st

    def _raw_log(self) -> str:
        try:
            return str(self.client.get_job_logs(self.submission_id))
        except Exception:
            return ""

    def _collect(self) -> bool:
        """Unpack the results block of an ended job into the run directory; keep the log."""
        text = self._raw_log()
        lines = text.splitlines(keepends=True)
        payload: list[str] | None = None
        kept: list[str] = []
        for line in lines:
            if payload is None and line.startswith(BEGIN + " "):
                payload = []
            elif payload is not None and line.startswith(END):
                break
            elif payload is not None:
                payload.append(line.strip())
            else:
                kept.append(line)
        self.rd.log.write_text("".join(kept))
        if payload is None:
            return False
        blob = base64.b64decode("".join(payload))
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            tar.extractall(self.rd.path, filter="data")
        self._collected.touch()
        return True

    def cancel(self) -> RunStatus:
        st = self.status()
        if st.terminal:
            return st
        self.rd.request_cancel()
        try:
            self.client.stop_job(self.submission_id)
        except Exception as e:  # ended between the two calls
            if not self.status().terminal:
                raise RuntimeError(f"run {self.run_id}: Ray could not stop job "
                                   f"{self.submission_id}: {e}") from e
        st = self.wait(self.stop_timeout)
        if not st.terminal:
            raise RuntimeError(f"run {self.run_id}: Ray job {self.submission_id} still not "
                               f"stopped after {self.stop_timeout:.0f}s")
        return st

    def logs(self, offset: int = 0) -> Iterator[tuple[int, str]]:
        ended = self.status().terminal
        data = self._raw_log().encode()
        start, hiding = 0, False
        for pos, line in log_lines(data, 0, final=ended):
            if line.startswith(BEGIN + " "):
                hiding = True  # the block of results at the end is for the client, not the log
            if start >= offset and not hiding:
                yield pos, line
            if hiding and line.startswith(END):
                hiding = False
            start = pos

    def fetch_outputs(self, dest: Path) -> None:
        if not self.status().terminal:
            raise RuntimeError(f"run {self.run_id} has not ended; its outputs come back when it does")
        if Path(dest).resolve() != self.rd.path.resolve():
            for name in (*_SENT, "log.txt"):
                src = self.rd.path / name
                if src.is_dir():
                    shutil.copytree(src, Path(dest) / name, dirs_exist_ok=True)
                elif src.exists():
                    Path(dest).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, Path(dest) / name)


class RayBackend(Backend):
    """Runs on a Ray cluster through its Jobs API; see the module docstring."""

    name = "ray"
    Config = RayConfig
    capabilities = frozenset({Capability.CANCEL, Capability.FOLLOW_LOGS, Capability.OUTPUTS,
                              Capability.GPU, Capability.REMOTE})
    config: RayConfig

    def _marker(self, key: str) -> Path:
        cluster = hashlib.sha256(self.config.address.encode()).hexdigest()[:12]
        return cache_root() / "ray" / cluster / f"{key}.json"

    def prepare(self, spec: RunSpec) -> Prepared:
        bundle, bundle_key = worker_bundle()
        renv = _runtime_env(spec.env, bundle, None, self.config.max_output_mb)
        inputs = env_inputs(spec.env, python=spec.env.python, runner_hash=bundle_key,
                            cluster=self.config.address, image_uri=renv.get("image_uri"))
        key = env_key(inputs)
        details = {"runtime_env": renv, "bundle": str(bundle)}
        if "pip" not in renv and "image_uri" not in renv:
            return Prepared(key, True, "cached (nothing to build: the cluster's own Python, "
                                       "the runner travels with each job)", details)
        marker = self._marker(key)
        if marker.exists():
            return Prepared(key, True, "cached", details)
        seen = [json.loads(p.read_text()) for p in marker.parent.glob("*.json")] \
            if marker.parent.is_dir() else []
        reason = explain_miss(inputs, seen)
        print(f"[runner] env {spec.env.name}: {reason}; building the runtime env on the Ray "
              f"cluster at {self.config.address}", flush=True)
        self._warm_up(renv, key, spec.env.name)
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(marker, inputs)
        return Prepared(key, False, reason, details)

    def _warm_up(self, renv: Mapping[str, Any], key: str, env_name: str) -> None:
        client = _client(self.config.address)
        sid = client.submit_job(entrypoint=f"{self.config.python} -c 'import runner.worker'",
                                runtime_env=dict(renv), submission_id=f"runner-prepare-{key}-"
                                + uuid.uuid4().hex[:6], entrypoint_num_cpus=0)
        began = time.monotonic()
        said = began
        while True:
            st = str(client.get_job_status(sid).value)
            if st not in ("PENDING", "RUNNING"):
                break
            now = time.monotonic()
            if now - began > self.config.env_build_timeout:
                try:
                    client.stop_job(sid)
                except Exception:  # already gone: nothing left to stop
                    pass
                raise UserError(
                    f"env {env_name}: the Ray cluster at {self.config.address} did not build the "
                    f"runtime env within {self.config.env_build_timeout:.0f}s (job {sid}).",
                    "the nodes may not reach the package index (pip retries for minutes), or "
                    "the requirements take that long to install.",
                    "check the runtime env agent's log on the head node "
                    "(by default /tmp/ray/session_latest/logs/runtime_env_agent.log), or raise "
                    "target.env_build_timeout.")
            if now - said >= 30:  # Ray retries a failed build several times before it gives up
                said = now
                print(f"[runner] env {env_name}: still building on the Ray cluster "
                      f"({now - began:.0f}s)", flush=True)
            time.sleep(1)
        if st != "SUCCEEDED":
            info = client.get_job_info(sid)
            message = (info.message or "").strip()
            tail = "".join(client.get_job_logs(sid).splitlines(keepends=True)[-15:]).strip()
            log = self._marker(key).with_suffix(".error.txt")
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(f"{message}\n\n{tail}\n")
            pip = _pip_errors(message)
            if pip:
                raise UserError(
                    f"env {env_name}: the Ray cluster at {self.config.address} could not install "
                    f"env.requirements: {pip[-1]}",
                    *pip[:-1][-4:],
                    f"fix env.requirements (pip said so on the cluster's nodes); Ray's full "
                    f"report is in {log}.")
            raise UserError(
                f"env {env_name}: the Ray cluster at {self.config.address} could not build the "
                f"runtime env (job {sid}: {st}): {_last_line(message) or 'no reason given'}",
                f"Ray's full report is in {log}.")

    def check_data(self, spec: RunSpec) -> None:
        """Check what can be checked here, before the env is prepared: that each input from
        the client fits in a Ray package. Data marked ``target:/path`` lies on the cluster's
        nodes, not on this client, so it is not looked for here: the worker checks it on the
        node that runs the job and fails the run with a message naming the key and the path."""
        for d in spec.data_inputs:
            if not d.on_target:
                _check_package_size(d)

    def submit(self, spec: RunSpec, prepared: Prepared) -> RunHandle:
        request = spec.request
        if request is None:
            raise ValueError(f"run {spec.run_id}: submit needs the spec's request")
        bundle = Path(str(prepared.details.get("bundle") or worker_bundle()[0]))
        renv = _runtime_env(spec.env, bundle, spec.run_id, self.config.max_output_mb,
                            self.config.cancel_grace)
        renv["working_dir"] = str(spec.run_dir)
        # by content, never by the client's path (see the module docstring)
        renv["py_modules"] += [str(_stage_data(d)) for d in request.data_inputs if not d.on_target]
        secrets = {n: os.environ[n] for n in request.secret_env if n in os.environ}
        renv["env_vars"].update(secrets)
        client = _client(self.config.address)
        gpus = self.config.num_gpus
        if not gpus and request.gpus not in (None, ""):
            gpus = 1 if request.gpus == "all" else len(str(request.gpus).split(","))
        sid = f"runner-{spec.run_id}-{uuid.uuid4().hex[:6]}"
        try:
            client.submit_job(
                entrypoint=f"{self.config.python} -m runner.plugins.ray",
                submission_id=sid, runtime_env=renv,
                entrypoint_num_cpus=self.config.num_cpus, entrypoint_num_gpus=gpus or None,
                entrypoint_memory=self.config.memory_mb * 2**20 if self.config.memory_mb else None,
                metadata={"runner_run_id": spec.run_id, **{k: str(v) for k, v in spec.labels.items()}},
            )
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"the Ray cluster at {self.config.address} refused the run: "
                            f"{str(e).splitlines()[0] if str(e) else e!r}") from None
        return RayHandle(spec.run_id, spec.run_dir, self.config.address, sid, self._stop_timeout)

    @property
    def _stop_timeout(self) -> float:
        """How long a cancel waits: the grace Ray gives the model, and some more."""
        return max(self.config.stop_timeout, self.config.cancel_grace + 15.0)

    def gpu_devices(self) -> list[str] | None:
        """``gpus: all`` is left to Ray's scheduler, which places each job on a free GPU of
        the cluster; a list ("0,1") is handed out as it is."""
        from runner.gpus import device_ids

        return device_ids(self.config.gpus, lambda: None)

    def reattach(self, run_id: str, run_dir: Path, locator: Mapping[str, Any]) -> RunHandle:
        return RayHandle(run_id, run_dir, str(locator["address"]), str(locator["submission_id"]),
                         self._stop_timeout)


def _pip_errors(message: str) -> list[str]:
    """pip's own ``ERROR:`` lines in Ray's report of a failed runtime env build."""
    out = []
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("ERROR:") and line not in out:
            out.append(line)
    return out


def _last_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@hookimpl
def runner_register_backends(register: Any) -> None:
    register(RayBackend)


# -- on the cluster -------------------------------------------------------------------------------

def _pack(rd: Path, limit: float) -> tuple[bytes, str]:
    """The results of the run in ``rd`` as a .tar.gz; outputs or checkpoints over ``limit``
    MiB stay behind (the returned note says so)."""
    def size(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0

    over = {name: size(rd / name) for name in _CAPPED}
    over = {name: n for name, n in over.items() if n > limit * 2**20}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in _SENT:
            p = rd / name
            if p.exists() and name not in over:
                tar.add(p, arcname=name)
    note = "\n".join(
        f"[runner] {name}/ holds {n / 2**20:.1f} MiB, over max_output_mb={limit:g}: not sent "
        f"back; it stays in {rd / name} on {os.uname().nodename}" for name, n in over.items())
    return buf.getvalue(), note


def _unpacked_data() -> dict[tuple[str, str], Path]:
    """The data packages of this job where Ray unpacked them: ``(key, digest) -> folder``.

    Ray puts each ``py_modules`` entry on ``PYTHONPATH`` as the folder it unpacked the package
    into, which holds the staged folder; its marker says which input it is."""
    found: dict[tuple[str, str], Path] = {}
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if not entry or not os.path.isdir(entry):
            continue
        for mark in Path(entry).glob(f"*/{DATA_MARK}"):
            try:
                info = json.loads(mark.read_text())
            except (OSError, ValueError):
                continue
            top = mark.parent
            for name in info.get("escaped") or []:  # the dataset's own .gitignore / .rayignore
                try:
                    os.replace(top / name, top / name[:-len(_ESCAPED)])
                except FileNotFoundError:  # renamed by an earlier job on this node
                    pass
            found.setdefault((str(info["key"]), str(info["digest"])), top)
    return found


def _point_at_data(rd: Path) -> None:
    """Set ``RUNNER_STAGED_DATA`` for the worker: the one folder holding ``KEY/`` of every
    input shipped with the run (a package's own folder, or links to several)."""
    request = RunRequest.from_dict(RunDir(rd).request())
    shipped = [d for d in request.data_inputs if not d.on_target]
    if not shipped:
        return
    found = _unpacked_data()
    tops = {d.key: found.get((d.key, str(d.digest))) for d in shipped}
    for key, top in tops.items():
        if top is None:
            print(f"[runner] data.{key}: its package is not among the job's py_modules on "
                  f"{os.uname().nodename}", flush=True)
    places = {t for t in tops.values() if t is not None}
    if len(places) == 1 and None not in tops.values():
        os.environ[DATA_DIR_ENV] = str(places.pop())
        return
    farm = rd / ".runner-data"  # the job's own copy of the run directory
    farm.mkdir(exist_ok=True)
    for key, top in tops.items():
        if top is not None and not (farm / key).exists():
            (farm / key).symlink_to(top / key, target_is_directory=True)
    os.environ[DATA_DIR_ENV] = str(farm)


def _entry() -> int:
    """``python -m runner.plugins.ray``: run the worker in the job's working dir (the run
    directory), then print its results into the job's log for the client to collect."""
    from runner import worker

    rd = Path.cwd()
    _point_at_data(rd)
    want = os.environ.get("RUNNER_WANT_PYTHON")
    import platform

    if want and not (platform.python_version() + ".").startswith(want + "."):
        print(f"[runner] error: env.python is {want} but this Ray node runs Python "
              f"{platform.python_version()}; use an image with that Python (env.options.image_uri)",
              flush=True)
        RunDir(rd).write_status(RunStatus(RunState.FAILED, exit_code=1,
                                    message=f"Python {want} wanted, {platform.python_version()} found"))
        code = 1
    else:
        code = worker.run(rd)
    blob, note = _pack(rd, float(os.environ.get("RUNNER_RAY_MAX_OUTPUT_MB", "64")))
    if note:
        print(note, flush=True)
    text = base64.b64encode(blob).decode()
    out = [f"\n{BEGIN} {len(blob)} {hashlib.sha256(blob).hexdigest()}\n"]
    out += [text[i:i + 76] + "\n" for i in range(0, len(text), 76)]
    out.append(END + "\n")
    sys.stdout.write("".join(out))
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(_entry())
