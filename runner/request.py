"""The run request: what the client asks a target to run, typed and frozen.

A :class:`RunRequest` is computed once per run on the client (:meth:`runner.launch.Runs.record`),
carried to the backend on :attr:`runner.backend.RunSpec.request`, and written to the run
directory as ``request.json`` for the worker. Backends read it from the spec, never from disk.

Data travels with the run as :class:`DataInput` values: each names one key of the ``data``
config that a model declared as a path (:attr:`runner.model.Model.data_paths`), where the
content lies on the client, and its content digest. A backend makes each input available on
the target (in place, a read-only mount, a copy in a content store) and tells the worker where
through :data:`DATA_DIR_ENV`; the worker then gives the model the in-target path. An input
marked :attr:`DataInput.on_target` already lies on the target and is never shipped.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DataInput", "DataKind", "RunRequest", "DATA_DIR_ENV", "TARGET_PREFIX"]

#: The environment variable a backend sets in the worker's environment when it staged the
#: run's data inputs under one folder: input ``KEY`` is the folder ``$RUNNER_STAGED_DATA/KEY``
#: (a folder input's content, or a file input under its own name). Unset: inputs are read in
#: place, at :attr:`DataInput.source`.
DATA_DIR_ENV = "RUNNER_STAGED_DATA"

#: A data path written ``target:/abs/path`` lies on the target already and is never shipped.
TARGET_PREFIX = "target:"


class DataKind(enum.StrEnum):
    """What a data input is on disk."""

    FILE = "file"  #: one file (an archive, an ``.npz``, a CSV)
    DIR = "dir"  #: a folder, shipped with everything under it


@dataclass(frozen=True)
class DataInput:
    """One file or folder the run reads, declared by the model and staged by the backend.

    ``manifest`` lists the files by content (``relative path -> (sha256, size)``; a file input
    lists itself under its own name). It is the shipping list of backends that copy by content;
    it is not written into ``request.json`` (a dataset may hold 50,000 files).
    """

    key: str  #: the ``data`` config key it fills (``path``, ``word_index``)
    given: str  #: the value as the user wrote it (relative to their working directory)
    kind: DataKind  #: file or folder
    source: str  #: absolute path: on the client, or on the target when ``on_target``
    on_target: bool = False  #: True for ``target:/path`` data that lies on the target already
    digest: str | None = None  #: sha256 over the manifest (None for on-target data)
    files: int = 0  #: number of files
    bytes: int = 0  #: total size in bytes
    manifest: Mapping[str, tuple[str, int]] = field(default_factory=dict, compare=False,
                                                    repr=False)

    @property
    def name(self) -> str:
        """The file or folder's own name (a file input keeps it on the target)."""
        return self.source.rstrip("/").rsplit("/", 1)[-1]

    def target_path(self, data_dir: str | None) -> str:
        """Where the worker finds the input, given the staging folder (None: in place)."""
        if self.on_target or data_dir is None:
            return self.source
        where = f"{data_dir.rstrip('/')}/{self.key}"
        return where if self.kind is DataKind.DIR else f"{where}/{self.name}"

    def record(self) -> dict[str, Any]:
        """The JSON-ready facts kept with the run (everything but the manifest)."""
        return {"key": self.key, "given": self.given, "kind": self.kind.value,
                "source": self.source, "on_target": self.on_target, "digest": self.digest,
                "files": self.files, "bytes": self.bytes}

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> DataInput:
        """Inverse of :meth:`record` (the manifest stays empty)."""
        return cls(key=str(data["key"]), given=str(data["given"]), kind=DataKind(data["kind"]),
                   source=str(data["source"]), on_target=bool(data.get("on_target")),
                   digest=data.get("digest"), files=int(data.get("files") or 0),
                   bytes=int(data.get("bytes") or 0))


@dataclass(frozen=True)
class RunRequest:
    """Everything the worker needs to execute one run; ``request.json`` is its JSON form."""

    run_id: str  #: the ledger's id of the run
    model: str  #: the registered model plugin's name
    model_config: Mapping[str, Any]  #: the model's config values (env values as ``${oc.env:}``)
    data: Mapping[str, Any] = field(default_factory=dict)  #: the ``data`` config, paths as given
    data_inputs: tuple[DataInput, ...] = ()  #: the files and folders the run reads
    env: Mapping[str, Any] = field(default_factory=dict)  #: the ``env`` config values
    seed: int = 0  #: seeds Python's, NumPy's and the framework's RNGs
    gpus: str | None = None  #: GPUs given to the run: None, "all" or "0,1"
    require_gpu: bool = False  #: fail at once when no GPU is visible
    #: variables whose values the target must receive (every ``${oc.env:VAR}`` in the config
    #: values above); the worker masks their values in what it writes
    secret_env: tuple[str, ...] = ()
    #: ``{path: [sha256, size, mode]}`` of the code snapshot (None: not a snapshot of ours)
    code_manifest: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def with_gpus(self, gpus: str | None) -> RunRequest:
        """The same request for another GPU set (a sweep slot narrows the target's)."""
        return dataclasses.replace(self, gpus=gpus)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written as ``request.json`` (no manifests: they stay with the client).

        Secrets travel by name: wherever the value of a :attr:`secret_env` variable (as this
        process's environment sets it) appears, it is written as ``${oc.env:VAR}``, which the
        worker resolves from its own environment (see :func:`runner.secrets.to_references`).
        """
        from runner.secrets import env_values, to_references

        body = to_references({
            "model_config": dict(self.model_config), "data": dict(self.data),
            "data_inputs": [d.record() for d in self.data_inputs], "env": dict(self.env),
        }, env_values(self.secret_env))
        return {
            "run_id": self.run_id, "model": self.model, **body, "seed": self.seed,
            "gpus": self.gpus, "require_gpu": self.require_gpu,
            "secret_env": list(self.secret_env),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRequest:
        """Read ``request.json``; a missing or malformed field raises ``ValueError``."""
        try:
            return cls(
                run_id=str(data["run_id"]), model=str(data["model"]),
                model_config=dict(data.get("model_config") or {}),
                data=dict(data.get("data") or {}),
                data_inputs=tuple(DataInput.from_record(d) for d in data.get("data_inputs") or []),
                env=dict(data.get("env") or {}), seed=int(data.get("seed") or 0),
                gpus=None if data.get("gpus") is None else str(data["gpus"]),
                require_gpu=bool(data.get("require_gpu")),
                secret_env=tuple(str(s) for s in data.get("secret_env") or []),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed run request: {e}") from None
