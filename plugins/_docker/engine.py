"""Running docker commands on the machine whose engine a backend drives: this one
(``subprocess``) or a remote host (one SSH command per call, see ``remote_docker.executor``)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from runner.errors import UserError


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


def user_arg() -> str | None:
    """``--user`` so that files the run writes belong to the client's user."""
    if not hasattr(os, "getuid"):
        return None
    return f"{os.getuid()}:{os.getgid()}"
