"""What the runner learns about a host (one command at prepare) and ``runner doctor`` for a
remote target: each check with its fix."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runner.backend import (
    Check,
)
from runner.errors import UserError
from runner.plugins import _docker as dk
from runner.plugins._shipping import workdir_error
from runner.plugins.remote_docker.config import _q

if TYPE_CHECKING:
    from runner.plugins.remote_docker.backend import RemoteDockerBackend


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


def probe(b: RemoteDockerBackend, base: str | None = None) -> HostFacts:
    """One command: home, uid, docker's answer, the work dir (made, writable, free space),
    the base image's ID and the env images present. Each failure is a clear UserError."""
    c, d = b.config, b.docker
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
    r = b.session.run(script, timeout=60)
    lines = r.stdout.splitlines()
    where = b.session.label
    if "@@docker" in lines:
        i = lines.index("@@docker")
        rc, msg, path = lines[i + 1], "\n".join(lines[i + 2:-1]), lines[-1]
        raise docker_error(b.docker, rc, msg, path, where)
    if "@@workdir" in lines:
        i = lines.index("@@workdir")
        raise workdir_error(lines[i + 1] if len(lines) > i + 1 else "", lines[3]
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
    return HostFacts(home, uid, gid, work, int(free) if free.isdigit() else None,
                            base_id, tags)


def docker_error(cmd: str, rc: str, msg: str, path: str, where: str) -> UserError:
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


def doctor(b: RemoteDockerBackend) -> list[Check]:
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
