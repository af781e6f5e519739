"""What Linux says about a process (``/proc/PID/stat``), read one way for the whole runner."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["ProcStat", "alive", "env_values", "identity", "identity_alive", "proc_stat",
           "processes_with"]


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` the runner uses."""

    state: str  #: one letter: R running, S sleeping, Z zombie, X dead ...
    pgid: int  #: the process group
    start_time: str  #: clock ticks since boot at which it started (tells a reused PID apart)

    @property
    def alive(self) -> bool:
        """False for a zombie or a dead process."""
        return self.state not in ("Z", "X")


def proc_stat(pid: int | str) -> ProcStat | None:
    """The stat of ``pid``; None when there is no such process (or it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces or parentheses itself
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return ProcStat(state=fields[0], pgid=int(fields[2]), start_time=fields[19])
    except (IndexError, ValueError):
        return None


def alive(pid: int | str) -> bool:
    """Whether ``pid`` is a live process (not a zombie)."""
    st = proc_stat(pid)
    return st is not None and st.alive


def identity(pid: int | None = None) -> dict[str, Any]:
    """What names a process for good: host, PID and its start time (a PID is reused, the
    pair is not). Recorded with each run by the process that creates it."""
    pid = os.getpid() if pid is None else pid
    st = proc_stat(pid)
    return {"host": socket.gethostname(), "pid": pid, "start": st.start_time if st else None,
            "time": time.time()}


def identity_alive(ident: dict[str, Any], *, other_host_patience: float = 3600.0) -> bool:
    """Whether the process ``ident`` names still runs. On another host it cannot be asked:
    it counts as alive for ``other_host_patience`` seconds after it was recorded."""
    if ident.get("host") != socket.gethostname():
        return time.time() - float(ident.get("time") or 0) < other_host_patience
    pid = ident.get("pid")
    if not pid:
        return False
    st = proc_stat(int(pid))
    if st is None or not st.alive:
        return False
    return ident.get("start") in (None, st.start_time)  # else the PID now names another process


def _entries(source: str) -> list[tuple[int, list[bytes]]]:
    """``(pid, NUL-separated entries of /proc/PID/SOURCE)`` of every process this user may
    read (``cmdline``: the arguments; ``environ``: the environment it started with)."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/{source}", "rb") as f:
                    out.append((int(pid), f.read().split(b"\0")))
            except OSError:
                continue
    return out


def processes_with(field: str, *, source: str = "cmdline") -> list[int]:
    """PIDs of this machine's live processes with ``field`` as one whole entry of their
    ``/proc/PID/cmdline`` (an argument) or ``/proc/PID/environ`` (``NAME=value``)."""
    want = field.encode()
    return [pid for pid, entries in _entries(source) if want in entries and alive(pid)]


def env_values(name: str) -> dict[int, str]:
    """``{pid: value}`` of variable ``name`` in the environment of each live process this
    user may read (a process's environment is the one it started with)."""
    prefix = name.encode() + b"="
    out: dict[int, str] = {}
    for pid, entries in _entries("environ"):
        value = next((e[len(prefix):] for e in entries if e.startswith(prefix)), None)
        if value is not None and alive(pid):
            out[pid] = value.decode("utf-8", "replace")
    return out
