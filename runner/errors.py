"""Errors a user can act on: printed as one block, exit code 2, no traceback (``--debug``)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input. The first line says what is wrong and where; the rest what is valid and
    what to do next."""

    exit_code = 2

    def __init__(self, message: str, *hints: str) -> None:
        super().__init__(message)
        self.message = message
        self.hints = [h for h in hints if h]

    def render(self) -> str:
        """The text the CLI prints after ``error: ``."""
        return "\n".join([self.message, *(f"  {h}" for h in self.hints)])
