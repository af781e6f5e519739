"""How the remote backend drives the host's Docker engine: docker command lines run through the
host's SSH :class:`~runner.plugins._ssh.Session` (the ``_docker`` layer's ``Executor``)."""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Callable, Sequence

from runner.plugins._docker.engine import Result
from runner.plugins._ssh import Session


class SSHExecutor:
    """Runs docker command lines on the host through a :class:`Session` (the
    :class:`runner.plugins._docker.Executor` protocol). ``raw`` words (the target's configured
    docker command, e.g. ``sudo docker``) are passed to the remote shell as written."""

    def __init__(self, session: Session, raw: Sequence[str] = ()) -> None:
        self.session = session
        self.raw = set(raw)

    def command(self, argv: Sequence[str]) -> str:
        return " ".join(a if a in self.raw else shlex.quote(a) for a in argv)

    def _with_input(self, command: str, input: bytes | None) -> tuple[str, bool]:
        """``command`` reading ``input`` from a file sent by SFTP first (the shell's own stdin
        carries the commands)."""
        if input is None:
            return command, True
        path = f"/tmp/.runner-input-{secrets.token_hex(8)}"
        self.session.write_file(path, input, mode=0o600)
        return f"{command} <{path}; rc=$?; rm -f {path}; exit $rc", False

    def run(self, argv: Sequence[str], *, input: bytes | None = None,
            timeout: float | None = None) -> Result:
        command, safe = self._with_input(self.command(argv), input)
        return self.session.run(command, timeout=timeout, retry=safe)

    def stream(self, argv: Sequence[str], *, input: bytes | None = None,
               on_line: Callable[[str], None]) -> Result:
        pending = bytearray()
        tail: list[str] = []

        def sink(chunk: bytes) -> None:
            pending.extend(chunk)
            while b"\n" in pending:
                line, _, rest = bytes(pending).partition(b"\n")
                pending[:] = rest
                text = line.decode("utf-8", "replace")
                on_line(text)
                tail.append(text)
                del tail[:-20]

        # 2>&1: docker build reports progress on stderr; the caller wants one ordered stream
        command, _ = self._with_input(self.command(argv) + " 2>&1", input)
        r = self.session.run(command, sink=sink, retry=False)
        if pending:
            sink(b"\n")
        return Result(r.returncode, "", "\n".join(tail + ([r.stderr] if r.stderr else [])))
