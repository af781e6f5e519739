"""A user's own ``@hydra.main`` app, swept on a target: each job of the sweep becomes a run.

``python train.py -m hydra/launcher=runner hydra.launcher.target=gpubox lr=0.1,0.01``: the
``runner`` launcher hands each batch of jobs the app's sweeper makes to :class:`AppSweep`,
which records every job in the project's ledger as a run of the ``hydra_job`` model (one
runner sweep for the whole multirun), ships the job (task function, composed config, Hydra's
state) as the run's data, runs it through the target's backend with the sweep's slots, GPUs,
log streaming and Ctrl-C handling, and gives each job's return value back to the sweeper.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runner.errors import UserError


class AppSweep:
    """The runs of one multirun of a Hydra app (every batch its sweeper launches)."""

    def __init__(self, *, target: str, env: str | None, overrides: Sequence[str],
                 max_parallel: int, objective: str | None, show_logs: bool, poll: float) -> None:
        from runner.launch import Runs
        from runner.sweep import Sweep

        self.runs = Runs()
        self.target = target
        self.env = env
        self.extra = list(overrides)
        self.sweep = Sweep(self.runs, max_parallel=max_parallel or None, objective=objective,
                           show_logs=show_logs, poll=poll, argv=sys.argv[1:])
        self.folder = self.runs.store.home / "hydra-jobs" / secrets.token_hex(4)
        root = self.runs.project_root.resolve()
        # the app's script, as `python train.py` ran it: its folder comes first on sys.path
        script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else root
        self.app: str | None = None
        if script.is_file() and script.suffix == ".py" and script.is_relative_to(root):
            self.app = script.relative_to(root).as_posix()
        self._base: Any = None  # the runner's config of the jobs (see _composed)
        cwd = Path.cwd().resolve()
        self.cwd = cwd.relative_to(root).as_posix() if cwd.is_relative_to(root) and cwd != root \
            else ""

    def launch(self, configs: Sequence[Any], task_function: Any, hydra_context: Any,
               singleton_state: Any) -> list[Any]:
        """Run one batch: ``configs`` are the jobs' composed configs (``hydra`` included);
        returns Hydra's JobReturn of each, in order."""
        import copy
        import os

        from hydra.core.hydra_config import HydraConfig
        from omegaconf import open_dict, read_write

        from runner.models.hydra_job import JobPayload

        self.folder.mkdir(parents=True, exist_ok=True)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        jobs, items = [], []
        original = HydraConfig.instance().cfg
        try:
            for cfg in configs:
                num = int(cfg.hydra.job.num)
                payload = JobPayload(task_function=task_function, config=cfg,
                                     hydra_context=hydra_context,
                                     singleton_state=singleton_state, python=version,
                                     shared_dir=os.path.abspath(str(cfg.hydra.sweep.dir)))
                path = self.folder / f"job-{num}.pkl"
                _dump(payload, path)
                composed = self._composed(task_function, version)
                job_cfg = copy.deepcopy(composed.cfg)
                with read_write(job_cfg), open_dict(job_cfg):
                    job_cfg.data.payload = str(path)
                task_cfg = copy.deepcopy(cfg)
                with read_write(task_cfg), open_dict(task_cfg):
                    del task_cfg["hydra"]
                overrides = list(cfg.hydra.overrides.task)
                HydraConfig.instance().set_config(cfg)
                jobs.append(self.sweep.add(num, job_cfg, overrides, composed.choices))
                items.append((cfg, task_cfg))
        finally:
            HydraConfig.instance().cfg = original  # type: ignore[assignment]
        self.sweep.run(jobs)
        return [self._returned(job, cfg, task_cfg) for job, (cfg, task_cfg) in
                zip(jobs, items, strict=True)]

    def _composed(self, task_function: Any, version: str) -> Any:
        """The runner's config of the app's jobs, composed once (Hydra's global state is set
        aside for it, which costs a plugin scan); each job then only names its payload."""
        from runner.compose import compose_aside, quoted

        if self._base is None:
            self._base = compose_aside([
                f"target={self.target}", *([f"env={self.env}"] if self.env else []),
                "model=hydra_job", f"model.app={quoted(self.app or _name(task_function))}",
                f"model.client_python={version}", f"model.cwd={quoted(self.cwd)}", "~data",
                "+data.payload=", *self.extra], self.runs)
        return self._base

    def _returned(self, job: Any, cfg: Any, task_cfg: Any) -> Any:
        """The job's JobReturn as the target wrote it; a failure of the run when there is
        none (the job never ran, or the run was cancelled or lost)."""
        import os

        from hydra.core.utils import JobReturn, JobStatus

        from runner.models.hydra_job import RETURN_FILE
        from runner.rundir import RunDir

        ret = None
        if job.run_id is not None:
            path = RunDir(self.runs.store.get(job.run_id).run_dir).outputs / RETURN_FILE
            if not path.is_file():
                _fetch(job, path)
            if path.is_file():
                import cloudpickle

                try:
                    ret = cloudpickle.loads(path.read_bytes())
                except Exception as e:
                    print(f"warning: run {job.run_id}: cannot read the job's return value: {e}",
                          file=sys.stderr)
        if ret is None:
            ret = JobReturn(overrides=list(cfg.hydra.overrides.task), cfg=task_cfg,
                            hydra_cfg=cfg, working_dir=os.getcwd(),
                            task_name=str(cfg.hydra.job.name))
            st = job.status
            why = f": {st.message}" if st is not None and st.message else ""
            ret.return_value = RuntimeError(f"job {job.num}: run {job.run_id} {job.state}{why}")
            ret.status = JobStatus.FAILED
        return ret

    def finish(self) -> None:
        """The table of every job the multirun ran, once its sweeper is done, and what an
        optimizing sweeper found."""
        self.sweep.print_table()
        self.sweep.report_optimum()


def _name(task_function: Any) -> str:
    """What the ledger calls an app that is not a script of the project (a function of an
    installed package, as Hydra's own test apps are)."""
    fn = getattr(task_function, "__wrapped__", task_function)
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{module}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def _dump(payload: Any, path: Path) -> None:
    import cloudpickle

    # Hydra's state names the config classes of every Hydra plugin installed here (sweepers,
    # launchers) that the target's env need not have: those travel by value
    for name, module in list(sys.modules.items()):
        if name.startswith("hydra_plugins.") and module is not None:
            cloudpickle.register_pickle_by_value(module)

    try:
        blob = cloudpickle.dumps(payload)
    except Exception as e:
        raise UserError(f"the Hydra app's job cannot be shipped to a target: {e}",
                        "the task function and its config must be picklable (cloudpickle); "
                        "module-level functions and plain configs are.") from None
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)


def _fetch(job: Any, path: Path) -> None:
    """Bring a run's outputs here when its return file is not here yet (a backend that keeps
    them on the target until asked)."""
    import tempfile

    from runner.backend import Capability

    if job.handle is None or job.plan is None \
            or Capability.OUTPUTS not in job.plan.backend.capabilities:
        return
    try:
        with tempfile.TemporaryDirectory() as tmp:
            job.handle.fetch_outputs(Path(tmp))
            got = Path(tmp) / path.name
            if got.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(got.read_bytes())
    except Exception as e:
        print(f"warning: cannot fetch the outputs of run {job.run_id}: {e}", file=sys.stderr)
