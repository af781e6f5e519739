"""Telling a target's GPUs apart: the ids a sweep hands out, one per job."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

__all__ = ["count_listed", "device_ids", "local_gpu_count"]


def count_listed(nvidia_smi_l: str) -> int:
    """The number of devices in the output of ``nvidia-smi -L``."""
    return sum(1 for line in nvidia_smi_l.splitlines() if line.startswith("GPU "))


def local_gpu_count() -> int | None:
    """How many NVIDIA GPUs this machine has; None when ``nvidia-smi`` cannot tell."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return count_listed(out.stdout) if out.returncode == 0 else None


def device_ids(gpus: str | None, count: Callable[[], int | None]) -> list[str] | None:
    """The device ids that ``gpus`` (a target's ``gpus:``) names: "0,2" gives ["0", "2"];
    "all" asks ``count`` and gives ["0", ..., n-1]; None, "" and "none" give None, as does
    "all" when the count is unknown or zero."""
    text = "" if gpus is None else str(gpus).strip()
    if text in ("", "none"):
        return None
    if text == "all":
        n = count()
        return [str(i) for i in range(n)] if n else None
    return [g.strip() for g in text.split(",") if g.strip()] or None
