"""``runner remote-gc``: stray containers, old run directories, data trees no run used for a
while and unused env images on a host."""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.backend import (
    Command,
)
from runner.errors import UserError
from runner.plugins import _docker as dk
from runner.plugins.remote_docker.backend import RemoteDockerBackend
from runner.plugins.remote_docker.config import L_DATA, _q

# -- runner remote-gc ---------------------------------------------------------------------------
#: What a run directory's name may be (anything else under runs/ was not made by the runner).
_RUN_DIR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class OldRunDir:
    """A run directory under the host's ``WORK_DIR/runs`` that garbage collection may remove."""

    run_id: str
    age: float  # seconds since its run ended (ledger), else since the folder last changed (host)
    size_kb: int
    known: bool  # this project's ledger has the run


def load_remote_target(name: str, runs: Any) -> tuple[Any, RemoteDockerBackend]:
    """``runs`` (the CLI's :class:`runner.launch.Runs`) and a backend for target ``name`` of
    the current project, loaded and validated as ``runner doctor NAME`` does."""
    from omegaconf import DictConfig, OmegaConf

    from runner import config as conf

    path = conf.config_file("target", name, runs.dirs)
    names = conf.options("target", runs.dirs)
    if not Path(path).is_file():
        raise UserError(f"unknown target '{name}'.",
                        f"available target options: {', '.join(names) or 'none'}",
                        "attach a host as a target with: runner attach NAME --host HOST")
    cfg = OmegaConf.create({"target": OmegaConf.load(path)})
    cls, target_conf = conf.target_config(cfg, name, runs.registry, runs.dirs)
    if not issubclass(cls, RemoteDockerBackend):
        def backend_of(n: str) -> Any:
            node = OmegaConf.load(conf.config_file("target", n, runs.dirs))
            return node.get("backend") if isinstance(node, DictConfig) else None

        remote = [n for n in names if backend_of(n) == RemoteDockerBackend.name]
        raise UserError(
            f"target '{name}' ({path}) uses backend '{cls.name}'; remote-gc cleans hosts of "
            f"{RemoteDockerBackend.name} targets.",
            f"{RemoteDockerBackend.name} targets here: {', '.join(remote) or 'none'}",
            "for this machine's engine: runner docker-orphans, runner docker-prune")
    return runs, cls(target_conf)


def old_run_dirs(b: RemoteDockerBackend, records: Mapping[str, Any], older_than: float,
                 keep: set[str]) -> list[OldRunDir]:
    """Run directories under the host's work dir whose run ended more than ``older_than``
    seconds ago. ``records``: this project's ledger by run id (a known run's age is from its
    end there; an unknown run's from the newest change to the folder, its status or its log,
    by the host's clock). ``keep``: run ids never to list (in flight, or with a container)."""
    runs_dir = f"{b.work_dir}/runs"
    r = b.session.run(
        f"cd {_q(runs_dir)} 2>/dev/null || exit 0; date +%s; for d in *; do "
        "[ -d \"$d\" ] || continue; "
        "t=$(stat -c %Y \"$d\" \"$d/status.json\" \"$d/log.txt\" 2>/dev/null | sort -n | tail -1); "
        "k=$(du -sk \"$d\" 2>/dev/null | cut -f1); "
        "printf '%s %s %s\\n' \"${t:-0}\" \"${k:-0}\" \"$d\"; "
        "done", timeout=300)
    if not r.ok:
        raise UserError(f"could not list {runs_dir} on {b.session.label}: {r.last_error()}")
    lines = r.stdout.splitlines()
    if not lines:
        return []
    host_now = float(lines[0])
    out = []
    for line in lines[1:]:
        mtime, size, run_id = (line.split(" ", 2) + ["", ""])[:3]
        if not _RUN_DIR_NAME.fullmatch(run_id) or run_id in keep:
            continue
        rec = records.get(run_id)
        if rec is not None and not rec.state.terminal:
            continue
        if rec is not None:
            age = time.time() - (rec.finished or rec.updated)
        else:
            age = host_now - float(mtime or 0)
        if age > older_than:
            out.append(OldRunDir(run_id, age, int(size or 0), rec is not None))
    return out


