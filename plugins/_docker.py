"""What every Docker backend shares: docker CLI argument lists, labels, env images keyed by
content, the GPU preflight, and finding the containers we started.

Everything here produces argument lists for the ``docker`` command line and runs them through
an :class:`Executor`, so the same code drives an engine on this machine (``subprocess``) or on
a remote host (one SSH command per call). The docker CLI is used rather than a client library:
it behaves the same locally and over SSH, and a failed start leaves nothing half-made that a
library would have to clean up.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shlex
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from runner.backend import EnvSpec
from runner.environment import env_inputs, env_key, explain_miss
from runner.errors import UserError
from runner.request import DataInput
from runner.units import size_text

#: Label keys on everything the runner creates in an engine.
LABEL = "io.runner"
#: network modes a Docker target may ask for (no bridge is assumed to exist besides the default)
NETWORKS = ("default", "host", "none")
L_MANAGED = f"{LABEL}.managed"  # "1" on every container and image the runner made
L_KIND = f"{LABEL}.kind"  # "run", "preflight" or "env" (an env image)
L_RUN_ID = f"{LABEL}.run-id"
L_TARGET = f"{LABEL}.target"
L_PROJECT = f"{LABEL}.project"  # the client's project root (ledgers are per project)
L_RUN_DIR = f"{LABEL}.run-dir"
L_ENV_KEY = f"{LABEL}.env-key"
L_ENV_NAME = f"{LABEL}.env-name"
L_ENV_INPUTS = f"{LABEL}.env-inputs"  # JSON of the inputs, to explain a later miss

#: Repository of env images; the tag is the env's content key.
IMAGE_REPO = "runner-env"
#: Bumped when the image recipe below changes in a way the inputs do not show.
RECIPE = 2
#: Where things live inside a run container.
RUN_MOUNT = "/runner/run"
DATA_MOUNT = "/runner/data"  # the run's shipped data inputs, one folder per data key, read-only
CACHE_MOUNT = "/runner/cache"  # the target's cache volume: framework downloads, pip
BUNDLE_DIR = "/opt/runner/bundle"
VENV_DIR = "/opt/runner/venv"


# -- executing docker commands ---------------------------------------------------------------------
@dataclass(frozen=True)
class Result:
    """A finished docker command."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def last_error(self) -> str:
        """The most telling line of stderr (docker puts the cause last)."""
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit code {self.returncode}"


