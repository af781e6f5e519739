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


@dataclass(frozen=True)
class Accounting:
    """Whether and how the cluster keeps accounting (``scontrol show config``)."""

    cluster: str  #: ClusterName
    enforced: bool  #: AccountingStorageEnforce holds associations (or more): sbatch checks them


def accounting(slurm: Slurm) -> Accounting | None:
    """The cluster's accounting; None where it keeps none (or the controller does not say)."""
    r = slurm.run("scontrol", "show", "config")
    if not r.ok:
        return None
    conf = {}
    for line in r.out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            conf[key.strip()] = value.strip()
    if conf.get("AccountingStorageType") != "accounting_storage/slurmdbd":
        return None
    enforce = conf.get("AccountingStorageEnforce", "").lower()
    return Accounting(conf.get("ClusterName", ""),
                      any(w in enforce for w in ("associations", "limits", "qos", "safe")))


def associations(slurm: Slurm, user: str, cluster: str) -> dict[str, set[str]] | None:
    """Each account ``user`` may submit under on ``cluster``, with the QOS it may use;
    None when ``sacctmgr`` does not answer."""
    where = [f"user={user}"] + ([f"cluster={cluster}"] if cluster else [])
    r = slurm.run("sacctmgr", "-nP", "show", "assoc", "where", *where, "format=account,qos")
    if not r.ok:
        return None
    out: dict[str, set[str]] = {}
    for line in r.out.splitlines():
        account, _, qos = line.strip().partition("|")
        if account:
            out.setdefault(account.lower(), set()).update(
                q.strip().lower() for q in qos.split(",") if q.strip())
    return out


def check_accounts(c: SlurmConfig, slurm: Slurm) -> None:
    """Check ``target.account`` and ``target.qos`` against the cluster's associations, where
    it keeps accounting and enforces it; elsewhere sbatch decides (and :func:`refused` says
    which key it refused)."""
    if not c.account and not c.qos:
        return
    acct = accounting(slurm)
    if acct is None or not acct.enforced:
        return
    user = slurm.user()
    assocs = associations(slurm, user, acct.cluster)
    if assocs is None:
        return
    listing = f"(sacctmgr show assoc where user={user} format=account,qos lists them)"
    if not assocs:
        raise UserError(f"Slurm user {user} has no account on cluster '{acct.cluster}': the "
                        "cluster enforces accounting, so every job would be refused.",
                        "ask the cluster's administrators to add you to an account "
                        "(sacctmgr add user NAME account=ACCOUNT).")
    accounts = ", ".join(sorted(assocs))
    account = c.account.lower() if c.account else None
    if account is not None and account not in assocs:
        raise UserError(f"target.account: user {user} has no account '{c.account}' on cluster "
                        f"'{acct.cluster}'.",
                        f"valid: {accounts}  {listing}",
                        "set target.account to one of them, or leave it unset for your default "
                        "account.")
    if not c.qos:
        return
    if account is None:
        r = slurm.run("sacctmgr", "-nP", "show", "user", user, "format=defaultaccount")
        default = r.out.strip().splitlines()[0].strip().lower() if r.ok and r.out.strip() else ""
        account = default if default in assocs else None
    allowed = assocs[account] if account else set().union(*assocs.values())
    if not allowed or c.qos.lower() in allowed:
        return
    valid = ", ".join(sorted(allowed))
    known = slurm.run("sacctmgr", "-nP", "show", "qos", "format=name")
    exists = not known.ok or c.qos.lower() in {q.strip().lower() for q in known.out.splitlines()}
    whose = f"account '{account}'" if account else f"user {user}"
    if not exists:
        raise UserError(f"target.qos: the cluster has no QOS '{c.qos}'.",
                        f"valid for {whose}: {valid}  {listing}",
                        "set target.qos to one of them, or leave it unset for the account's "
                        "default QOS.")
    raise UserError(f"target.qos: {whose} may not use QOS '{c.qos}' on cluster "
                    f"'{acct.cluster}'.",
                    f"valid for {whose}: {valid}  {listing}",
                    "set target.qos to one of them, choose an account that may use it "
                    "(target.account), or leave it unset for the account's default QOS.")


#: what sbatch says when it refuses a job, the key it is about, and what to do (the first
#: match wins: "Invalid account or account/partition combination" is about the account)
_REFUSALS = (
    ("account", "target.account",
     "set target.account to an account you belong to that may use the partition (or leave it "
     "unset for your default); sacctmgr show assoc where user=$USER lists them."),
    ("qos", "target.qos",
     "set target.qos to a QOS your account may use (or leave it unset for its default); "
     "sacctmgr show assoc where user=$USER format=account,qos lists them."),
    ("partition", "target.partition", ""),
    ("gres", "target.gres / target.gpus", ""),
    ("time limit", "target.time_limit", ""),
    ("memory", "target.mem_mb", ""),
    ("node configuration is not available",
     "target.gpus / target.gres / target.cpus_per_task / target.mem_mb", ""),
)


def refused(line: str) -> UserError:
    """The error for a job sbatch refused with ``line``, naming the key to check."""
    low = line.lower()
    found = next(((key, hint) for word, key, hint in _REFUSALS if word in low), None)
    offers = "`runner doctor TARGET` and sinfo show what the cluster offers."
    if found is None:
        return UserError(f"Slurm refused the job: {line}", offers)
    key, hint = found
    return UserError(f"{key}: Slurm refused the job: {line}", hint or f"check {key}; {offers}")