def remove_run_dirs(b: RemoteDockerBackend, dirs: list[OldRunDir]) -> None:
    """``rm -rf`` those run directories on the host; verify they are gone."""
    if not dirs:
        return
    names = " ".join(_q(d.run_id) for d in dirs)
    runs_dir = f"{b.work_dir}/runs"
    r = b.session.run(f"cd {_q(runs_dir)} || exit 3; rm -rf -- {names} 2>&1; "
                      f"for d in {names}; do [ -e \"$d\" ] && echo \"left $d\"; done; true",
                      timeout=600)
    left = [ln.split(" ", 1)[1] for ln in r.stdout.splitlines() if ln.startswith("left ")]
    if not r.ok or left:
        cause = next((ln for ln in r.stdout.splitlines() if not ln.startswith("left ")),
                     r.last_error())
        raise UserError(f"could not remove run directories under {runs_dir} on "
                        f"{b.session.label}: {', '.join(left) or '?'} ({cause}).",
                        "check their owner and permissions on the host; a run's container "
                        "writes as the SSH user.")


def old_data(b: RemoteDockerBackend, older_than: float, in_use: set[str]
             ) -> tuple[list[tuple[str, int, float]], int, int]:
    """Data trees under ``data/`` that no run used for ``older_than`` seconds (a submit
    touches the tree it mounts) and that no container mounts (``in_use``), as (digest, size
    KiB, age); and the objects nothing links to any more (count, KiB): code objects, and
    data objects whose trees are gone. Objects are only a cache: removing one costs a
    re-upload at most."""
    minutes = int(older_than // 60)
    r = b.session.run(
        f"cd {_q(b.work_dir)} 2>/dev/null || exit 0; now=$(date +%s); "
        "for d in data/*; do [ -d \"$d\" ] || continue; "
        "t=$(stat -c %Y \"$d\"); printf 'tree %s %s %s\\n' \"${d#data/}\" "
        "\"$(du -sk \"$d\" | cut -f1)\" \"$((now - t))\"; done; "
        f"find objects -type f -links 1 -mmin +{minutes} -printf 'obj %k\\n' 2>/dev/null",
        timeout=600)
    trees, count, kib = [], 0, 0
    for line in r.stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["tree"] and len(parts) == 4 and re.fullmatch(r"[0-9a-f]{64}", parts[1]):
            if parts[1] not in in_use and float(parts[3]) > older_than:
                trees.append((parts[1], int(parts[2]), float(parts[3])))
        elif parts[:1] == ["obj"] and len(parts) == 2:
            count, kib = count + 1, kib + int(parts[1])
    return trees, count, kib


def remove_data(b: RemoteDockerBackend, trees: list[str], older_than: float) -> None:
    """Remove those trees, then every object nothing links to that is older than
    ``older_than`` seconds."""
    names = " ".join(f"data/{d}" for d in trees)
    r = b.session.run(f"cd {_q(b.work_dir)} || exit 3; rm -rf -- {names} 2>&1; "
                      f"find objects -type f -links 1 -mmin +{int(older_than // 60)} -delete 2>&1",
                      timeout=600)
    if not r.ok:
        raise UserError(f"could not remove data under {b.work_dir} on {b.session.label}: "
                        f"{(r.stdout.strip() or r.last_error())[-300:]}")


def _gc_arguments(p: Any) -> None:
    p.add_argument("target", help="a remote_docker target (conf/target/TARGET.yaml)")
    p.add_argument("--older-than", type=float, default=7.0, metavar="DAYS",
                   help="run directories whose run ended more than DAYS ago (default 7)")
    p.add_argument("--keep", type=int, default=1, metavar="N",
                   help="newest env images of each env to keep, used or not (default 1)")
    p.add_argument("--env", metavar="NAME", help="only the env images of this env")
    p.add_argument("--all-projects", action="store_true",
                   help="also containers started from other projects (only when no other "
                        "project uses the host: their runs are not in this ledger)")
    p.add_argument("--yes", action="store_true",
                   help="remove what is listed; without it, only list (a dry run)")


def _gc(args: Any) -> int:
    if args.older_than < 0:
        raise UserError(f"--older-than: must be 0 or more days, got {args.older_than:g}.",
                        "run directories whose run ended longer ago than that are removed.")
    if args.keep < 0:
        raise UserError(f"--keep: must be 0 or more, got {args.keep}.",
                        "it is how many of the newest images of each env stay (default 1).")
    runs, b = load_remote_target(args.target, args.context.runs)
    runs.reconcile()
    records = {r.id: r for r in runs.store.list()}
    active = {i for i, r in records.items() if not r.state.terminal}
    facts = b.facts()
    print(f"{args.target}: {b.session.label}, work dir {facts.work_dir}")
    project = None if args.all_projects else str(runs.project_root)
    strays = dk.find_orphans(b.cli, active, project)
    hosted = dk.our_containers(b.cli)  # every project's: a run with a container keeps its dir
    keep = active | ({c.run_id for c in hosted} - {c.run_id for c in strays})
    dirs = old_run_dirs(b, records, args.older_than * 86400, keep)
    whose = "any project" if args.all_projects else "this project"
    if strays:
        print(f"containers with our labels that no in-flight run of {whose} accounts for "
              f"({len(strays)}):")
        for c in strays:
            print(f"  {c.name}  {c.state:10}  run {c.run_id or '-'}  ({c.kind})")
        if args.yes:
            b.cli.remove(*[c.id for c in strays])
            print(f"removed {len(strays)} container(s)")
    else:
        print(f"no stray containers of {whose} on {b.session.label}")
    if dirs:
        print(f"run directories under {facts.work_dir}/runs whose run ended over "
              f"{args.older_than:g} days ago ({len(dirs)}, {dk.size_text(sum(d.size_kb for d in dirs) * 1024)}):")
        for d in dirs:
            note = "" if d.known else "  (unknown to this project's ledger)"
            print(f"  runs/{d.run_id}  {dk.age_text(d.age)} ago  "
                  f"{dk.size_text(d.size_kb * 1024)}{note}")
        if args.yes:
            remove_run_dirs(b, dirs)
            print(f"removed {len(dirs)} run director{'y' if len(dirs) == 1 else 'ies'}")
    else:
        print(f"no run directories under {facts.work_dir}/runs ended over "
              f"{args.older_than:g} days ago")
    mounted = {dg for d in b.cli.labelled({dk.L_MANAGED: "1"})
               for dg in ((d.get("Config") or {}).get("Labels") or {}).get(L_DATA, "").split(",")
               if dg}
    trees, n_obj, obj_kb = old_data(b, args.older_than * 86400, mounted)
    if trees or n_obj:
        print(f"data trees under {facts.work_dir}/data no run used for {args.older_than:g} days "
              f"({len(trees)}, {dk.size_text(sum(t[1] for t in trees) * 1024)}), and objects "
              f"nothing links to ({n_obj}, {dk.size_text(obj_kb * 1024)}; the trees' own "
              "objects go with them):")
        for digest, kb, age in trees:
            print(f"  data/{digest[:16]}...  {dk.age_text(age)} ago  {dk.size_text(kb * 1024)}")
        if args.yes:
            remove_data(b, [t[0] for t in trees], args.older_than * 86400)
            print(f"removed {len(trees)} data tree(s) and the objects nothing links to")
    else:
        print(f"no data trees unused for {args.older_than:g} days under {facts.work_dir}/data")
    images = dk.prune_report(b.cli, keep=args.keep, env_name=args.env, yes=args.yes,
                             ignoring_containers=[c.id for c in strays])
    if not args.yes and (strays or dirs or images or trees or n_obj):
        again = ["runner", "remote-gc", args.target]
        for flag, value, default in (("--older-than", f"{args.older_than:g}", "7"),
                                     ("--keep", str(args.keep), "1"), ("--env", args.env, None)):
            if value is not None and value != default:
                again += [flag, value]
        again += ["--all-projects"] * bool(args.all_projects) + ["--yes"]
        print(f"dry run, nothing removed: `{shlex.join(again)}` removes what is listed")
    return 0


def gc_command() -> Command:
    return Command("remote-gc", "list (and with --yes remove) stray containers, old run "
                   "directories, unused data trees and objects, and unused env images on a "
                   "remote_docker target's host",
                   _gc_arguments, _gc)
