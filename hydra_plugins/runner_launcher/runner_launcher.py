"""The ``runner`` Hydra launcher: fans a sweep's jobs out to the selected target at once.

Selected by ``conf/config.yaml`` (``override hydra/launcher: runner``), so ``runner submit -m``
uses it with any sweeper (Hydra's basic grid sweeper, the Optuna sweeper, ...). Each batch of
jobs a sweeper hands over is composed here, recorded in the ledger and submitted detached
through the target's backend by :class:`runner.sweep.Sweep`, which also waits for them; each
job's result goes back to the sweeper (the ``objective`` metric, for optimizing sweepers).

Under a user's own ``@hydra.main`` app (``python train.py -m hydra/launcher=runner
hydra.launcher.target=gpubox lr=0.1,0.01``) each job becomes a run on the target named by
``hydra.launcher.target`` (default ``local``), recorded in the project's ledger: the task
function and the job's config travel with the run, Hydra's own ``run_job`` calls it there,
and its return value comes back to the sweeper (see :mod:`runner.sweep.app`).
"""

# No `from __future__ import annotations` here: Hydra's plugin scan executes this module
# before it is in sys.modules, and dataclasses then cannot resolve string annotations.
import atexit
import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict, read_write

log = logging.getLogger(__name__)

#: the attribute of the task function that carries the :class:`runner.sweep.Sweep`
SESSION_ATTR = "runner_sweep"


@dataclass
class RunnerLauncherConf:
    """``hydra.launcher.*`` keys (set them on the command line or in your config's ``hydra:``)."""

    _target_: str = "hydra_plugins.runner_launcher.runner_launcher.RunnerLauncher"
    max_parallel: int = 0  # jobs running at once over all targets; 0 = as many as the slots allow
    objective: str | None = None  # metric returned to the sweeper (Optuna optimizes it)
    show_logs: bool = True  # print every job's log, each line prefixed by [job N]
    poll: float = 0.1  # seconds between looks at the jobs (at least the backend's own interval)
    # under your own @hydra.main app: where and with what its jobs run
    target: str = "local"  # the runner target (conf/target/NAME.yaml, or one `runner attach` made)
    env: str | None = None  # the runner env (conf/env/NAME.yaml); None = the default (current)
    overrides: list[str] = field(default_factory=list)  # more runner overrides: [target.gpus=1]


ConfigStore.instance().store(group="hydra/launcher", name="runner", node=RunnerLauncherConf,
                             provider="runner")


