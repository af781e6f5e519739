"""What the cluster offers (``sinfo``), and the checks a target's keys must pass against it
before anything is built or submitted."""

from __future__ import annotations

from dataclasses import dataclass

from runner.errors import UserError
from runner.plugins.slurm.client import Slurm
from runner.plugins.slurm.config import SlurmConfig, gres_request, time_limit_minutes


@dataclass(frozen=True)
class Partition:
    """One partition as ``sinfo`` reports it."""

    name: str  #: its name
    default: bool  #: the partition jobs go to when they name none
    max_minutes: float | None  #: its time limit; None = unlimited
    gres: frozenset[str]  #: the generic resources its nodes offer, by name ("gpu")
    up: bool  #: whether it takes jobs


def _gres_names(text: str) -> set[str]:
    names = set()
    for item in text.split(","):
        item = item.split("(")[0].strip()
        if item and item != "(null)":
            names.add(item.split(":")[0])
    return names


def partitions(slurm: Slurm) -> list[Partition]:
    """The cluster's partitions; a clear error when Slurm does not answer."""
    slurm.require()
    r = slurm.run("sinfo", "-h", "-o", "%P|%l|%G|%a")
    if not r.ok:
        raise UserError(f"Slurm does not answer here: sinfo says: {r.first_error()}",
                        "check that the controller is up (scontrol ping) and that SLURM_CONF or "
                        "target.slurm_conf names the cluster's slurm.conf.")
    seen: dict[str, Partition] = {}
    for line in r.out.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4:
            continue
        name, limit, gres, avail = parts[:4]
        default = name.endswith("*")
        name = name.rstrip("*")
        try:
            minutes = time_limit_minutes(limit, "sinfo")
        except UserError:
            minutes = None
        old = seen.get(name)  # one line per node state: merge them
        seen[name] = Partition(
            name, default or bool(old and old.default), minutes,
            frozenset(_gres_names(gres) | (set(old.gres) if old else set())),
            avail == "up" or bool(old and old.up))
    return list(seen.values())


def check_target(c: SlurmConfig, gpus: str | None, slurm: Slurm) -> Partition:
    """Check the target's partition, time limit and gres against the cluster; return the
    partition its runs go to."""
    parts = partitions(slurm)
    names = ", ".join(p.name for p in parts) or "none"
    if c.partition:
        part = next((p for p in parts if p.name == c.partition), None)
        if part is None:
            raise UserError(f"target.partition: the cluster has no partition '{c.partition}'.",
                            f"available: {names}  (sinfo lists them)",
                            "set target.partition to one of them, or leave it unset for the default.")
    else:
        part = next((p for p in parts if p.default), None)
        if part is None:
            raise UserError("target.partition is unset and the cluster has no default partition.",
                            f"available: {names}; set target.partition to one of them.")
    if not part.up:
        raise UserError(f"target.partition: partition '{part.name}' is not up (sinfo).",
                        f"available: {names}")
    if c.time_limit is not None and part.max_minutes is not None:
        want = time_limit_minutes(str(c.time_limit), "target.time_limit")
        if want is not None and want > part.max_minutes:
            raise UserError(
                f"target.time_limit={c.time_limit!r} is over partition '{part.name}''s limit "
                f"({part.max_minutes:g} minutes).",
                f"ask for at most {part.max_minutes:g} minutes, or choose a partition with a "
                f"longer limit (available: {names}).")
    gres = gres_request(c, gpus)
    if gres:
        name = gres.split(":")[0]
        if name not in part.gres:
            key = "target.gres" if c.gres else "target.gpus"
            offered = ", ".join(sorted(part.gres)) or "none"
            raise UserError(
                f"{key}: asks for gres '{gres}', but the nodes of partition '{part.name}' offer "
                f"no '{name}' (they offer: {offered}).",
                "ask for a gres the partition has, or choose a partition whose nodes have it.")
    return part
