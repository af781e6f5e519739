"""The ``script`` model: run any user script or module, with arguments, in the run's
working directory (the project snapshot). ``runner.log_metric`` inside it records metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import hookimpl
from runner.errors import UserError
from runner.model import Model, ModelError, RunContext
from runner.tracking import ENV_DATA_PREFIX


@dataclass
class ScriptConfig:
    name: str = "script"  # the model's registered name
    path: str | None = None  # the script, relative to the project root (or absolute)
    module: str | None = None  # or a module to run with `python -m`
    args: list[str] = field(default_factory=list)  # arguments passed to the script
    python: str | None = None  # interpreter on the target; default: the worker's own


class ScriptModel(Model):
    """Runs ``python PATH ARGS...`` (or ``python -m MODULE ARGS...``) as a child process.

    ``data.path`` (a file or folder on the client, or ``target:/path``) travels with the run;
    the script finds it with ``runner.data_path()`` (``$RUNNER_DATA_PATH``).
    """

    name = "script"
    Config = ScriptConfig
    runs_in_subprocess = True
    reads_data_config = False
    graceful_stop = True  # the script gets the signal and decides (see run())

    def describe(self) -> str:
        c = self.config
        return f"script {c.path or '-m ' + str(c.module)}"

    def validate(self, project_root: Path, data: dict[str, Any]) -> None:
        c = self.config
        if bool(c.path) == bool(c.module):
            raise UserError(
                "model=script needs exactly one of model.path or model.module.",
                "e.g. runner submit model=script model.path=train.py 'model.args=[--lr,0.1]'",
            )
        if c.path:
            p = Path(c.path)
            full = p if p.is_absolute() else Path.cwd() / p
            if full.is_dir():
                raise UserError(
                    f"model.path: '{c.path}' is a folder ({full}); model.path names a script.",
                    "name the script in it (model.path=folder/train.py), or run a package "
                    "with model.module=pkg.main.",
                )
            if not full.is_file():
                raise UserError(
                    f"model.path: script '{c.path}' not found (looked at {full}).",
                    "give a path relative to the current directory, or an absolute path.",
                )
            full = full.resolve()
            if not full.is_relative_to(project_root.resolve()):
                raise UserError(
                    f"model.path: '{c.path}' is outside the project ({project_root}); the run "
                    "executes a snapshot of the project, so the script must be part of it.",
                    "move the script into the project, or run `runner` from the script's project.",
                )
            # the worker runs in the snapshot of the project root
            c.path = full.relative_to(project_root.resolve()).as_posix()

    def command(self) -> list[str]:
        c = self.config
        py = c.python or sys.executable
        head = [py, c.path] if c.path else [py, "-m", str(c.module)]
        return head + [str(a) for a in c.args]

    def run(self, ctx: RunContext) -> int:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        paths = [str(ctx.work_dir), env.get("PYTHONPATH", "")]
        if self.config.python:  # another interpreter: its `import runner` must find this one
            paths.append(_runner_path())
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        # the data the run shipped, where it lies on the target (runner.data_path() reads it)
        for key in self.data_paths:
            value = ctx.data.get(key)
            if isinstance(value, str) and value:
                env[f"{ENV_DATA_PREFIX}{key.upper()}"] = value
        try:
            proc = subprocess.Popen(self.command(), cwd=ctx.work_dir, env=env)
        except FileNotFoundError as e:
            raise ModelError(f"cannot start {self.command()[0]}: {e.strerror}") from None
        # the stop signal reaches the script (where it shares the worker's process group it
        # may get it twice: a handler that sets a flag is safe); the script saves a checkpoint
        # in $RUNNER_CHECKPOINT_DIR and exits, or the backend kills it after the grace period
        ctx.on_stop(lambda: _signal(proc, signal.SIGTERM))
        try:
            return proc.wait()
        except BaseException:
            _signal(proc, signal.SIGKILL)
            proc.wait()
            raise


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _runner_path() -> str:
    import runner

    return str(Path(runner.__file__).resolve().parent.parent)


@hookimpl
def runner_register_models(register: Any) -> None:
    register(ScriptModel)
