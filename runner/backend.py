"""The backend contract: how a run is prepared, started, watched and stopped on a target.

A *backend* is a class registered through the ``runner_register_backends`` hook. A target
file (``conf/target/NAME.yaml``) selects one by name (``backend: local``) and carries the keys
of that backend's :attr:`Backend.Config` schema.

The client and whatever executes the run talk only through the **run directory**
(see :mod:`runner.rundir`): the client writes the request into it, the backend makes it
available on the target (a local path, a container mount, a copy on a remote host), the
worker (:mod:`runner.worker`) writes the log, metrics, outputs and final status into it, and
the backend brings it back. No shared filesystem is assumed.
"""

from __future__ import annotations

import enum
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from runner.request import DataInput, RunRequest

__all__ = [
    "Backend",
    "Check",
    "Command",
    "BackendConfig",
    "EnvSpec",
    "Prepared",
    "RunHandle",
    "RunSpec",
    "RunState",
    "RunStatus",
    "Capability",
    "CAPABILITIES",
]


class Capability(enum.StrEnum):
    """What a backend can do, declared in :attr:`Backend.capabilities`.

    The registry refuses a backend that declares anything else; the CLI refuses a command a
    target cannot carry out (``runner cancel`` on a target without :attr:`CANCEL`), and the
    contract suite (:class:`runner.testing.BackendContract`) tests exactly what is declared.
    """

    CANCEL = "cancel"  #: :meth:`RunHandle.cancel` stops a run and verifies it stopped
    FOLLOW_LOGS = "follow_logs"  #: :meth:`RunHandle.logs` shows the log while the run goes
    OUTPUTS = "outputs"  #: :meth:`RunHandle.fetch_outputs` brings ``outputs/`` back
    DOCKER = "docker"  #: runs execute in containers built from the env
    GPU = "gpu"  #: runs can be given GPUs (``gpus:`` in the target and env)
    VENV = "venv"  #: envs become virtualenvs on the target
    REMOTE = "remote"  #: runs execute on another machine than the client's
    #: :meth:`Backend.submit_many` starts many runs as one submission (a Slurm job array),
    #: with the target itself keeping at most ``max_parallel`` of them running
    ARRAY = "array"


#: Every capability there is (the values of :class:`Capability`).
CAPABILITIES = frozenset(Capability)


class RunState(enum.StrEnum):
    """Where a run is in its life. The last four are terminal: a run never leaves them."""

    QUEUED = "QUEUED"  #: recorded, not yet handed to the backend
    PREPARING = "PREPARING"  #: the environment is being made ready
    RUNNING = "RUNNING"  #: the worker has started on the target
    SUCCEEDED = "SUCCEEDED"  #: the worker finished with exit code 0
    FAILED = "FAILED"  #: the worker (or the model/script it ran) failed; see the exit code
    CANCELLED = "CANCELLED"  #: stopped on request; nothing of it is left running
    LOST = "LOST"  #: the worker vanished without a final status (host gone, process killed)

    @property
    def terminal(self) -> bool:
        """True for states a run never leaves."""
        return self in _TERMINAL


_TERMINAL = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.LOST})


@dataclass(frozen=True)
class RunStatus:
    """The truth about a run at one moment, as the backend observed it."""

    state: RunState  #: where the run is
    exit_code: int | None = None  #: the worker's exit code once it ended (None while running/unknown)
    oom: bool = False  #: True when the run was killed for exceeding its memory limit
    message: str = ""  #: one human line explaining a failure, a loss or a cancel

    @property
    def terminal(self) -> bool:
        """True once the run has ended, whichever way."""
        return self.state.terminal

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the format of ``status.json`` in the run directory)."""
        return {
            "state": self.state.value,
            "exit_code": self.exit_code,
            "oom": self.oom,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunStatus:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        return cls(
            state=RunState(data["state"]),
            exit_code=data.get("exit_code"),
            oom=bool(data.get("oom", False)),
            message=str(data.get("message", "")),
        )


@dataclass(frozen=True)
class EnvSpec:
    """An environment, as composed from ``conf/env/NAME.yaml``.

    Backends interpret what applies to them: the local backend makes a virtualenv from
    ``python`` and ``requirements``; Docker backends build an image from ``base_image``,
    ``apt`` and ``requirements``. ``name == "current"`` with no requirements means "the
    interpreter that runs the client, nothing to build".
    """

    name: str  #: the env's config name (``env=NAME``)
    python: str | None = None  #: wanted Python version ("3.11"); None = whatever is there
    requirements: tuple[str, ...] = ()  #: pip requirement lines; ``-r FILE`` lines allowed
    base_image: str | None = None  #: Docker base image (Docker backends only)
    apt: tuple[str, ...] = ()  #: Debian packages to install (Docker backends only)
    gpus: str | None = None  #: GPUs the env needs: None, "all" or "0,1"
    require_gpu: bool = False  #: fail the run at once when no GPU is visible
    root: Path | None = None  #: directory that relative ``-r`` files are resolved against
    extra: Mapping[str, Any] = field(default_factory=dict)  #: keys meant for one backend only

    @property
    def is_current(self) -> bool:
        """True when nothing needs to be built: the client's own interpreter runs the worker."""
        return not self.requirements and self.python is None and self.base_image is None


