"""Every hook the runner calls, in one place.

A plugin is any module or object with functions named like these hooks and marked with
:data:`runner.hookimpl`. Built-in backends and models are plugins registered through the
same door as third-party ones; third-party plugins are found through the ``runner.plugins``
entry-point group. A function whose name starts with ``runner_`` but matches no hook here is
an error at start-up (``check_pending``), so a misspelt hook fails loudly instead of never
running.

The order in which a run meets these hooks::

    runner_register_backends, runner_register_models,
    runner_register_commands                          (once, when the manager is built)
    runner_before_prepare(spec)
    runner_after_submit(spec, handle)
    runner_run_finished(run_id, status, summary)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from runner.backend import Backend, Command, RunHandle, RunSpec, RunStatus
    from runner.model import Model

hookspec = pluggy.HookspecMarker("runner")


@hookspec
def runner_register_backends(register: Callable[[type[Backend]], None]) -> None:
    """Register backend classes (compute target kinds).

    :param register: call it once per :class:`runner.backend.Backend` subclass. The class's
        ``name`` is what ``backend:`` in a target file selects; registering a name twice is
        an error that names both plugins.
    :return: nothing; the return value is ignored.
    """


@hookspec
def runner_register_models(register: Callable[[type[Model]], None]) -> None:
    """Register model classes (what a run trains or executes).

    :param register: call it once per :class:`runner.model.Model` subclass. The class's
        ``name`` is what ``model=NAME`` selects.
    :return: nothing; the return value is ignored.
    """


@hookspec
def runner_register_commands(register: Callable[[Command], None]) -> None:
    """Register extra ``runner`` subcommands (e.g. ``runner attach`` from a remote backend).

    :param register: call it once per :class:`runner.backend.Command`. A name that clashes
        with a built-in command or another plugin's is an error naming both.
    :return: nothing; the return value is ignored.
    """


@hookspec
def runner_before_prepare(spec: RunSpec) -> None:
    """Called on the client before the backend prepares the environment of a run.

    :param spec: the run about to be prepared; its run directory already holds the request.
        Raising here aborts the run before anything is built (the run ends FAILED with the
        exception's message).
    :return: nothing; the return value is ignored.
    """


@hookspec
def runner_after_submit(spec: RunSpec, handle: RunHandle) -> None:
    """Called on the client once the backend has started a run.

    :param spec: the run that was submitted.
    :param handle: its handle; ``handle.locator`` is what the ledger stores to reattach.
    :return: nothing; the return value is ignored. Exceptions are reported, never fatal to
        the run (it is already running).
    """


@hookspec
def runner_run_finished(run_id: str, status: RunStatus, summary: Mapping[str, Any]) -> None:
    """Called on the client when it observes that a run has reached a terminal state.

    Called once per run by the client that records the final state (a run that ends while no
    client watches is finished by the next ``runner`` command that reconciles it).

    :param run_id: the run's ledger id.
    :param status: its terminal status (state, exit code, OOM flag, message).
    :param summary: the last value of each metric the run logged.
    :return: nothing; the return value is ignored.
    """
