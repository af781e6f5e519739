"""An example third-party plugin: the ``nice_local`` backend and the ``countdown`` model.

Installed with pip, it is found through the ``runner.plugins`` entry point; nothing in the
runner names it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from runner import hookimpl
from runner.backend import Command, Prepared, RunHandle, RunSpec
from runner.model import Model, RunContext
from runner.plugins.local import LocalBackend, LocalConfig


@dataclass
class NiceConfig(LocalConfig):
    backend: str = "nice_local"  # this backend
    niceness: int = 10  # how much to lower the worker's CPU priority


class NiceLocalBackend(LocalBackend):
    """Runs the worker like ``local``, at a lower CPU priority."""

    name = "nice_local"
    Config = NiceConfig
    config: NiceConfig

    def submit(self, spec: RunSpec, prepared: Prepared) -> RunHandle:
        os.environ["EXAMPLE_NICENESS"] = str(self.config.niceness)
        try:
            return super().submit(spec, prepared)
        finally:
            del os.environ["EXAMPLE_NICENESS"]


@dataclass
class CountdownConfig:
    name: str = "countdown"  # the model's registered name
    start: int = 3  # counts down from here
    delay: float = 0.0  # seconds between steps


class Countdown(Model):
    """Counts down, logging each step as a metric."""

    name = "countdown"
    Config = CountdownConfig

    def run(self, ctx: RunContext) -> int:
        niceness = os.environ.get("EXAMPLE_NICENESS")
        if niceness:
            os.nice(int(niceness))
        for step, n in enumerate(range(self.config.start, -1, -1)):
            print(f"countdown {n} (nice {os.nice(0)})", flush=True)
            ctx.log_metric("remaining", n, step=step)
            time.sleep(self.config.delay)
        (ctx.outputs_dir / "liftoff.txt").write_text("liftoff\n")
        return 0


@hookimpl
def runner_register_backends(register: Any) -> None:
    register(NiceLocalBackend)


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