class Executor(Protocol):
    """Runs one command on the machine whose Docker engine a backend drives."""

    def run(self, argv: Sequence[str], *, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        """Run ``argv`` to completion and capture its output."""
        ...

    def stream(self, argv: Sequence[str], *, input: bytes | None = None,
               on_line: Callable[[str], None]) -> Result:
        """Run ``argv``, passing each output line (stdout and stderr merged) to ``on_line``."""
        ...


class LocalExecutor:
    """Runs commands on this machine."""

    def run(self, argv: Sequence[str], *, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        try:
            proc = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except FileNotFoundError:
            return Result(127, "", f"{argv[0]}: command not found")
        except subprocess.TimeoutExpired:
            return Result(124, "", f"{shlex.join(argv)}: no answer within {timeout} s")
        return Result(proc.returncode, proc.stdout.decode("utf-8", "replace"),
                      proc.stderr.decode("utf-8", "replace"))

    def stream(self, argv: Sequence[str], *, input: bytes | None = None,
               on_line: Callable[[str], None]) -> Result:
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
        except FileNotFoundError:
            return Result(127, "", f"{argv[0]}: command not found")
        assert proc.stdin is not None and proc.stdout is not None
        if input is not None:
            proc.stdin.write(input)
        proc.stdin.close()
        tail: list[str] = []
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            on_line(line)
            tail = (tail + [line])[-20:]
        code = proc.wait()
        return Result(code, "", "\n".join(tail))


# -- the docker CLI ---------------------------------------------------------------------------------
@dataclass
class DockerCLI:
    """The docker command line on one machine."""

    executor: Executor = field(default_factory=LocalExecutor)
    docker: str = "docker"  # the CLI to call
    where: str = "this machine"  # for messages: which engine this is

    def __call__(self, *args: str, input: bytes | None = None, timeout: float | None = 120) -> Result:
        return self.executor.run([self.docker, *args], input=input, timeout=timeout)

    def check_engine(self) -> None:
        """A clear error when no engine answers."""
        r = self("version", "--format", "{{.Server.Version}}", timeout=20)
        if not r.ok:
            raise self.engine_error(r)

    def engine_error(self, r: Result) -> UserError:
        return UserError(
            f"the Docker engine on {self.where} does not answer ({r.last_error()}).",
            "start it (e.g. `systemctl start docker`, or scripts/testbed.sh up for the "
            "test setup) and check that `docker version` works for this user.",
        )

    def inspect(self, *refs: str, kind: str = "container") -> list[dict[str, Any]]:
        """``docker inspect`` of those of ``refs`` that exist (missing ones are skipped)."""
        r = self(kind, "inspect", *refs, timeout=30)
        try:
            data = json.loads(r.stdout) if r.stdout.strip() else []
        except json.JSONDecodeError:
            data = []
        if not r.ok and not data and "No such" not in r.stderr and "no such" not in r.stderr:
            raise self.engine_error(r)
        return list(data)

    def inspect_one(self, ref: str, kind: str = "container") -> dict[str, Any] | None:
        found = self.inspect(ref, kind=kind)
        return found[0] if found else None

    def labelled(self, labels: Mapping[str, str], *, kind: str = "container") -> list[dict[str, Any]]:
        """Everything of ``kind`` (container or image) carrying all ``labels``, inspected."""
        args = ["ps", "-aq", "--no-trunc"] if kind == "container" else ["image", "ls", "-q", "--no-trunc"]
        for k, v in labels.items():
            args += ["--filter", f"label={k}={v}" if v else f"label={k}"]
        r = self(*args, timeout=30)
        if not r.ok:
            raise self.engine_error(r)
        ids = sorted(set(r.stdout.split()))
        return self.inspect(*ids, kind=kind) if ids else []

    def remove(self, *refs: str) -> None:
        """Remove containers (running or not); verify they are gone."""
        if not refs:
            return
        if self("rm", "-f", "-v", *refs, timeout=60).ok:
            return
        left = [c for c in self.inspect(*refs)]
        if left:
            raise RuntimeError(f"containers still present on {self.where} after `docker rm -f`: "
                               + ", ".join(c.get("Name", "?").lstrip("/") for c in left))


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


# -- env images -------------------------------------------------------------------------------------
def image_tag(key: str) -> str:
    return f"{IMAGE_REPO}:{key}"


def dockerfile(base_ref: str, apt: Sequence[str], has_requirements: bool) -> str:
    """The env image recipe. Slow, stable layers first, so a new worker bundle rebuilds only
    the last layer; labels come from ``docker build --label`` (they would break layer reuse)."""
    lines = [f"FROM {base_ref}"]
    if apt:
        lines.append(
            "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
            f"--no-install-recommends {' '.join(shlex.quote(p) for p in apt)} "
            "&& rm -rf /var/lib/apt/lists/*"
        )
    # a venv that still sees the base image's packages (a CUDA image's preinstalled framework)
    lines += [
        f"RUN python3 -m venv --system-site-packages {VENV_DIR}",
        f"ENV VIRTUAL_ENV={VENV_DIR} PATH={VENV_DIR}/bin:$PATH PYTHONUNBUFFERED=1",
    ]
    if has_requirements:
        lines += [
            "COPY requirements.txt /opt/runner/requirements.txt",
            "RUN python -m pip install --no-cache-dir --disable-pip-version-check "
            "-r /opt/runner/requirements.txt",
        ]
    # precompiled: each container starts from the image, so .pyc files made at run time are lost
    lines += [f"COPY bundle {BUNDLE_DIR}", f"RUN python -m compileall -q {BUNDLE_DIR}",
              f"ENV PYTHONPATH={BUNDLE_DIR}",
              # a new cache volume copies this folder's mode: any run's uid may write to it
              f"RUN mkdir -p {CACHE_MOUNT} && chmod 1777 {CACHE_MOUNT}"]
    return "\n".join(lines) + "\n"


def build_context(dockerfile_text: str, requirements: Sequence[str], bundle: Path) -> bytes:
    """The build context as a tar stream (sent on stdin, so it works over SSH too)."""
    buf = io.BytesIO()

    def add(name: str, data: bytes, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, 0
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(fileobj=buf, mode="w") as tar:
        add("Dockerfile", dockerfile_text.encode())
        add("requirements.txt", "".join(r + "\n" for r in requirements).encode())
        for path in sorted(bundle.rglob("*")):
            if path.is_file():
                add(f"bundle/{path.relative_to(bundle).as_posix()}", path.read_bytes())
    return buf.getvalue()


@dataclass(frozen=True)
class EnvImage:
    """An env image ready in an engine."""

    key: str  # content key (the image tag)
    tag: str  # runner-env:KEY
    image_id: str
    cached: bool
    reason: str
    python: str  # the image's Python version


def missing_base_error(base: str, where: str, pulled: Result | None) -> UserError:
    hints = [f"the runner builds env images on top of {base} and does not pull it "
             "(target.pull: false)." if pulled is None else
             f"`docker pull {base}` failed: {pulled.last_error()}",
             f"load or build it on {where} first: `docker load -i FILE`, `docker build -t {base} ...`, "
             "or for the bundled Debian base: scripts/testbed.sh up.",
             "or point env.base_image at an image that `docker images` lists."]
    return UserError(f"env base image '{base}' is not in the Docker engine on {where}.", *hints)


def ensure_env_image(
    cli: DockerCLI, env: EnvSpec, base: str, bundle: Path, bundle_key: str, *,
    build_network: str = "host", pull: bool = False, log: Callable[[str], None] | None = None,
) -> EnvImage:
    """Find or build the image of ``env`` on ``base``; cached by content key.

    The key covers the base image's ID (a re-tagged base rebuilds), the normalized
    requirements (with ``-r`` files' contents), apt packages, the wanted Python and the
    worker bundle's hash. A miss is explained against the closest cached env image.
    """
    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    found = cli.inspect_one(base, kind="image")
    if found is None:
        pulled = None
        if pull:
            say(f"[runner] pulling {base} ...")
            pulled = cli.executor.stream([cli.docker, "pull", base], on_line=lambda s: say("  " + s))
            found = cli.inspect_one(base, kind="image") if pulled.ok else None
        if found is None:
            raise missing_base_error(base, cli.where, pulled)
    base_id = str(found["Id"])
    spec = EnvSpec(**{**env.__dict__, "base_image": base_id})
    inputs = env_inputs(spec, python=env.python, runner_hash=bundle_key, recipe=RECIPE)
    key = env_key(inputs)
    tag = image_tag(key)
    have = cli.inspect_one(tag, kind="image")
    if have is not None:
        labels = (have.get("Config") or {}).get("Labels") or {}
        return EnvImage(key, tag, str(have["Id"]), True, "cached", labels.get(f"{LABEL}.python", "?"))

    cached = []
    for img in cli.labelled({L_KIND: "env"}, kind="image"):
        labels = (img.get("Config") or {}).get("Labels") or {}
        try:
            cached.append(json.loads(labels.get(L_ENV_INPUTS, "")))
        except json.JSONDecodeError:
            continue
    reason = explain_miss(inputs, cached)
    say(f"[runner] env {env.name}: {reason}; building image {tag} on {base}")
    text = dockerfile(base_id, inputs.get("apt", []), bool(inputs["requirements"]))
    context = build_context(text, inputs["requirements"], bundle)
    # unique per build: two prepares of the same env at once (a sweep) must not share it
    staging = f"{IMAGE_REPO}:building-{key}-{os.getpid()}-{secrets.token_hex(2)}"
    argv = [cli.docker, "build", "--network", build_network, "-t", staging,
            "--label", f"{L_MANAGED}=1", "--label", f"{L_KIND}=env",
            "--label", f"{L_ENV_KEY}={key}", "--label", f"{L_ENV_NAME}={env.name}",
            "--label", f"{L_ENV_INPUTS}={json.dumps(inputs, sort_keys=True, separators=(',', ':'))}",
            "-f", "Dockerfile", "-"]
    t0 = time.monotonic()
    r = cli.executor.stream(argv, input=context, on_line=lambda s: _build_line(s, say))
    if not r.ok:
        cli("image", "rm", staging)
        raise UserError(
            f"env {env.name}: building the image on {cli.where} failed ({r.last_error()}).",
            "the build output above shows the failing step (apt package or pip requirement).",
            f"the Dockerfile was:\n{text}",
        )
    python = _check_image(cli, staging, env)
    # the python version is known only now; a second tag-only build step would cost a layer,
    # so it is kept as a label through a tiny commit-free retag (labels are immutable)
    r = cli("build", "--label", f"{LABEL}.python={python}", "-t", tag, "-",
            input=f"FROM {staging}\n".encode())
    cli("image", "rm", staging)
    if not r.ok:
        raise RuntimeError(f"tagging {tag} failed: {r.last_error()}")
    img = cli.inspect_one(tag, kind="image") or {}
    say(f"[runner] env {env.name}: image {tag} built in {time.monotonic() - t0:.1f}s")
    return EnvImage(key, tag, str(img.get("Id", "")), False, reason, python)


_BUILDER_NOTICE = ("DEPRECATED: The legacy builder", "Install the buildx component",
                   "https://docs.docker.com/go/buildx")


def _build_line(line: str, say: Callable[[str], None]) -> None:
    """Pass a build output line on, without blank lines and the legacy builder's notice."""
    text = line.strip()
    if text and not text.startswith(_BUILDER_NOTICE):
        say(f"  [build] {line}")


def _check_image(cli: DockerCLI, image: str, env: EnvSpec) -> str:
    """Check that the image's Python can run the worker; return its version."""
    probe = ("import platform, runner.worker, runner.registry as r; "
             "r.collect(r.make_plugin_manager()); print(platform.python_version())")
    r = cli("run", "--rm", "--network", "none", "--label", f"{L_MANAGED}=1",
            "--label", f"{L_KIND}=check", image, "python", "-c", probe)
    if not r.ok:
        cli("image", "rm", image)
        raise UserError(
            f"env {env.name}: the built image cannot run the runner's worker: {r.last_error()}",
            "the worker needs Python >= 3.11 in the image (the base image's python3).",
        )
    version = r.stdout.strip().splitlines()[-1]
    if env.python and not (version == env.python or version.startswith(env.python + ".")):
        cli("image", "rm", image)
        raise UserError(
            f"env {env.name}: env.python is {env.python} but the image has Python {version}.",
            f"set env.python to {'.'.join(version.split('.')[:2])} (or null), or use a base "
            f"image with Python {env.python}.",
        )
    return version


# -- GPU preflight ----------------------------------------------------------------------------------
#: Runs inside the env image with the run's --gpus; prints one JSON object.
PREFLIGHT = r"""
import glob, importlib.util, json, shutil, subprocess
out = {"devices": sorted(glob.glob("/dev/nvidia[0-9]*")), "smi": None, "libcuda": False,
       "framework": None}
try:
    import ctypes
    ctypes.CDLL("libcuda.so.1")
    out["libcuda"] = True
except OSError:
    pass
if shutil.which("nvidia-smi"):
    p = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    out["smi"] = (p.stdout or p.stderr).strip()
if importlib.util.find_spec("tensorflow"):
    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    out["framework"] = {"name": "tensorflow", "version": tf.__version__,
                        "cuda_build": bool(tf.test.is_built_with_cuda()),
                        "gpus": len(tf.config.list_physical_devices("GPU"))}
elif importlib.util.find_spec("torch"):
    import torch
    out["framework"] = {"name": "torch", "version": torch.__version__,
                        "cuda_build": torch.version.cuda is not None,
                        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0}
elif importlib.util.find_spec("jax"):
    import jax
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    out["framework"] = {"name": "jax", "version": jax.__version__, "cuda_build": bool(gpus),
                        "gpus": len(gpus)}
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Preflight:
    """What a GPU container saw, layer by layer."""

    ok: bool
    layers: list[tuple[str, bool, str]]  # (layer, ok, what was seen)
    missing: str | None  # the first layer that failed
    seen: Mapping[str, Any]

    def render(self) -> str:
        return "\n".join(f"{'ok     ' if ok else 'MISSING'} {name}: {what}"
                         for name, ok, what in self.layers)


def gpu_preflight(cli: DockerCLI, image: str, gpus: str, *, timeout: float = 180) -> Preflight:
    """Check inside ``image``, with ``--gpus gpus``, that the framework sees a GPU."""
    argv = ["run", "--rm", "--network", "none", "--label", f"{L_MANAGED}=1",
            "--label", f"{L_KIND}=preflight", *gpu_args(gpus), image, "python", "-c", PREFLIGHT]
    r = cli(*argv, timeout=timeout)
    layers: list[tuple[str, bool, str]] = []
    if not r.ok and ("could not select device driver" in r.stderr or "nvidia" in r.stderr.lower()
                     and not r.stdout.strip()):
        layers.append(("container toolkit", False,
                       f"the engine on {cli.where} refused --gpus ({r.last_error()}): the NVIDIA "
                       "container toolkit is not installed or dockerd was not restarted after it"))
        return Preflight(False, layers, "container toolkit", {})
    try:
        seen = json.loads(r.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise RuntimeError(f"GPU preflight in {image} failed to run: {r.last_error()}") from None
    layers.append(("container toolkit", True, "the engine accepted --gpus"))
    has_driver = bool(seen["devices"]) and bool(seen["libcuda"])
    driver_what = (f"{len(seen['devices'])} device(s), libcuda present" if has_driver else
                   f"devices: {', '.join(seen['devices']) or 'none'}; libcuda.so.1: "
                   f"{'found' if seen['libcuda'] else 'not found'} -- the host has no NVIDIA driver, "
                   "or the container toolkit did not pass it into the container")
    layers.append(("host driver", has_driver, driver_what))
    fw = seen.get("framework")
    if fw is None:
        layers.append(("framework", True, "no tensorflow/torch/jax in the image; only the driver "
                                          "was checked"))
    elif not fw["cuda_build"]:
        layers.append(("framework", False, f"{fw['name']} {fw['version']} is a CPU-only build: "
                       "install its CUDA build (e.g. tensorflow[and-cuda] instead of tensorflow-cpu)"))
    else:
        layers.append(("framework", fw["gpus"] > 0, f"{fw['name']} {fw['version']} (CUDA build) "
                       f"sees {fw['gpus']} GPU(s)"))
    missing = next((name for name, ok, _ in layers if not ok), None)
    return Preflight(missing is None, layers, missing, seen)


# -- containers we made -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Container:
    """A container carrying the runner's labels."""

    id: str  # full container id
    name: str
    run_id: str  # the run it belongs to ("" for preflight/check containers)
    kind: str  # run, preflight, check
    state: str  # docker's: created, running, exited, dead, ...
    project: str  # the project root of the client that started it
    run_dir: str
    created: str  # docker's creation time (RFC 3339)

    @classmethod
    def from_inspect(cls, data: Mapping[str, Any]) -> Container:
        labels = (data.get("Config") or {}).get("Labels") or {}
        return cls(
            id=str(data.get("Id", "")), name=str(data.get("Name", "")).lstrip("/"),
            run_id=labels.get(L_RUN_ID, ""), kind=labels.get(L_KIND, ""),
            state=str((data.get("State") or {}).get("Status", "")),
            project=labels.get(L_PROJECT, ""), run_dir=labels.get(L_RUN_DIR, ""),
            created=str(data.get("Created", "")),
        )


def our_containers(cli: DockerCLI, project: str | None = None) -> list[Container]:
    """Every container the runner started on this engine (of one project, if given)."""
    labels = {L_MANAGED: "1"}
    if project:
        labels[L_PROJECT] = project
    return [Container.from_inspect(d) for d in cli.labelled(labels)]


def find_orphans(cli: DockerCLI, known_run_ids: Iterable[str], project: str | None = None
                 ) -> list[Container]:
    """Our containers that no in-flight run accounts for: leftovers of ended runs, of failed
    starts ("created"), of preflights, or of runs a ledger no longer knows."""
    known = set(known_run_ids)
    # kind "env" is inherited from an env image by containers someone started by hand
    return [c for c in our_containers(cli, project)
            if c.kind != "env" and not (c.kind == "run" and c.run_id in known)]


def user_arg() -> str | None:
    """``--user`` so that files the run writes belong to the client's user."""
    if not hasattr(os, "getuid"):
        return None
    return f"{os.getuid()}:{os.getgid()}"


# -- pruning env images -----------------------------------------------------------------------------
#: Seconds a half-built image (``runner-env:building-...``) is left alone: a prepare may be using it.
STAGING_PATIENCE = 3600.0


def age_text(seconds: float) -> str:
    """A duration for people: 12 min, 5.5 h, 9.0 days."""
    if seconds < 3600:
        return f"{max(seconds, 0) / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _epoch(created: str) -> float:
    """Docker's RFC 3339 ``Created`` as epoch seconds (0 when unreadable)."""
    try:
        return datetime.fromisoformat(created).timestamp()
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class StoredEnvImage:
    """An env image present in an engine, as pruning sees it."""

    id: str  # full image id
    tags: tuple[str, ...]  # runner-env:KEY; empty when a racing build took the tag over
    env_name: str  # the env it was built for
    created: float  # epoch seconds
    size: int  # bytes, as docker reports them (layers shared with other images included)
    in_use: bool  # some container, running or stopped, was made from it

    @property
    def ref(self) -> str:
        return self.tags[0] if self.tags else self.id.removeprefix("sha256:")[:12]

    @property
    def staging(self) -> bool:
        return any(t.startswith(f"{IMAGE_REPO}:building-") for t in self.tags)

    def describe(self, now: float | None = None) -> str:
        age = age_text((now or time.time()) - self.created)
        what = " (untagged)" if not self.tags else " (unfinished build)" if self.staging else ""
        return f"{self.ref}{what}  env {self.env_name or '?'}  built {age} ago  {size_text(self.size)}"


def _container_images(cli: DockerCLI, ignoring: Iterable[str] = ()) -> set[str]:
    """Ids of the images that containers (any state) were made from, except ``ignoring``'s."""
    r = cli("ps", "-aq", "--no-trunc", timeout=30)
    if not r.ok:
        raise cli.engine_error(r)
    skip = set(ignoring)
    ids = [c for c in r.stdout.split() if c not in skip]
    if not ids:
        return set()
    r = cli("container", "inspect", "--format", "{{.Image}}", *ids, timeout=60)
    if not r.ok and "no such" not in r.stderr.lower():  # a container removed meanwhile is fine
        raise cli.engine_error(r)
    return set(r.stdout.split())


def env_images(cli: DockerCLI, *, ignoring_containers: Iterable[str] = ()) -> list[StoredEnvImage]:
    """The env images the runner built in this engine, oldest first.

    Ours means our labels *and* only ``runner-env:`` tags: an image someone built ``FROM`` an
    env image inherits the labels, but carries the name its owner gave it, and is left alone.
    ``ignoring_containers``: container ids not to count as users (those about to be removed).
    """
    used = _container_images(cli, ignoring_containers)
    out = []
    for img in cli.labelled({L_MANAGED: "1", L_KIND: "env"}, kind="image"):
        tags = tuple(str(t) for t in img.get("RepoTags") or [] if t != "<none>:<none>")
        if any(not t.startswith(f"{IMAGE_REPO}:") for t in tags):
            continue
        labels = (img.get("Config") or {}).get("Labels") or {}
        out.append(StoredEnvImage(
            id=str(img.get("Id", "")), tags=tags, env_name=labels.get(L_ENV_NAME, ""),
            created=_epoch(str(img.get("Created", ""))), size=int(img.get("Size") or 0),
            in_use=str(img.get("Id", "")) in used))
    return sorted(out, key=lambda i: i.created)


def unused_env_images(cli: DockerCLI, *, keep: int = 1, env_name: str | None = None,
                      ignoring_containers: Iterable[str] = ()) -> list[StoredEnvImage]:
    """Env images safe to remove: no container uses them and they are not among the newest
    ``keep`` of their env name (an unfinished build counts only once it is over
    :data:`STAGING_PATIENCE` old; an untagged one never counts as newest). ``env_name``
    limits the answer to one env's images. Works on any engine ``cli`` drives (local or SSH)."""
    if keep < 0:
        raise UserError(f"--keep: must be 0 or more, got {keep}.",
                        "it is how many of the newest images of each env stay (default 1).")
    images = env_images(cli, ignoring_containers=ignoring_containers)
    now = time.time()
    newest: dict[str, list[str]] = {}
    for img in reversed(images):  # newest first
        if img.tags and not img.staging:
            newest.setdefault(img.env_name, []).append(img.id)
    out = []
    for img in images:
        if img.in_use or (env_name is not None and img.env_name != env_name):
            continue
        if img.staging and now - img.created < STAGING_PATIENCE:
            continue
        if img.id in newest.get(img.env_name, [])[:keep]:
            continue
        out.append(img)
    return out


def remove_env_images(cli: DockerCLI, images: Iterable[StoredEnvImage]) -> list[str]:
    """Remove ``images`` by their ``runner-env:`` tags (by id when untagged) and verify they
    are gone; return the references removed. Never forced: an image a container started from
    since it was listed stays, and the error names it."""
    refs = [ref for img in images for ref in (img.tags or (img.id,))]
    if not refs:
        return []
    r = cli("image", "rm", *refs, timeout=300)
    left = [ref for ref in refs if cli.inspect_one(ref, kind="image") is not None]
    if left:
        raise UserError(
            f"{len(left)} env image(s) are still in the engine on {cli.where}: {', '.join(left)} "
            f"({r.last_error()}).",
            "a container may have started from one since it was listed: run the command again "
            "to see what is unused now.")
    return refs


def prune_report(cli: DockerCLI, *, keep: int, env_name: str | None, yes: bool,
                 ignoring_containers: Iterable[str] = ()) -> list[StoredEnvImage]:
    """Print the unused env images of ``cli``'s engine (see :func:`unused_env_images`) and,
    with ``yes``, remove them and say so. Returns them; the caller says how to remove them
    after a dry run."""
    found = unused_env_images(cli, keep=keep, env_name=env_name,
                              ignoring_containers=ignoring_containers)
    scope = f"env {env_name}" if env_name else "each env"
    if not found:
        print(f"no unused env images on {cli.where} (keeping the newest {keep} of {scope})")
        names = sorted({i.env_name for i in env_images(cli)}) if env_name else []
        if env_name and env_name not in names:
            print(f"  (no image of env {env_name} at all; envs with images there: "
                  f"{', '.join(names) or 'none'})")
        return []
    total = size_text(sum(i.size for i in found))
    print(f"env images on {cli.where} that no container uses, beyond the newest {keep} of "
          f"{scope} ({len(found)}, {total}):")
    now = time.time()
    for img in found:
        print(f"  {img.describe(now)}")
    if yes:
        remove_env_images(cli, found)
        print(f"removed {len(found)} env image(s) ({total}, less layers that kept images share)")
    return found


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
