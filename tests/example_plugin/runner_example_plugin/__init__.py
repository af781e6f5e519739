"""An example third-party plugin: the ``subprocess`` backend and the ``countdown`` model.

Installed with pip, it is found through its two ``runner.plugins`` entry points; nothing in
the runner names it. The backend module, :mod:`runner_example_plugin.subprocess_backend`, is
the example of ``docs/plugins.md`` (``docs/examples/subprocess_backend.py``), registered through
its own entry point; this module registers the model and a ``runner liftoff`` command.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from runner import hookimpl
from runner.backend import Command
from runner.model import Model, RunContext


@dataclass
class CountdownConfig:
    name: str = "countdown"  # the model's registered name
    start: int = 3  # counts down from here
    delay: float = 0.0  # seconds between steps


class Countdown(Model):
    """Counts down, logging each step as a metric, and writes ``liftoff.txt``."""

    name = "countdown"
    Config = CountdownConfig

    def run(self, ctx: RunContext) -> int:
        for step, n in enumerate(range(self.config.start, -1, -1)):
            print(f"countdown {n}", flush=True)
            ctx.log_metric("remaining", n, step=step)
            time.sleep(self.config.delay)
        (ctx.outputs_dir / "liftoff.txt").write_text("liftoff\n")
        return 0


@hookimpl
def runner_register_models(register: Any) -> None:
    register(Countdown)


def _add_liftoff_arguments(parser: Any) -> None:
    parser.add_argument("--from", dest="start", type=int, default=3, help="count down from")


def _liftoff(args: Any) -> int:
    print(" ".join(str(n) for n in range(args.start, -1, -1)), "liftoff")
    return 0


@hookimpl
def runner_register_commands(register: Any) -> None:
    register(Command("liftoff", "count down, then lift off", _add_liftoff_arguments, _liftoff))
