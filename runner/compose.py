"""Hydra, through its public API: compose the config of ``runner submit``/``prepare`` and map
Hydra's errors to :class:`runner.errors.UserError`.

Two doors, one config:

- a **plain run** (only overrides of the task's config, no flag, no sweep, nothing under
  ``hydra.``) is composed once with the Compose API (``initialize_config_dir`` + ``compose``);
- everything else (``-m`` sweeps, ``--cfg``, ``--info``, ``--resolve``, ``-cd``, ``-cn``,
  overrides of Hydra's own config) goes through a real Hydra app (``hydra.main``) with the
  arguments as its command line, so each flag means what Hydra documents.

A Hydra app composes the whole config twice before a run (once only to read ``hydra.mode``);
the Compose API composes once, which is why the plain run, by far the commonest command, takes
that door. Both search the packaged ``conf/`` first and then the project's ``conf/`` (unless
``-cd`` names another folder), then the configs plugins stored.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import UserError

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override
    from omegaconf import DictConfig

    from runner.launch import Runs
    from runner.sweep import Sweep

#: the Hydra behaviour we ask for (``version_base``): 1.3, as Hydra asks of apps before 1.4
VERSION_BASE = "1.3"
CONFIG_NAME = "config"


@dataclass(frozen=True)
class ComposedJob:
    """One composed job, as the task of ``submit``/``prepare`` receives it."""

    cfg: DictConfig  #: the job's config, without Hydra's own ``hydra`` node
    overrides: list[str]  #: the task overrides as given (``model.lr=0.1``), sweep values resolved
    choices: dict[str, str]  #: the group choices: target, env, model, data
    num: int | None = None  #: the job's number in a multirun (``[job N]``); None for a single run


Task = Callable[[ComposedJob], Any]


def compose_and_run(argv: Sequence[str], task: Task, runs: Runs, sweep: Sweep | None = None) -> None:
    """Compose ``argv`` (overrides and Hydra flags) and call ``task`` for each composed job.

    :param argv: what followed ``runner submit``/``prepare``, minus runner's own flags.
    :param task: called with each :class:`ComposedJob`; its exception is re-raised here.
    :param runs: the ledger and plugins (plugin configs are offered as group options).
    :param sweep: with ``-m``, the ``runner`` launcher records and runs the jobs through it.
    """
    from runner.config import package_conf_dir, store_plugin_configs
    from runner.secrets import check_overrides

    args = list(argv)
    _check_flags(args)
    check_overrides([a for a in args if not a.startswith("-")])
    store_plugin_configs(runs.registry, runs.dirs)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's exceptions reach us unchanged
    os.environ.setdefault("RUNNER_HYDRA_SWEEP_DIR", str(runs.store.home / "hydra"))
    from hydra_plugins.runner_launcher.runner_launcher import attach

    user_conf = _user_conf(runs.project_root, package_conf_dir())
    if _is_plain(args):
        _compose_once(args, task, package_conf_dir(), user_conf)
        return
    if user_conf is not None and not any(a.startswith(("-cd", "--config-dir")) for a in args):
        args = ["--config-dir", str(user_conf), *args]
    failed: list[BaseException] = []
    task_function = _task_function(task, failed)
    if sweep is not None:
        attach(task_function, sweep)
    try:
        _run_app(task_function, package_conf_dir(), args)
    except Exception as e:
        err = as_user_error(e)
        if err is None:
            raise
        raise _in_group_sweep(err, args) from e
    if failed:
        raise failed[0]


def compose_aside(overrides: Sequence[str], runs: Runs) -> ComposedJob:
    """Compose the runner's own config for ``overrides`` while another Hydra app runs in this
    process (a user's ``@hydra.main`` app whose sweep the ``runner`` launcher dispatches).

    Hydra's global state (the app's ConfigStore, its initialized Hydra, its current config,
    OmegaConf's resolvers) is set aside and restored afterwards, so neither config sees the
    other's groups."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton

    from runner.config import package_conf_dir, store_plugin_configs
    from runner.secrets import check_overrides

    check_overrides(list(overrides))
    state = Singleton.get_state()
    out: list[ComposedJob] = []
    try:
        GlobalHydra.instance().clear()
        store_plugin_configs(runs.registry, runs.dirs)
        _compose_once(list(overrides), out.append, package_conf_dir(),
                      _user_conf(runs.project_root, package_conf_dir()))
    finally:
        Singleton.set_state(state)
    return out[0]


def _in_group_sweep(err: UserError, args: Sequence[str]) -> UserError:
    """Add to a key error in a sweep over a group's options (``target=local,gpubox``) that a
    key one option has may not exist in another (Hydra checks every job before any runs)."""
    if not any(a in ("-m", "--multirun") for a in args):
        return err
    from runner.config import GROUPS

    swept = [o.key_or_group for o in _parse([a for a in args if not a.startswith("-")])
             if o.is_sweep_override() and o.key_or_group in GROUPS]
    for group in swept:
        if f"'{group}." in err.message or f" {group}." in err.message:
            err.hints.append(
                f"this sweep runs each {group} it lists; a key one {group} has may be missing in "
                f"another: set it in that {group}'s own file (conf/{group}/NAME.yaml) instead of "
                "on the sweep's command line")
    return err


#: Hydra's flags that each ask for a different thing: at most one of them on a line
_MODES = {"-m": "-m", "--multirun": "-m", "-c": "--cfg", "--cfg": "--cfg", "-i": "--info",
          "--info": "--info", "-r": "--run", "--run": "--run", "-sc": "--shell-completion",
          "--shell-completion": "--shell-completion"}


def _check_flags(args: Sequence[str]) -> None:
    """Refuse Hydra flags that cannot go together, before Hydra says so as a ValueError."""
    flags = {a.split("=", 1)[0] for a in args if a.startswith("-")}
    modes = sorted({_MODES[f] for f in flags if f in _MODES})
    if len(modes) > 1:
        raise UserError(f"{' and '.join(modes)} do not go together: give one of them.",
                        "--cfg job shows the composed config, --info what Hydra loaded, "
                        "-m runs a sweep")
    if "--resolve" in flags and "--cfg" not in modes:
        raise UserError("--resolve only applies with --cfg.",
                        "e.g. runner submit --cfg job --resolve model.epochs=1")


def _user_conf(project_root: Path, package_conf: Path) -> Path | None:
    user = project_root / "conf"
    if user.is_dir() and user.resolve() != package_conf.resolve():
        return user
    return None


def _parse(overrides: Sequence[str]) -> list[Override]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def _is_plain(args: Sequence[str]) -> bool:
    """True when one composition is all ``args`` need: no flag, no sweep, no override of
    Hydra's own config (whose settings, such as callbacks, only a Hydra app honours)."""
    if any(a.startswith("-") for a in args):
        return False
    return not any(o.is_sweep_override() or o.is_hydra_override() for o in _parse(args))


def _choices(runtime_choices: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in runtime_choices.items() if not str(k).startswith("hydra")}


def _compose_once(overrides: list[str], task: Task, config_dir: Path, user_conf: Path | None) -> None:
    """A plain run: one composition, then the task, with Hydra's config current (so
    ``${hydra:...}`` interpolations resolve) exactly as a Hydra app sets it for its job."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    extra = [f"hydra.searchpath=[{quoted('file://' + str(user_conf))}]"] if user_conf else []
    job_name = __name__.rpartition(".")[2]  # as a Hydra app names it: its task function's module
    with initialize_config_dir(config_dir=str(config_dir), job_name=job_name,
                               version_base=VERSION_BASE):
        cfg = compose(CONFIG_NAME, overrides=[*overrides, *extra], return_hydra_config=True)
        with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
            cfg.hydra.runtime.output_dir = os.path.abspath(str(cfg.hydra.run.dir))
        hydra_config = HydraConfig.instance()
        previous = hydra_config.cfg
        hydra_config.set_config(cfg)
        try:
            task_cfg = copy.deepcopy(cfg)
            with read_write(task_cfg), open_dict(task_cfg):
                del task_cfg["hydra"]
            task(ComposedJob(task_cfg, _overrides_as_typed(cfg.hydra.overrides.task),
                             _choices(cfg.hydra.runtime.choices)))
        finally:
            hydra_config.cfg = previous  # type: ignore[assignment]


def _overrides_as_typed(node: Any) -> list[str]:
    """The job's overrides as the user typed them: interpolations left unresolved (a
    ``${oc.env:VAR}`` stays a reference, never becomes the value)."""
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.to_container(node, resolve=False)]  # type: ignore[union-attr]


def quoted(text: str) -> str:
    """``text`` as a quoted string of Hydra's override grammar."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _task_function(task: Task, failed: list[BaseException]) -> Callable[[DictConfig], Any]:
    """The task function of the Hydra app: ``task`` with the job Hydra composed."""

    def task_function(cfg: DictConfig) -> Any:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        job = ComposedJob(cfg, list(hc.overrides.task), _choices(hc.runtime.choices),
                          int(hc.job.num) if multirun else None)
        try:
            return task(job)
        except BaseException as e:
            if multirun:
                raise
            failed.append(e)  # re-raised by compose_and_run, so Hydra prints no banner of its own
            return None

    return task_function


