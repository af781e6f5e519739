"""Quantities for people, written one way across the CLI and the plugins."""

from __future__ import annotations


def size_text(n: float) -> str:
    """Bytes for people: 512 B, 3.2 MiB, 1.7 GiB."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


def age_text(seconds: float) -> str:
    """A duration for people: 12 min, 5.5 h, 9.0 days."""
    if seconds < 3600:
        return f"{max(seconds, 0) / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
