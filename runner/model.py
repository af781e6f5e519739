"""The model contract: what the worker calls on the target.

A *model plugin* is a class registered through the ``runner_register_models`` hook. The
``model=NAME`` config group selects it by name; the keys of ``conf/model/NAME.yaml`` (all but
``name``) are validated against its :attr:`Model.Config` dataclass on the client, and the
worker builds that dataclass from the run directory and passes it to :meth:`Model.run`.

Models run inside the worker process on the target. Import heavy frameworks (TensorFlow,
Keras, PyTorch) inside :meth:`Model.run`, never at module level: the CLI loads every plugin
module, and ``runner --help`` must stay fast.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

__all__ = ["Model", "RunContext", "ModelError"]


class ModelError(Exception):
    """A model's way to fail a run with one clear line and no traceback in the log."""


class RunContext(Protocol):
    """What a running model can see and record. Built by the worker for one run."""

    run_id: str  #: the ledger's id of the run
    run_dir: Path  #: the run directory on the target
    work_dir: Path  #: where the project's code snapshot is (the working directory)
    outputs_dir: Path  #: put every artifact here; it comes back to the client
    #: save what the model needs to continue here (weights, optimizer state, epoch). It
    #: exists and is empty for a new run; ``runner resume`` (and a retry) start the new run
    #: with the parent's copy in it, so a model that finds a checkpoint here continues from it
    #: (scripts: ``$RUNNER_CHECKPOINT_DIR``)
    checkpoint_dir: Path
    seed: int  #: the seed the worker gave Python's, NumPy's and the framework's RNGs
    #: the composed ``data`` config (plain values); the keys the model declared in
    #: :attr:`Model.data_paths` hold the in-target path of the data the run shipped
    data: Mapping[str, Any]
    env: Mapping[str, Any]  #: the composed ``env`` config (plain values)
    gpus: str | None  #: GPUs given to this run (None = none requested)

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        """Record a metric now (appended to ``metrics.jsonl``; visible to ``runner show``)."""

    def set_meta(self, key: str, value: Any) -> None:
        """Record a fact about the run (the device that trains it, dataset sizes)."""

    @property
    def stop_requested(self) -> bool:
        """True once the run was asked to stop (a cancel, a time limit): a model with
        :attr:`Model.graceful_stop` saves a checkpoint and returns soon after (at the next
        batch or step). The backend kills the run after the target's ``cancel_grace``."""

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in the worker's main thread, from the signal handler) when the
        stop signal arrives; keep it short (set a flag, forward the signal to a child)."""


class Model(ABC):
    """A registered model. One instance runs one run."""

    name: ClassVar[str]  #: what ``model=`` (and the ``name`` key of the model config) selects
    Config: ClassVar[type]  #: a dataclass: the schema of ``conf/model/NAME.yaml``
    #: Extras the model needs on the target, shown in errors when its import fails.
    requires: ClassVar[tuple[str, ...]] = ()
    #: True when the model runs its work in a child process (the worker then seeds only
    #: through ``RUNNER_SEED``/``PYTHONHASHSEED`` instead of importing NumPy to seed it)
    runs_in_subprocess: ClassVar[bool] = False
    #: Keys of the ``data`` config that name a file or folder the run reads, with what each
    #: must be: ``"file"``, ``"dir"`` or ``"any"``. The runner resolves them against the
    #: user's working directory, checks and hashes them on the client, stages them on the
    #: target, and hands the model the in-target path in ``ctx.data[KEY]``.
    data_paths: ClassVar[Mapping[str, str]] = {"path": "any"}
    #: False when the model reads nothing of the ``data`` config but the paths of
    #: :attr:`data_paths` (a user's script): a run that was given none has no data, whatever
    #: the default data choice, and ``runner show`` says so
    reads_data_config: ClassVar[bool] = True
    #: True when the model stops by itself on the stop signal (SIGTERM from a cancel): the
    #: worker then sets :attr:`RunContext.stop_requested` instead of interrupting
    #: :meth:`run`, and the model saves a checkpoint in :attr:`RunContext.checkpoint_dir` and
    #: returns (the run is recorded CANCELLED). False: the run is interrupted at once.
    graceful_stop: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        self.config = config

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Model:
        """Build the model from plain config values (what the worker reads)."""
        names = {f.name for f in dataclasses.fields(cls.Config)}
        return cls(cls.Config(**{k: v for k, v in values.items() if k in names}))

    def validate(self, project_root: Path, data: dict[str, Any]) -> None:  # noqa: B027
        """Check the model config and the ``data`` config on the client, before anything is
        submitted (a missing script, an unknown data key). Raise
        :class:`runner.errors.UserError` with a clear message. Runs on the client, which may
        lack the model's framework: import nothing heavy here. Paths named in
        :attr:`data_paths` need no checks here (the runner checks and stages them)."""

    def describe(self) -> str:
        """One line for tables (``runner runs``): the model and its key setting."""
        return self.name

    @classmethod
    def predict(cls, outputs_dir: Path, inputs: list[str]) -> list[Any]:
        """Score ``inputs`` with what a finished run of this model left in ``outputs_dir``
        (``runner predict RUN ...``). Models that cannot predict keep this default."""
        from runner.errors import UserError

        raise UserError(f"model '{cls.name}' does not support predict.")

    @classmethod
    def format_prediction(cls, value: Any) -> str:
        """One prediction as ``runner predict`` prints it before its input (models that know
        what their numbers mean say so: a score and a label)."""
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    @abstractmethod
    def run(self, ctx: RunContext) -> int:
        """Train/evaluate/run. Return the exit code (0 = success).

        Raise :class:`ModelError` for an expected failure (one line, no traceback).
        """
