"""``runner ledger``: look after the run ledger itself.

The ledger (``.runner/runs.db``) only indexes the run directories, which are the record: each
holds the row's fixed part (``ledger.json``), the request, config, status, metrics, log and
outputs. ``runner ledger rebuild`` makes a new database from them when the old one is damaged
or lost; the damaged file is kept next to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner import hookimpl
from runner.backend import Command


def _arguments(p: Any) -> None:
    p.add_argument("action", choices=["rebuild"],
                   help="rebuild: make a new ledger from the run directories")


def _run(args: Any) -> int:
    from runner.store import Store, find_project_root, rebuild

    home = Store.home_for(find_project_root())
    report = rebuild(home)
    kept = f"; the old database is kept as {report.kept.name}" if report.kept else ""
    print(f"rebuilt the ledger at {Path(home) / 'runs.db'}: {report.runs} runs, "
          f"{report.sweeps} sweep{'s' if report.sweeps != 1 else ''}{kept}")
    if report.skipped:
        print(f"  skipped {len(report.skipped)} folder(s) of runs/ that are no run directory: "
              + ", ".join(report.skipped[:5]) + (" ..." if len(report.skipped) > 5 else ""))
    return 0


@hookimpl
def runner_register_commands(register: Any) -> None:
    register(Command(name="ledger", help="look after the run ledger (rebuild it from the run "
                                         "directories)", add_arguments=_arguments, run=_run))