@dataclass(frozen=True)
class RunSpec:
    """Everything a backend needs to prepare and start one run."""

    run_id: str  #: the ledger's id of the run
    run_dir: Path  #: the local run directory (the protocol; see :mod:`runner.rundir`)
    target_name: str  #: the target's config name (``target=NAME``)
    target: Any  #: the target config, an instance of the backend's ``Config`` schema
    env: EnvSpec  #: the environment to run in
    model: str  #: the registered model plugin's name
    project_root: Path  #: the user's project (where ``.runner/`` and ``conf/`` live)
    gpus: str | None = None  #: GPUs to give this run (a sweep slot may narrow the target's)
    labels: Mapping[str, str] = field(default_factory=dict)  #: e.g. sweep id, job number
    #: what the worker will run: model, config, seed, GPUs, secret references, code manifest
    #: and the data inputs to stage (see :mod:`runner.request`); None only for ``prepare``
    request: RunRequest | None = None

    @property
    def data_inputs(self) -> tuple[DataInput, ...]:
        """The files and folders the run reads (empty without a request)."""
        return self.request.data_inputs if self.request is not None else ()


@dataclass(frozen=True)
class Prepared:
    """The result of :meth:`Backend.prepare`: a ready environment and why it was (not) cached."""

    env_key: str  #: content key of the environment (the same inputs give the same key)
    cached: bool  #: True when nothing had to be built
    reason: str  #: one line: "cached", or which input changed since the closest cached env
    details: Mapping[str, Any] = field(default_factory=dict)  #: backend-specific (venv path, image id)


@dataclass
class BackendConfig:
    """Keys every target file has. Backends subclass this with their own fields."""

    backend: str = "local"  #: the registered backend that runs this target
    slots: int = 1  #: how many runs may execute on the target at once
    gpus: str | None = None  #: GPUs the target offers: None, "all" or "0,1,2,3"
    max_data_mb: float | None = None  #: refuse runs whose data is larger (MiB); None = no limit
    retries: int = 0  #: start a run that ended LOST again, from its checkpoint, this many times
    retry_oom: bool = False  #: retry an OOM-killed run too
    retry_backoff: float = 5.0  #: seconds before the first retry; doubled for each next one


