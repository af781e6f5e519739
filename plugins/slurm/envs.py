"""Environments on the cluster: the client's own interpreter (``env=current``), or a
virtualenv built once per env key into a folder the compute nodes see: on this machine, or
on the login node over SSH (:func:`prepare_env_over_ssh`)."""

from __future__ import annotations

import io
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from runner.backend import EnvSpec, Prepared
from runner.bundle import cache_root, worker_bundle
from runner.environment import build_venv, env_inputs, env_key, explain_miss
from runner.errors import UserError

if TYPE_CHECKING:
    from runner.plugins._ssh import Session


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


def prepare_env_over_ssh(env: EnvSpec, session: Session, work_dir: str) -> Prepared:
    """The virtualenv of ``env`` in ``work_dir/envs`` on the cluster, built on the login node
    (over ``session``) if this key has none yet: the host's ``python3`` (or ``pythonX.Y`` for
    ``env.python``), the env's requirements, the worker bundle (sent once per content). The
    client's own interpreter is not there: ``env=current`` is the host's python3 with the
    worker, and nothing else."""
    q = shlex.quote
    root = f"{work_dir}/envs"
    src, bundle_key = worker_bundle()
    bundle = f"{root}/bundle/{bundle_key}"
    want = f"python{env.python}" if env.python else "python3"
    r = session.run(f"p=$(command -v {q(want)}) || {{ echo '@@none'; echo \"$PATH\"; exit 0; }}; "
                    "echo \"$p\"; \"$p\" -c 'import platform; print(platform.python_version())'; "
                    f"[ -d {q(bundle)} ] && echo '@@bundle'; :", timeout=60)
    lines = r.stdout.split()
    if not r.ok or not lines:
        raise UserError(f"could not look for {want} on {session.label}: {r.last_error()}")
    if lines[0] == "@@none":
        raise UserError(f"env {env.name}: there is no {want} on the PATH of {session.label} "
                        f"(PATH for SSH commands: {' '.join(lines[1:])}).",
                        "set env.python to a version the login node has, or install it there "
                        "(the compute nodes must have it at the same path).")
    python, version = lines[0], lines[1]
    if "@@bundle" not in lines:
        _send_bundle(session, src, bundle)
    inputs = env_inputs(env, python=version, runner_hash=bundle_key)
    key = env_key(inputs)
    venv = f"{root}/{key}"
    details = {"python": f"{venv}/bin/python"}
    r = session.run(f"if [ -e {q(venv)}/.complete ]; then echo '@@hit'; else "
                    f"for f in {q(root)}/*/inputs.json; do [ -e \"${{f%/inputs.json}}/.complete\" ] "
                    "&& cat \"$f\" && echo '@@end'; done; fi; :", timeout=60)
    if r.stdout.startswith("@@hit"):
        return Prepared(key, True, "cached", details)
    cached = []
    for chunk in r.stdout.split("@@end"):
        try:
            cached.append(json.loads(chunk))
        except json.JSONDecodeError:
            continue
    reason = explain_miss(inputs, cached)
    print(f"[runner] env {env.name}: {reason}; building virtualenv {key} in {root} on "
          f"{session.label}", flush=True)
    reqs = " ".join(q(str(x)) for x in inputs["requirements"])
    tmp = f"{venv}.building-{secrets.token_hex(4)}"
    pip = (f"{q(tmp)}/bin/python -m pip install --disable-pip-version-check {reqs} 2>&1 || "
           f"{{ rm -rf {q(tmp)}; echo '@@pip'; exit 5; }}; " if reqs else "")
    build = session.run(
        f"set -e; {q(python)} -m venv {'' if reqs else '--without-pip '}{q(tmp)} 2>&1; " + pip
        + f"site=$(echo {q(tmp)}/lib/python*/site-packages); "
        f"printf '%s\\n' {q(bundle)} > \"$site/runner-worker.pth\"; "
        f"printf '%s' {q(json.dumps(dict(inputs), indent=1, sort_keys=True))} > {q(tmp)}/inputs.json; "
        f"touch {q(tmp)}/.complete; mv -T {q(tmp)} {q(venv)} 2>/dev/null || rm -rf {q(tmp)}",
        timeout=3600, retry=False, sink=lambda b: sys.stdout.write(b.decode("utf-8", "replace")))
    if not build.ok:
        session.run(f"rm -rf {q(tmp)}", timeout=60)
        raise UserError(f"env {env.name}: building its virtualenv on {session.label} failed "
                        f"(exit {build.returncode}): {build.last_error()}",
                        "pip's output above says which requirement failed."
                        if build.returncode == 5 else
                        f"check that `{want} -m venv` works on the login node.")
    return Prepared(key, False, reason, details)


def _send_bundle(session: Session, src: Path, dest: str) -> None:
    """The worker bundle to ``dest`` on the host: one tar over SFTP, unpacked beside ``dest``
    and renamed into place (a concurrent client's copy wins once)."""
    q = shlex.quote
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(src, arcname=".")
    tmp = f"{dest}.{secrets.token_hex(4)}"
    session.run(f"mkdir -p {q(os.path.dirname(dest))}", timeout=60)
    session.write_file(f"{tmp}.tar", buf.getvalue(), mode=0o600)
    r = session.run(f"mkdir -p {q(tmp)} && tar -xf {q(tmp)}.tar -C {q(tmp)} 2>&1; rc=$?; "
                    f"rm -f {q(tmp)}.tar; [ $rc -eq 0 ] || {{ rm -rf {q(tmp)}; exit $rc; }}; "
                    f"mv -T {q(tmp)} {q(dest)} 2>/dev/null || rm -rf {q(tmp)}", timeout=600,
                    retry=False)
    if not r.ok:
        raise UserError(f"could not unpack the worker in {dest} on {session.label}: "
                        f"{r.stdout.strip() or r.last_error()}")
