"""A recorded run as the outside viewers read it (the MLflow mirror, plots, TensorBoard).

:func:`read_run` turns a ledger row and its run directory into a :class:`RecordedRun`: the
flattened config with secrets masked, every metric point with its step, and the facts that
become tags (target, env, git, GPUs, sweep). :func:`select` turns what a user typed
(``RUN...``, ``--sweep S``, ``--all``) into ledger rows, with one clear error when it names
nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import UserError

if TYPE_CHECKING:
    from runner.launch import Runs
    from runner.store import RunRecord


@dataclass(frozen=True)
class MetricPoint:
    """One logged value of one metric."""

    name: str
    value: float
    step: int  #: the step the run gave, else the value's position among that metric's values
    time: float  #: when it was logged (epoch seconds)


@dataclass(frozen=True)
class RecordedRun:
    """What a run recorded, ready to be shown elsewhere. Nothing here holds a secret value."""

    record: RunRecord
    params: Mapping[str, str]  #: the config as ``{"model.lr": "0.1"}``, secrets masked
    metrics: tuple[MetricPoint, ...]  #: every point, in the order logged
    overrides: Mapping[str, str]  #: the run's command-line overrides, ``{"model.lr": "0.1"}``
    env: str  #: the env group choice (``env=NAME``)
    git_commit: str | None  #: the project's commit at submit, if it is a git repository
    git_dirty: bool  #: uncommitted changes were recorded with the run
    gpus: tuple[str, ...]  #: the GPUs the worker saw, as ``"0: NAME (MEMORY)"``
    outputs: Path  #: the run's outputs folder (on this machine)
    run_dir: Path = field(repr=False, default=Path())

    @property
    def id(self) -> str:
        return self.record.id

    def metric_names(self) -> list[str]:
        """The metrics the run logged, in the order they first appeared."""
        return list(dict.fromkeys(m.name for m in self.metrics))

    def series(self, name: str) -> list[tuple[int, float]]:
        """``[(step, value)]`` of one metric, by step."""
        return sorted((m.step, m.value) for m in self.metrics if m.name == name)


def read_run(rec: RunRecord) -> RecordedRun:
    """The run ``rec`` as recorded in its directory."""
    import yaml

    from runner.rundir import CONFIG, RunDir
    from runner.secrets import env_refs, env_values, mask_values, redact
    from runner.views import flatten, override_values

    rd = RunDir(rec.run_dir)
    meta, worker = rd.meta(), rd.worker_info()
    try:
        config = yaml.safe_load((rd.path / CONFIG).read_text()) or {}
    except (FileNotFoundError, yaml.YAMLError):
        config = {}
    # config.yaml is written redacted; masking again costs nothing and guards older runs
    hidden = env_values(env_refs(config), os.environ).values()
    safe = mask_values(redact(config), hidden)
    params = {k: "" if v is None else str(v) for k, v in flatten(safe).items()}
    git = meta.get("git") or {}
    gpus = tuple(f"{g.get('index')}: {g.get('name')} ({g.get('memory')})"
                 for g in worker.get("gpus") or [])
    return RecordedRun(
        record=rec, params=params, metrics=metric_points(rd.read_metrics(), rec.created),
        overrides=mask_values(override_values(meta.get("overrides") or []), hidden),
        env=str((meta.get("choices") or {}).get("env", "")),
        git_commit=git.get("commit") or None, git_dirty=bool(git.get("dirty")),
        gpus=gpus, outputs=rd.outputs, run_dir=rd.path)


def metric_points(records: Sequence[Mapping[str, Any]], created: float) -> tuple[MetricPoint, ...]:
    """The records of ``metrics.jsonl`` (:meth:`runner.rundir.RunDir.read_metrics`) as
    points; a value logged without a step gets its position among that metric's values."""
    counts: dict[str, int] = {}
    points = []
    for m in records:
        name = str(m.get("name"))
        n = counts.get(name, 0)
        counts[name] = n + 1
        step = m.get("step")
        points.append(MetricPoint(name, float(m.get("value", 0.0)),
                                  int(step) if isinstance(step, int | float) else n,
                                  float(m.get("time") or created)))
    return tuple(points)


def select(runs: Runs, refs: Sequence[str], *, sweep: str | None = None, every: bool = False,
           command: str = "runner") -> list[RunRecord]:
    """The ledger rows a user named: run ids (or unique prefixes), a sweep's runs (the newest
    run of each job), or every run (``every``), oldest first."""
    if bool(refs) + bool(sweep) + bool(every) != 1:
        raise UserError(f"{command} needs run ids, --sweep SWEEP or --all (one of them).",
                        f"e.g. {command} 261126-1200-ab12, or {command} --sweep s261126-1200-ab12",
                        "`runner runs` lists the runs.")
    if sweep:
        from runner.sweep import sweep_jobs

        records = [j.run for j in sweep_jobs(runs, sweep) if j.run is not None]
        if not records:
            raise UserError(f"sweep '{sweep}' has no runs yet.", f"`runner sweep {sweep}` shows its jobs.")
        return records
    if every:
        records = runs.store.list()
        if not records:
            raise UserError(f"no runs in the ledger at {runs.store.home}.",
                            "`runner submit` starts one.")
        return records[::-1]
    return [runs.store.resolve(r) for r in dict.fromkeys(refs)]


def swept_values(recorded: Sequence[RecordedRun], swept: Sequence[str] | None = None
                 ) -> list[dict[str, str]]:
    """Each run's values of the keys that differ between the runs' overrides (or of
    ``swept``): what tells the runs of a sweep apart."""
    keys = list(swept) if swept is not None else sorted(
        {k for r in recorded for k in r.overrides
         if len({r2.overrides.get(k) for r2 in recorded}) > 1})
    return [{k: r.overrides.get(k, r.params.get(k, "-")) for k in keys} for r in recorded]


def label(run: RecordedRun, values: Mapping[str, Any]) -> str:
    """A run's name in a legend: its id and what sets it apart."""
    extra = ", ".join(f"{k}={v}" for k, v in values.items())
    return f"{run.id} ({extra})" if extra else run.id
