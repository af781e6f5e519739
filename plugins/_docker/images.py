"""Env images keyed by content: the recipe (Dockerfile and build context), building once,
and telling a cache hit from a miss (which input changed)."""

from __future__ import annotations

import io
import json
import os
import secrets
import shlex
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.backend import EnvSpec
from runner.environment import env_inputs, env_key, explain_miss
from runner.errors import UserError
from runner.plugins._docker.engine import DockerCLI, Result
from runner.plugins._docker.names import (
    BUNDLE_DIR,
    CACHE_MOUNT,
    IMAGE_REPO,
    L_ENV_INPUTS,
    L_ENV_KEY,
    L_ENV_NAME,
    L_KIND,
    L_MANAGED,
    LABEL,
    RECIPE,
    VENV_DIR,
)


# -- env images -------------------------------------------------------------------------------------
def image_tag(key: str) -> str:
    return f"{IMAGE_REPO}:{key}"


def dockerfile(base_ref: str, apt: Sequence[str], has_requirements: bool) -> str:
    """The env image recipe. Slow, stable layers first, so a new worker bundle rebuilds only
    the last layer; the labels of the image come from ``docker build --label`` (they would
    break layer reuse), except two constant ones every layer carries, so that what a failed
    build leaves (untagged images) is known as the runner's (``runner docker-prune``)."""
    lines = [f"FROM {base_ref}", f"LABEL {L_MANAGED}=1 {L_KIND}=env"]
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
    # --force-rm: a failed step leaves no stopped container behind either
    argv = [cli.docker, "build", "--force-rm", "--network", build_network, "-t", staging,
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
