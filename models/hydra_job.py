"""The ``hydra_job`` model: one job of a user's own ``@hydra.main`` app, run on a target.

``python train.py -m hydra/launcher=runner hydra.launcher.target=gpubox lr=0.1,0.01`` makes
the ``runner`` launcher record each job of the sweep as a run of this model. The job travels
as a *payload* (``data.payload``): the app's task function (pickled by value when it lives in
the app's script, by reference otherwise), the job's composed config and Hydra's global
state, written by the client with cloudpickle, as Hydra's submitit launcher does. On the
target a child process loads it and calls Hydra's own ``run_job``, so the task function sees
exactly the config, working directory and callbacks it would see under Hydra's basic
launcher. The return value comes back as ``outputs/hydra_return.pkl`` (and, when it is a
number, as the metric ``return``, which Optuna and the ledger read).

The target's env needs the app's own requirements (Hydra among them) and cloudpickle, with
the client's Python version (a pickled function only loads in the Python that made it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import hookimpl
from runner.model import Model, ModelError, RunContext

#: what the child writes into the run's outputs: Hydra's JobReturn of the job
RETURN_FILE = "hydra_return.pkl"
#: the metric a numeric return value is recorded as
RETURN_METRIC = "return"


@dataclass(frozen=True)
class JobPayload:
    """What travels for one job (pickled as a whole with cloudpickle)."""

    task_function: Any  #: the app's task function
    config: Any  #: the job's composed config, ``hydra`` node included
    hydra_context: Any  #: Hydra's context of the sweep (its callbacks)
    singleton_state: Any  #: Hydra's global state (ConfigStore, resolvers) at launch
    python: str  #: major.minor of the client's Python
    shared_dir: str  #: the sweep folder the client expects the job's outputs in


@dataclass
class HydraJobConfig:
    name: str = "hydra_job"  # the model's registered name
    app: str = "?"  # the app's script relative to the project root (or its function's name)
    cwd: str = ""  # where the app was started, relative to the project root
    client_python: str = ""  # major.minor of the Python that pickled the job
    python: str | None = None  # interpreter on the target; default: the worker's own


class HydraJobModel(Model):
    """Runs one job of a Hydra app from its payload, in a child process."""

    name = "hydra_job"
    Config = HydraJobConfig
    runs_in_subprocess = True
    reads_data_config = False
    data_paths = {"payload": "file"}

    def describe(self) -> str:
        return f"hydra app {self.config.app}"

    def run(self, ctx: RunContext) -> int:
        payload = ctx.data.get("payload")
        if not isinstance(payload, str) or not payload:
            raise ModelError("hydra_job: the run carries no job payload (data.payload).")
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ctx.work_dir), env.get("PYTHONPATH", "")) if p)
        mine = f"{sys.version_info.major}.{sys.version_info.minor}"
        want = self.config.client_python
        if self.config.python is None and want and want != mine:
            raise ModelError(
                f"hydra_job: the app was launched with Python {want} and this target's env runs "
                f"{mine}; a pickled task function only loads in the Python that made it. "
                f"Use an env with Python {want} (env.python) on the target.")
        py = self.config.python or sys.executable
        app = Path(self.config.app)
        app_dir = app.parent.as_posix() if app.suffix == ".py" and app.parent != Path() else ""
        cmd = [py, "-m", __name__, payload, str(ctx.work_dir), str(ctx.outputs_dir), app_dir,
               self.config.cwd]
        proc = subprocess.Popen(cmd, cwd=ctx.work_dir, env=env)
        try:
            return proc.wait()
        except BaseException:
            # a cancel: the child got the same SIGTERM (same process group); give it time
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            raise


def _job_dirs(cfg: Any, payload: JobPayload, outputs: Path) -> None:
    """Where the job writes: the client's sweep folder when this machine has it (same file
    system), else the run's outputs, which come back with the run; and what
    ``hydra.utils.get_original_cwd()`` says there (the project snapshot when the client's
    folder is not on this machine)."""
    from omegaconf import open_dict, read_write

    parent = Path(payload.shared_dir).parent
    shared = parent.is_dir() and os.access(parent, os.W_OK)
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.sweep.dir = payload.shared_dir if shared else str(outputs / "hydra")
        if not shared or not Path(str(cfg.hydra.runtime.cwd)).is_dir():
            cfg.hydra.runtime.cwd = os.getcwd()


def _main(argv: list[str]) -> int:
    """The child: load the payload, run the job with Hydra's ``run_job``, keep its return."""
    import pickle
    import traceback

    payload_path, work_dir, outputs = Path(argv[0]), Path(argv[1]), Path(argv[2])
    app_dir, cwd = argv[3], argv[4]
    # as `python app/train.py` has the script's folder first: the app's own modules import
    sys.path.insert(0, str(work_dir / app_dir) if app_dir else str(work_dir))
    os.chdir(work_dir / cwd)
    mine = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        import cloudpickle
        from hydra.core.singleton import Singleton
        from hydra.core.utils import JobStatus, run_job
    except ImportError as e:
        print(f"error: this env cannot run a Hydra app's job: {e.name} is not installed here.\n"
              "  add hydra-core and cloudpickle to the env (env.requirements), or use an env "
              "that has the app's requirements.", file=sys.stderr)
        return 2
    try:
        payload: JobPayload = cloudpickle.loads(payload_path.read_bytes())
    except Exception as e:
        hint = f" (this target runs Python {mine})"
        print(f"error: cannot load the job of the Hydra app: {type(e).__name__}: {e}{hint}.\n"
              "  the target's Python must be the client's major.minor, and the app's modules "
              "must be part of the project.", file=sys.stderr)
        return 2
    if payload.python != mine:
        print(f"error: the app was launched with Python {payload.python}, this target runs "
              f"{mine}: a pickled task function only loads in the Python that made it.\n"
              "  use an env with the same Python (env.python) on the target.", file=sys.stderr)
        return 2
    Singleton.set_state(payload.singleton_state)
    cfg = payload.config
    _job_dirs(cfg, payload, outputs)
    ret = run_job(hydra_context=payload.hydra_context, task_function=payload.task_function,
                  config=cfg, job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    failed = ret.status == JobStatus.FAILED
    value = ret._return_value
    if failed:
        traceback.print_exception(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        import runner

        runner.log_metric(RETURN_METRIC, float(value))
    outputs.mkdir(parents=True, exist_ok=True)
    try:
        blob = cloudpickle.dumps(ret)
    except Exception as e:  # a return value that cannot travel: say what it was
        ret.return_value = None if not failed else RuntimeError(repr(value))
        print(f"warning: the job's return value cannot be pickled ({e}); the sweeper gets "
              "None", file=sys.stderr)
        blob = pickle.dumps(ret)
    tmp = outputs / f".{RETURN_FILE}.tmp"
    tmp.write_bytes(blob)
    tmp.replace(outputs / RETURN_FILE)
    return 1 if failed else 0


@hookimpl
def runner_register_models(register: Any) -> None:
    register(HydraJobModel)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