class RunHandle(ABC):
    """A started run, observed and controlled from the client.

    A handle can be re-created in another process from :attr:`locator` (see
    :meth:`Backend.reattach`), so ``runner logs -f`` or ``runner cancel`` work from any shell.
    """

    #: seconds between polls in the default :meth:`wait`
    poll_interval: ClassVar[float] = 0.2
    #: seconds :meth:`cancel` gives the run between the stop signal (SIGTERM) and a kill;
    #: handles take it from their target's ``cancel_grace``; the contract suite lowers it
    grace: float = 10.0

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    @property
    @abstractmethod
    def locator(self) -> dict[str, Any]:
        """JSON-ready facts that :meth:`Backend.reattach` needs (a PID, a container id, a host)."""

    @abstractmethod
    def status(self) -> RunStatus:
        """Ask the target where the run is now. Never blocks for long; never raises for a
        vanished run (that is :attr:`RunState.LOST`)."""

    def wait(self, timeout: float | None = None) -> RunStatus:
        """Block until the run ends or ``timeout`` seconds pass; return the last status seen."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status()
            if st.terminal or (deadline is not None and time.monotonic() >= deadline):
                return st
            time.sleep(self.poll_interval)

    @abstractmethod
    def cancel(self) -> RunStatus:
        """Stop the run and verify nothing of it is left running; return the final status.

        Idempotent: cancelling an ended run changes nothing and returns its status.
        """

    @abstractmethod
    def logs(self, offset: int = 0) -> Iterator[tuple[int, str]]:
        """Yield ``(next_offset, text)`` for what the log holds past byte ``offset``.

        ``next_offset`` is the byte offset just after ``text``: a client that stores it can
        resume later (after a dropped connection, from another process) without losing or
        repeating anything. Yields only what is there now; callers poll to follow.
        """

    @abstractmethod
    def fetch_outputs(self, dest: Path) -> None:
        """Bring the run directory's results (status, metrics, outputs, log) into ``dest``.

        A no-op for backends whose run directory already is ``dest``.
        """


@dataclass(frozen=True)
class Check:
    """One line of ``runner doctor TARGET``."""

    name: str  #: what was checked ("ssh", "docker permission", "gpu")
    ok: bool  #: whether it passed
    detail: str = ""  #: what was seen
    fix: str = ""  #: what to do when it failed


@dataclass(frozen=True)
class Command:
    """A ``runner`` subcommand contributed by a plugin (``runner_register_commands``)."""

    name: str  #: ``runner NAME``
    help: str  #: one line for ``runner --help``
    add_arguments: Callable[[Any], None]  #: gets the subcommand's argparse parser
    #: gets the parsed arguments, with ``args.context`` (a :class:`runner.commands.CommandContext`:
    #: the ledger and plugins the CLI loaded, ``debug``, output); returns the exit code
    run: Callable[[Any], int]


class Backend(ABC):
    """A kind of compute target. Subclasses are registered with ``runner_register_backends``."""

    name: ClassVar[str]  #: what ``backend:`` in a target file selects
    Config: ClassVar[type[BackendConfig]] = BackendConfig  #: the target file's schema
    capabilities: ClassVar[frozenset[Capability]] = frozenset()  #: what it can do (validated)

    def __init__(self, config: BackendConfig) -> None:
        self.config = config

    @abstractmethod
    def prepare(self, spec: RunSpec) -> Prepared:
        """Make ``spec.env`` ready on the target. Idempotent; a cache hit costs almost nothing
        and says so; a miss says which input changed."""

    @abstractmethod
    def submit(self, spec: RunSpec, prepared: Prepared) -> RunHandle:
        """Start the worker on the run directory, detached, and return at once."""

    def submit_many(self, items: Sequence[tuple[RunSpec, Prepared]], max_parallel: int | None
                    ) -> list[RunHandle]:
        """Start several prepared runs (the jobs of a sweep on this target) and return their
        handles, in the order given, at once.

        The default submits them one by one. Backends that declare :attr:`Capability.ARRAY`
        submit them together (one job array) and let the target run at most
        ``max_parallel`` at once (None = no limit); a sweep then hands them all over at once
        instead of waiting for free slots.
        """
        return [self.submit(spec, prepared) for spec, prepared in items]

    def doctor(self) -> list[Check]:
        """Check that the target can run work (``runner doctor TARGET``): connectivity,
        permissions, disk, GPUs. Each failed :class:`Check` says how to fix it."""
        return []

    def check_data(self, spec: RunSpec) -> None:
        """Check, before the environment is prepared, that the data the run reads from the
        target itself (inputs with ``on_target``) is there and readable; raise
        :class:`runner.errors.UserError` naming the path when it is not.

        The default checks on this machine, which is right for targets that run here. Data
        that travels with the run (the other inputs) is the backend's to stage in
        :meth:`submit`: in place, mounted read-only, or copied by content, with
        ``RUNNER_STAGED_DATA`` (:data:`runner.request.DATA_DIR_ENV`) set for the worker.
        """
        from runner.data import check_on_this_machine

        check_on_this_machine(spec.data_inputs, "this machine")

    def gpu_devices(self) -> list[str] | None:
        """The target's GPUs, one id per device, so that a sweep can give each job its own
        (``CUDA_VISIBLE_DEVICES`` / ``--gpus device=``); None when there are none or they
        cannot be told apart (the jobs then share what ``gpus`` says).

        The default reads ``gpus:`` of the target: a list ("0,1") is taken as it is, and
        "all" is counted with ``nvidia-smi -L`` on this machine, which is right for targets
        that run here. Backends whose GPUs are elsewhere override it (ask the host, or return
        None and let the cluster's scheduler place the jobs).
        """
        from runner.gpus import device_ids, local_gpu_count

        return device_ids(getattr(self.config, "gpus", None), local_gpu_count)

    @abstractmethod
    def reattach(self, run_id: str, run_dir: Path, locator: Mapping[str, Any]) -> RunHandle:
        """Re-create the handle of a run started earlier (possibly by another process)."""
