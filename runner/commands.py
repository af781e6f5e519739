"""What the host gives every ``runner`` command, built-in or a plugin's: a :class:`CommandContext`.

The CLI sets it as ``args.context`` on the parsed arguments before it calls a command's
``run(args)``, so a plugin command (:class:`runner.backend.Command`) uses the ledger and the
plugins the CLI already loaded instead of building its own::

    def run(args: argparse.Namespace) -> int:
        ctx: CommandContext = args.context
        for rec in ctx.runs.store.list(limit=5):
            ctx.say(rec.id)
        return 0
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from runner.launch import Runs


@dataclass(frozen=True)
class CommandContext:
    """The ledger, the loaded plugins and the output of one ``runner`` command."""

    debug: bool = False  #: ``--debug`` was given: show tracebacks and extra detail
    make_runs: Callable[[], Runs] | None = field(default=None, repr=False, compare=False)
    #: builds :attr:`runs` on first use (None: a ``Runs`` for the current project)

    @cached_property
    def runs(self) -> Runs:
        """The project's ledger and the plugins the CLI loaded, created on first use (a
        command that needs neither pays nothing)."""
        if self.make_runs is not None:
            return self.make_runs()
        from runner.launch import Runs

        return Runs()

    @cached_property
    def console(self) -> Console:
        """A rich console on stdout for tables (piped output is not cut to 80 columns)."""
        from runner.views import console

        return console()

    def say(self, text: str) -> None:
        """Print one line of the command's output (stdout)."""
        print(text, flush=True)

    def note(self, text: str) -> None:
        """Print one line of progress or warning (stderr), apart from the output."""
        print(text, file=sys.stderr, flush=True)
