"""What Linux says about a process (``/proc/PID/stat``), read one way for the whole runner."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ProcStat", "alive", "proc_stat"]


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