def _run_app(task_function: Callable[[DictConfig], Any], config_dir: Path, args: list[str]) -> None:
    """Run ``task_function`` as a Hydra app whose command line is ``args``."""
    import hydra

    app = hydra.main(config_path=str(config_dir), config_name=CONFIG_NAME,
                     version_base=VERSION_BASE)(task_function)
    saved = sys.argv
    sys.argv = [saved[0] if saved else "runner", *args]  # a Hydra app reads its own argv
    from runner.secrets import masked_stdout

    try:
        with masked_stdout():  # what --cfg/--resolve print shows no value a reference resolves to
            app()
    finally:
        sys.argv = saved


# -- Hydra's errors as UserErrors -------------------------------------------------------------

def as_user_error(e: BaseException) -> UserError | None:
    """The :class:`UserError` for an error of config composition (Hydra, OmegaConf, YAML);
    None for any other error."""
    if isinstance(e, UserError):
        return e
    mod = type(e).__module__
    if mod.startswith("hydra"):
        return _hydra_error(e)
    if mod.startswith("yaml"):
        return UserError(f"malformed YAML: {_yaml_where(e)}")
    if mod.startswith("omegaconf"):
        unset = unset_env_var(e)
        if unset is not None:
            return unset
        return _lines_error(str(e))
    return None


