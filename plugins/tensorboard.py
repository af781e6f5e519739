"""``runner tensorboard RUN...|--sweep S``: TensorBoard over the runs' logs, on loopback.

A run's TensorBoard logs are the event files its model wrote under its outputs (the sentiment
CNN writes ``outputs/tensorboard/``; a script writes wherever it likes under
``runner.outputs_dir()``). Each run appears in TensorBoard under its id and, in a sweep, the
values it was given. The command prints the URL, then *becomes* TensorBoard (same process id):
Ctrl-C or a signal to that id stops it.

TensorBoard comes with the ``tensorboard`` package (in the ``tf`` extra).
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import hookimpl
from runner.backend import Command
from runner.errors import UserError

if TYPE_CHECKING:
    from runner.recorded import RecordedRun

#: how TensorBoard's event files are named
EVENTS = "events.out.tfevents.*"
HOST = "127.0.0.1"


def log_dirs(runs: Sequence[RecordedRun]) -> tuple[dict[str, Path], list[str]]:
    """``{name: folder}`` for the runs that wrote TensorBoard logs (the folder above all of a
    run's event files), and the ids of those that wrote none."""
    from runner.recorded import label, swept_values

    found: dict[str, Path] = {}
    without: list[str] = []
    for run, values in zip(runs, swept_values(runs), strict=True):
        events = sorted(run.outputs.rglob(EVENTS)) if run.outputs.is_dir() else []
        if not events:
            without.append(run.id)
            continue
        top = Path(os.path.commonpath([str(e.parent) for e in events]))
        # within TensorBoard's --logdir_spec, a name may hold neither ',' nor ':'
        found[re.sub(r"[,:\s]+", "_", label(run, values)).strip("_")] = top
    return found, without


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _arguments(p: Any) -> None:
    p.add_argument("runs", nargs="*", metavar="RUN", help="runs whose logs to show")
    p.add_argument("--sweep", metavar="SWEEP", help="every run of this sweep")
    p.add_argument("--port", type=int, default=0, help="the port on 127.0.0.1 (default: a free one)")


def _tensorboard(args: Any) -> int:
    import importlib.util

    from runner.recorded import read_run, select

    ctx = args.context
    records = select(ctx.runs, args.runs, sweep=args.sweep, command="runner tensorboard")
    found, without = log_dirs([read_run(r) for r in records])
    if not found:
        raise UserError(
            f"{'this run wrote no' if len(records) == 1 else 'none of these runs wrote'} TensorBoard logs "
            "(event files under its outputs).",
            "the sentiment_cnn model writes them to outputs/tensorboard; a script can write "
            "them into runner.outputs_dir() (tf.summary, torch.utils.tensorboard).",
            "a run that ran elsewhere: `runner fetch RUN` brings its outputs here first.")
    try:
        missing = importlib.util.find_spec("tensorboard") is None
    except ImportError:
        missing = True
    if missing:
        raise UserError("tensorboard is not installed: pip install tensorboard "
                        "(it comes with 'runner[tf]')")
    if without:
        ctx.note(f"no TensorBoard logs in run(s) {', '.join(without)}: left out")
    port = args.port or _free_port()
    spec = ",".join(f"{name}:{path}" for name, path in found.items())
    ctx.say(f"TensorBoard over {len(found)} run(s) at http://{HOST}:{port}/  "
            f"(process {os.getpid()}; Ctrl-C stops it)")
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, "-m", "tensorboard.main", "--logdir_spec", spec, "--host", HOST,
            "--port", str(port)]
    os.execv(sys.executable, argv)  # this process becomes TensorBoard: one id to stop
    return 0  # not reached


@hookimpl
def runner_register_commands(register: Any) -> None:
    register(Command(name="tensorboard", help="start TensorBoard on loopback over runs' logs "
                                              "(RUN...|--sweep S) and print its URL",
                     add_arguments=_arguments, run=_tensorboard))