class RunnerLauncher(Launcher):
    """Hands each batch of jobs to the runner's sweep session; see the module docstring."""

    def __init__(self, max_parallel: int = 0, objective: str | None = None,
                 show_logs: bool = True, poll: float = 0.1, target: str = "local",
                 env: str | None = None, overrides: Sequence[str] | None = None) -> None:
        self.max_parallel = max_parallel
        self.objective = objective
        self.show_logs = show_logs
        self.poll = poll
        self.target = target
        self.env = env
        self.overrides = list(overrides or [])
        self.app: Any = None  # the runs of a user's own app's multirun (runner.sweep.app)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        session = getattr(task_function, SESSION_ATTR, None)
        if session is not None:
            session.configure(max_parallel=self.max_parallel, objective=self.objective,
                              show_logs=self.show_logs, poll=self.poll,
                              hydra_dir=Path(os.path.abspath(str(config.hydra.sweep.dir))))

    def _job_config(self, overrides: Sequence[str], idx: int) -> DictConfig:
        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = idx
            cfg.hydra.job.num = idx
        return cfg

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
               ) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.task_function is not None
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        session = getattr(self.task_function, SESSION_ATTR, None)
        if session is None:
            return self._on_target(job_overrides, initial_job_idx)
        from runner.compose import as_user_error

        original = HydraConfig.instance().cfg
        jobs, configs, invalid = [], [], []
        try:
            for i, overrides in enumerate(job_overrides):
                idx = initial_job_idx + i
                try:
                    cfg = self._job_config(overrides, idx)
                    # interpolations such as ${hydra:job.num} resolve against the job's config
                    HydraConfig.instance().set_config(cfg)
                    task_cfg = copy.deepcopy(cfg)
                    with read_write(task_cfg), open_dict(task_cfg):
                        del task_cfg["hydra"]
                    choices = {k: str(v) for k, v in cfg.hydra.runtime.choices.items()
                               if not k.startswith("hydra")}
                    job = session.add(idx, task_cfg, list(cfg.hydra.overrides.task), choices)
                except Exception as e:
                    # a job's own config is wrong (a key its target lacks, in a sweep over
                    # targets): that job fails and says why, the others go on
                    err = as_user_error(e)
                    if err is None:
                        raise
                    invalid.append(err)
                    job, cfg, task_cfg = session.add_invalid(idx, list(overrides), err), None, None
                jobs.append(job)
                configs.append((cfg, task_cfg, list(overrides)))
        finally:
            HydraConfig.instance().cfg = original  # type: ignore[assignment]
        if len(invalid) == len(jobs):
            raise invalid[0]  # the same mistake for every job: one error, nothing ran
        session.run(jobs)
        returns = []
        for job, (cfg, task_cfg, overrides) in zip(jobs, configs, strict=True):
            ret = JobReturn(overrides=overrides, cfg=task_cfg, hydra_cfg=cfg,
                            working_dir=os.getcwd(),
                            task_name=str(cfg.hydra.job.name) if cfg is not None else None)
            try:
                # a detached sweep (--detach): the job is queued on its target; its run id
                # is all there is to give back
                ret.return_value = job.run_id if session.detached else session.result(job)
                ret.status = JobStatus.COMPLETED
            except Exception as e:  # the sweeper decides what a failed job means
                ret.return_value = e
                ret.status = JobStatus.FAILED
            returns.append(ret)
        return returns

    def _on_target(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
                   ) -> Sequence[JobReturn]:
        """A user's own app: each job becomes a run on ``hydra.launcher.target``."""
        from hydra.core.singleton import Singleton

        from runner.sweep import SweepCancelled
        from runner.sweep.app import AppSweep

        assert self.hydra_context is not None and self.task_function is not None
        assert self.config is not None
        state = Singleton.get_state()  # the app's own, before the runner composes its config
        try:
            if self.app is None:
                self.app = AppSweep(target=self.target, env=self.env, overrides=self.overrides,
                                    max_parallel=self.max_parallel, objective=self.objective,
                                    show_logs=self.show_logs, poll=self.poll)
                sweep_dir = Path(os.path.abspath(str(self.config.hydra.sweep.dir)))
                self.app.sweep.configure(hydra_dir=sweep_dir)
                atexit.register(self.app.finish)  # the table of every job, once the sweep ends
            configs = [self._job_config(o, initial_job_idx + i)
                       for i, o in enumerate(job_overrides)]
            for cfg, overrides in zip(configs, job_overrides, strict=True):
                log.info(f"#{cfg.hydra.job.num} : {' '.join(filter_overrides(overrides))}")
            return self.app.launch(configs, self.task_function, self.hydra_context, state)
        except (KeyboardInterrupt, SweepCancelled):  # Ctrl-C or `runner cancel SWEEP`
            raise SystemExit(130) from None
        except Exception as e:
            _exit_on_user_error(e)
            raise


def _exit_on_user_error(e: BaseException) -> None:
    """Bad input to the runner (an unknown target, a misspelt key) under a user's own app: one
    ``error:`` block and exit code 2, as ``runner submit`` says it, not Hydra's traceback."""
    import sys

    from runner.compose import as_user_error

    err = as_user_error(e)
    if err is not None:
        print(f"error: {err.render()}", file=sys.stderr, flush=True)
        raise SystemExit(err.exit_code) from None


def attach(task_function: Any, session: Any) -> None:
    """Give ``task_function`` the sweep session this launcher will use."""
    setattr(task_function, SESSION_ATTR, session)