def unset_env_var(e: BaseException) -> UserError | None:
    """The error for ``${oc.env:VAR}`` of a variable that is not set."""
    import re

    # OmegaConf's oc.env resolver says which variable only in its message text
    m = re.search(r"Environment variable '([^']+)' not found", str(e))
    if m is None:
        return None
    var, key = m.group(1), getattr(e, "full_key", None)
    where = f" (at key '{key}')" if key else ""
    return UserError(f"environment variable {var} is not set, and the config reads it as "
                     f"${{oc.env:{var}}}{where}.",
                     f"set it first (export {var}=...), or give a default: ${{oc.env:{var},VALUE}}")


def _hydra_error(e: BaseException) -> UserError:
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    cause = e.__cause__
    if isinstance(e, MissingConfigException) and e.options and e.missing_cfg_file:
        group, _, option = e.missing_cfg_file.rpartition("/")
        return UserError(
            f"unknown {group} '{option}'.",
            f"available {group} options: {', '.join(e.options)}",
            f"add your own as conf/{group}/{option}.yaml in your project.",
        )
    if isinstance(e, OverrideParseException):
        return UserError(f"cannot parse the override '{e.override}': {e.message.splitlines()[0]}",
                         "see Hydra's override grammar: key=value, +key=value, ~key, group=option")
    if isinstance(e, ConfigCompositionException) and isinstance(
            cause, ConfigAttributeError | ConfigKeyError) and cause.full_key:
        # an override of a key the composed config does not have
        key = str(cause.full_key)
        from runner.config import GROUPS

        head = key.split(".", 1)[0]
        top_keys = (*GROUPS, "seed", "hydra")  # what may stand first in an override
        if head not in top_keys:
            import difflib

            close = difflib.get_close_matches(head, top_keys, n=1, cutoff=0.6)
            rest = key[len(head):]
            return UserError(
                f"'{head}' is neither a config group nor a key of the config (in '{key}').",
                (f"did you mean {close[0]}{rest}?" if close else
                 f"the groups are {', '.join(GROUPS)}; other top-level keys: seed"),
                f"to add a new key on purpose: +{key}=...")
        return UserError(
            f"key '{key}' is not in the composed config (misspelt?).",
            f"see the valid keys: runner submit --cfg job {key.split('.', 1)[0]}=<your choice>",
            f"to add a new key on purpose: +{key}=...",
        )
    if isinstance(e, ConfigCompositionException) and isinstance(cause, OmegaConfBaseException):
        # a value the key's schema refuses: Hydra's line names the override, OmegaConf's the key
        problem = str(cause.msg).splitlines()[0] if cause.msg else type(cause).__name__
        where = f"key: {cause.full_key}" if cause.full_key else ""
        hints = [where]
        if "index out of range" in problem and cause.full_key:
            # ``model.args.0=1`` where the list is shorter: the element does not exist yet
            lst = str(cause.full_key).rsplit("[", 1)[0]
            hints.append(f"{lst} has no such element: give the whole list first "
                         f"('{lst}=[a,b]'), then sweep an element ('{lst}.0=1,2'), or sweep "
                         f"whole lists ('{lst}=[1,b],[2,b]')")
        return UserError(f"{str(e).strip().splitlines()[0]}: {problem}", *hints)
    if cause is not None and type(cause).__module__.startswith("yaml"):
        return UserError(f"malformed YAML: {_yaml_where(cause)}")
    # Hydra gives no structured data for its other errors: its message, one line a hint
    return _lines_error(str(e))


def _lines_error(msg: str) -> UserError:
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    return UserError(lines[0] if lines else "invalid configuration", *lines[1:])


def _yaml_where(e: BaseException) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    if mark is not None:
        return f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return str(e).splitlines()[0]
