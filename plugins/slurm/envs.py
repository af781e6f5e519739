"""Environments on the cluster: the client's own interpreter (``env=current``), or a
virtualenv built once per env key, on this machine, into a folder the compute nodes see."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from runner.backend import EnvSpec, Prepared
from runner.bundle import cache_root, worker_bundle
from runner.environment import build_venv, env_inputs, env_key, explain_miss
from runner.errors import UserError


def env_root(work_dir: str | None) -> Path:
    """Where envs (and the worker bundle they load) live: the work dir's ``envs/``, else the
    runner cache's ``slurm/``."""
    return (Path(work_dir).expanduser() / "envs") if work_dir else cache_root() / "slurm"


def prepare_env(env: EnvSpec, work_dir: str | None) -> Prepared:
    """The interpreter a run uses, building its virtualenv if this key has none yet."""
    if env.is_current:
        return Prepared(env_key=f"current-py{sys.version.split()[0]}", cached=True,
                        reason="cached (env=current: the running interpreter, nothing to build)",
                        details={"python": sys.executable})
    py = sys.executable
    version = sys.version.split()[0]
    if env.python and not (version == env.python or version.startswith(env.python + ".")):
        found = shutil.which(f"python{env.python}")
        if found is None:
            raise UserError(f"env.python: Python {env.python} is not installed on this machine "
                            f"(no python{env.python} on PATH).",
                            f"this machine has Python {version}; set env.python to it.")
        py = found
        version = subprocess.run([py, "-c", "import platform; print(platform.python_version())"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    root = env_root(work_dir)
    bundle = _shared_bundle(root)
    inputs = env_inputs(env, python=version, runner_hash=bundle.name)
    key = env_key(inputs)
    venv = root / key
    details = {"python": str(venv / "bin" / "python")}
    if (venv / ".complete").exists():
        return Prepared(key, True, "cached", details)
    cached = [json.loads(p.read_text()) for p in sorted(root.glob("*/inputs.json"))
              if (p.parent / ".complete").exists()]
    reason = explain_miss(inputs, cached)
    print(f"[runner] env {env.name}: {reason}; building virtualenv {key} in {root}", flush=True)
    build_venv(venv, py, inputs, bundle)
    return Prepared(key, False, reason, details)


def _shared_bundle(root: Path) -> Path:
    """The worker bundle, copied once per content under ``root`` (which the nodes see)."""
    src, key = worker_bundle()
    dest = root / "bundle" / key
    if not dest.is_dir():
        tmp = dest.with_name(f".{key}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        try:
            os.replace(tmp, dest)
        except OSError:  # another client copied it first
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
