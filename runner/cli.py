"""The ``runner`` command.

Start-up stays light: only argparse is imported here; Hydra, OmegaConf, rich and the plugins
load inside the command that needs them, and TensorFlow only inside a run.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from runner.backend import RunHandle, RunStatus
    from runner.launch import Runs
    from runner.store import RunRecord

EXIT_USAGE = 2
EXIT_RUN_FAILED = 1
EXIT_CANCELLED = 130

HYDRA_FLAGS_HELP = """\
overrides use Hydra's grammar: key=value, +new_key=value, ~key, group=option.
Hydra flags: --cfg job|hydra|all, --info, -m/--multirun (sweep: model.lr=0.1,0.01),
             --resolve, --package, -cd/--config-dir DIR, -cn/--config-name NAME.
examples:
  runner submit model=script model.path=train.py
  runner submit target=local_docker env=tf_cpu model.epochs=1
  runner submit -m model.filters=64,128 model.dropout=0.2,0.5
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="runner",
        description="An open, plugin-based experiment runner: compose a target, an env, a model "
        "and data with Hydra; prepare, submit, watch and record runs.",
        epilog="`runner COMMAND --help` for one command. --debug shows tracebacks.",
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, **kw)

    fmt = argparse.RawDescriptionHelpFormatter
    s = add("submit", "compose a run from overrides, prepare its env, start it, stream its logs",
            epilog=HYDRA_FLAGS_HELP, formatter_class=fmt)
    s.add_argument("--detach", "-d", action="store_true", help="return once the run has started")
    s.add_argument("--fail-fast", action="store_true", help="sweeps: stop at the first failed job")
    s.add_argument("--skip-done", action="store_true",
                   help="sweeps: skip jobs whose key already succeeded")
    s.add_argument("overrides", nargs=argparse.REMAINDER, help="Hydra overrides and flags")
    pr = add("prepare", "make the env of a composed config ready on its target (cached by content)",
             epilog=HYDRA_FLAGS_HELP, formatter_class=fmt)
    pr.add_argument("overrides", nargs=argparse.REMAINDER, help="Hydra overrides and flags")
    r = add("runs", "list runs: id, state, target, model, key metrics, age")
    r.add_argument("-n", "--limit", type=int, default=20, help="how many (0 = all; default 20)")
    r.add_argument("--state", action="append", default=[], help="only runs in this state")
    r.add_argument("--sweep", help="only the runs of this sweep")
    sh = add("show", "everything recorded about one run")
    sh.add_argument("run", help="run id, a unique prefix or suffix of one, or 'last'")
    lg = add("logs", "print a run's log")
    lg.add_argument("run", help="run id, prefix, suffix or 'last'")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until the run ends")
    c = add("cancel", "stop a run (or every running job of a sweep) and verify it stopped")
    c.add_argument("run", nargs="+", help="run ids (or sweep ids)")
    cm = add("compare", "the config keys that differ between runs, side by side with metrics")
    cm.add_argument("run", nargs="*", help="two or more runs")
    cm.add_argument("--sweep", help="compare the jobs of a sweep (only the swept keys)")
    sw = add("sweep", "a sweep's jobs, states and metrics; --resume runs its failed jobs again")
    sw.add_argument("sweep", help="the sweep id (printed by `runner submit -m`; see `runner runs`)")
    sw.add_argument("--resume", action="store_true",
                    help="run again the jobs that failed, were cancelled or were lost")
    sw.add_argument("--fail-fast", action="store_true", help="stop at the first failed job")
    sw.add_argument("--max-parallel", type=int, default=0,
                    help="jobs at once (default: as many as the target's slots allow)")
    add("plugins", "what is loaded: plugins, their distributions, what each registered")
    dr = add("doctor", "check that a target can run work, with a fix for each failure")
    dr.add_argument("target", help="a target name (conf/target/NAME.yaml)")
    pd = add("predict", "score inputs with the model a finished run trained")
    pd.add_argument("run", help="run id, prefix, suffix or 'last'")
    pd.add_argument("inputs", nargs="*", help="inputs to score (e.g. review texts)")
    pd.add_argument("--file", "-f", help="a file with one input per line ('-' = stdin)")
    return p


def _plugin_commands(p: argparse.ArgumentParser) -> dict[str, Any]:
    """Add the subcommands plugins register (``runner_register_commands``)."""
    from runner.registry import collect, make_plugin_manager

    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    _PLUGINS["pm"] = pm = make_plugin_manager()
    _PLUGINS["registry"] = registry = collect(pm)  # built once per command, shared with Runs
    commands = registry.commands
    for name, cmd in commands.items():
        if name in sub.choices:
            from runner.errors import UserError

            raise UserError(f"a plugin's command '{name}' clashes with the built-in command.")
        cp = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(cp)
    return dict(commands)


_HYDRA_COMMANDS = ("submit", "prepare")
_OWN_FLAGS = frozenset({"-h", "--help", "--detach", "-d", "--fail-fast", "--skip-done"})


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    if debug:
        args_list = [a for a in args_list if a != "--debug"]
        os.environ["RUNNER_DEBUG"] = "1"
    parser = _parser()
    try:
        plugin_commands = _plugin_commands(parser)
    except Exception as e:  # a broken plugin must not take `runner --help` down with it
        return _report(e, debug)
    if args_list and args_list[0] in _HYDRA_COMMANDS:
        # Everything that is not one of our flags goes to Hydra untouched (overrides, --cfg,
        # -m, --info ...), wherever it stands on the line.
        ours = [a for a in args_list[1:] if a in _OWN_FLAGS]
        args = parser.parse_args([args_list[0], *ours])
        args.overrides = [a for a in args_list[1:] if a not in _OWN_FLAGS]
    else:
        args = parser.parse_args(args_list)
    if args.version:
        from runner import __version__

        print(f"runner {__version__}")
        return 0
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    handler = _COMMANDS.get(args.command) or plugin_commands[args.command].run
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_CANCELLED
    except BaseException as e:  # noqa: BLE001 - every error gets one clear block
        if isinstance(e, SystemExit):
            raise
        return _report(e, debug)


def _report(e: BaseException, debug: bool) -> int:
    from runner.errors import UserError

    err = _as_user_error(e)
    if debug:
        import traceback

        traceback.print_exception(e)
    if err is not None:
        print(f"error: {err.render()}", file=sys.stderr)
        return err.exit_code
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    if not debug:
        print("  this looks like a bug in runner or a plugin; run again with --debug for the "
              "traceback.", file=sys.stderr)
    return EXIT_RUN_FAILED if not isinstance(e, UserError) else EXIT_USAGE


def _as_user_error(e: BaseException) -> Any:
    """Turn the errors of config composition into UserErrors with one clear message."""
    import re

    from runner.errors import UserError

    if isinstance(e, UserError):
        return e
    mod = type(e).__module__
    msg = str(e).strip()
    if mod.startswith("hydra"):
        m = re.search(r"Could not find '([^']+)/([^']+)'", msg)
        if m and "Available options" in msg:
            group, option = m.groups()
            listing = msg.split("Available options", 1)[1].split("Config search path", 1)[0]
            opts = [ln.strip() for ln in listing.splitlines()[1:] if ln.strip()]
            return UserError(
                f"unknown {group} '{option}'.",
                f"available {group} options: {', '.join(opts)}",
                f"add your own as conf/{group}/{option}.yaml in your project.",
            )
        m = re.search(r"Could not override '([^']+)'", msg)
        if m:
            key = m.group(1)
            group = key.split(".", 1)[0]
            return UserError(
                f"key '{key}' is not in the composed config (misspelt?).",
                f"see the valid keys: runner submit --cfg job {group}=<your choice>",
                f"to add a new key on purpose: +{key}=...",
            )
        if type(e).__name__ == "OverrideParseException":
            return UserError(f"cannot parse the overrides: {msg.splitlines()[0]}",
                             "see Hydra's override grammar: key=value, +key=value, ~key, group=option")
        cause = e.__cause__
        if cause is not None and type(cause).__module__.startswith("yaml"):
            return UserError(f"malformed YAML: {_yaml_where(cause)}")
        return UserError(msg.splitlines()[0], *[ln.strip() for ln in msg.splitlines()[1:] if ln.strip()])
    if mod.startswith("yaml"):
        return UserError(f"malformed YAML: {_yaml_where(e)}")
    if mod.startswith("omegaconf"):
        return UserError(msg.splitlines()[0], *[ln.strip() for ln in msg.splitlines()[1:] if ln.strip()])
    return None


def _yaml_where(e: BaseException) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    if mark is not None:
        return f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return str(e).splitlines()[0]


# -- composing with Hydra ----------------------------------------------------------------------

def _compose_and_run(
    overrides: list[str], task: Callable[[DictConfig, list[str], dict[str, str]], Any], runs: Runs,
    sweep: Any = None,
) -> None:
    """Run Hydra on ``overrides`` (with its flags: --cfg, --info, -m ...) and call ``task``
    for each composed job with (cfg, task overrides, group choices). With ``sweep`` (a
    :class:`runner.sweep.Sweep`), the ``runner`` launcher runs -m jobs through it instead."""
    from hydra._internal.utils import _run_hydra, get_args_parser
    from hydra.core.hydra_config import HydraConfig

    from runner.config import package_conf_dir
    from runner.secrets import check_overrides

    check_overrides([o for o in overrides if not o.startswith("-")])
    from runner.config import store_plugin_configs

    store_plugin_configs(runs.registry, runs.dirs)
    hydra_args = list(overrides)
    user_conf = runs.project_root / "conf"
    if user_conf.is_dir() and user_conf.resolve() != package_conf_dir().resolve() \
            and not any(a.startswith(("-cd", "--config-dir")) for a in hydra_args):
        hydra_args = ["--config-dir", str(user_conf), *hydra_args]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # errors come to us, to be reported our way
    os.environ.setdefault("RUNNER_HYDRA_SWEEP_DIR", str(runs.store.home / "hydra"))

    failed: list[BaseException] = []

    def task_function(cfg: DictConfig) -> Any:
        from hydra.types import RunMode

        hc = HydraConfig.get()
        choices = {k: str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
        try:
            return task(cfg, list(hc.overrides.task), choices)
        except BaseException as e:
            if hc.mode == RunMode.MULTIRUN:
                raise
            failed.append(e)  # re-raised below, so Hydra does not print its own banner
            return None

    from hydra_plugins.runner_launcher.runner_launcher import attach, ensure_registered

    ensure_registered()
    if sweep is not None:
        attach(task_function, sweep)
    if not any(a.lstrip("+").startswith("hydra.mode=") for a in hydra_args):
        # Hydra composes the whole config once only to read `hydra.mode`, which our config
        # leaves unset (-m decides); skipping that saves a full composition per command.
        from hydra._internal.hydra import Hydra

        Hydra.get_mode = lambda self, config_name, overrides: None  # type: ignore[method-assign]
    parser = get_args_parser()
    args = parser.parse_args(hydra_args)
    _run_hydra(args=args, args_parser=parser, task_function=task_function,
               config_path=str(package_conf_dir()), config_name="config")
    if failed:
        raise failed[0]


_PLUGINS: dict[str, Any] = {}


def _runs() -> Runs:
    from runner.launch import Runs

    return Runs(pm=_PLUGINS.get("pm"), registry=_PLUGINS.get("registry"))


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- submit / prepare ---------------------------------------------------------------------------

def cmd_submit(args: argparse.Namespace) -> int:
    from runner.sweep import JobFailed, Sweep, SweepCancelled

    runs = _runs()
    runs.reconcile()
    outcome: dict[str, int] = {"code": 0}
    if args.detach and any(a in ("-m", "--multirun") for a in args.overrides):
        from runner.errors import UserError

        raise UserError("--detach does not apply to sweeps (-m): the launcher starts queued jobs "
                        "as slots free up, so it runs until the sweep ends.",
                        "run it in the background (nohup, tmux); `runner sweep SWEEP` shows it.")
    sweep = Sweep(runs, fail_fast=args.fail_fast, skip_done=args.skip_done, argv=args.overrides)

    def task(cfg: DictConfig, overrides: list[str], choices: dict[str, str]) -> Any:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        plan = runs.plan(cfg, overrides, choices)
        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
        prefix = f"[job {HydraConfig.get().job.num}] " if multirun else ""
        rec, spec = runs.record(plan)
        _err(f"{prefix}run {rec.id}: target {plan.target_name} ({plan.backend.name}), "
             f"model {plan.model.describe()}, env {plan.env.name}")
        handle = runs.launch(plan, spec, on_prepared=lambda p: _err(
            f"{prefix}env {plan.env.name}: {p.reason} [{p.env_key}]"))
        if args.detach:
            _err(f"{prefix}started; follow with: runner logs {rec.id} -f")
            return rec.id
        st = _stream(runs, rec.id, handle, prefix)
        code = _final_line(runs, rec.id, st, prefix)
        outcome["code"] = max(outcome["code"], code)
        return rec.id

    try:
        _compose_and_run(args.overrides, task, runs, sweep=sweep)
    except JobFailed:
        pass  # the sweeper stopped on a failed job; the table below says which
    except SweepCancelled:
        sweep.cancelled = True
    except KeyboardInterrupt:
        if not sweep.jobs:
            raise
        sweep.abort()
    except ValueError as e:  # an optimizing sweeper got no number back from the jobs
        if not sweep.jobs or sweep.objective is not None:
            raise
        from runner.errors import UserError

        sweep.print_table()
        raise UserError(f"the sweeper failed after its jobs ran: {str(e).splitlines()[0]}",
                        "an optimizing sweeper (Optuna) needs a number from each job; name the "
                        "metric: hydra.launcher.objective=val_accuracy (any metric the jobs log).",
                        ) from None
    if not sweep.jobs:
        return outcome["code"]
    sweep.print_table()
    return sweep.exit_code()


def _stream(runs: Runs, run_id: str, handle: RunHandle, prefix: str = "") -> RunStatus:
    """Print the log until the run ends; Ctrl-C cancels the run and waits until it stopped."""
    offset = 0
    try:
        for offset, line in runs.follow(handle):  # noqa: B007 - offset kept for the resume below
            sys.stdout.write(prefix + line)
            sys.stdout.flush()
    except KeyboardInterrupt:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan it
        try:
            _err(f"\n{prefix}cancelling run {run_id} ...")
            st = handle.cancel()
            runs.finish(run_id, st)
            for _, line in handle.logs(offset):
                sys.stdout.write(prefix + line)
        finally:
            signal.signal(signal.SIGINT, old)
        raise
    st = handle.status()
    runs.finish(run_id, st)
    return st


def _final_line(runs: Runs, run_id: str, st: RunStatus, prefix: str = "") -> int:
    from runner.backend import RunState

    rec = runs.store.get(run_id)
    metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in list(rec.summary.items())[:6])
    tail = f" ({st.message})" if st.message and st.state != RunState.SUCCEEDED else ""
    _err(f"{prefix}run {run_id} {st.state.value}{tail}" + (f": {metrics}" if metrics else ""))
    if st.state == RunState.SUCCEEDED:
        return 0
    return EXIT_CANCELLED if st.state == RunState.CANCELLED else EXIT_RUN_FAILED


def cmd_prepare(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from runner.backend import RunSpec
    from runner.request import RunRequest

    runs = _runs()

    def task(cfg: DictConfig, overrides: list[str], choices: dict[str, str]) -> Any:
        plan = runs.plan(cfg, overrides, choices)
        with tempfile.TemporaryDirectory(prefix="runner-prepare-") as tmp:
            request = RunRequest(run_id="prepare", model=plan.model.name, model_config={},
                                 data=plan.data, data_inputs=plan.data_inputs)
            spec = RunSpec(run_id="prepare", run_dir=Path(tmp), target_name=plan.target_name,
                           target=plan.backend.config, env=plan.env, model=plan.model.name,
                           project_root=runs.project_root, gpus=plan.env.gpus, request=request)
            t0 = time.perf_counter()
            plan.backend.check_data(spec)  # data that must already be on the target is there
            prepared = plan.backend.prepare(spec)
            dt = time.perf_counter() - t0
        _err(f"env {plan.env.name} on target {plan.target_name}: {prepared.reason} "
             f"[{prepared.env_key}] in {dt:.2f}s")

    _compose_and_run(args.overrides, task, runs)
    return 0


# -- ledger views -------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _age(t: float) -> str:
    d = max(0.0, time.time() - t)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= n:
            return f"{int(d // n)}{unit} ago"
    return f"{int(d)}s ago"


_KEY_METRICS = ("test_accuracy", "val_accuracy", "accuracy", "val_loss", "loss")


def _key_metrics(summary: dict[str, float], n: int = 3) -> str:
    names = [k for k in _KEY_METRICS if k in summary] + sorted(k for k in summary if k not in _KEY_METRICS)
    return "  ".join(f"{k}={_fmt(summary[k])}" for k in names[:n])


def _console() -> Any:
    from rich.console import Console

    # piped output (a file, grep, a test) is not cut to 80 columns
    return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 240)


_STATE_STYLE = {"SUCCEEDED": "green", "FAILED": "red", "LOST": "magenta", "CANCELLED": "yellow",
                "RUNNING": "cyan", "PREPARING": "cyan", "QUEUED": "dim"}


def cmd_runs(args: argparse.Namespace) -> int:
    from rich.table import Table

    from runner.backend import RunState

    runs = _runs()
    runs.reconcile()
    try:
        states = tuple(RunState(s.upper()) for s in args.state)
    except ValueError:
        from runner.errors import UserError

        raise UserError(f"--state: unknown state in {args.state}.",
                        f"valid: {', '.join(s.value for s in RunState)}") from None
    records = runs.store.list(limit=args.limit or None, states=states, sweep_id=args.sweep)
    if not records:
        _err("no runs yet: `runner submit` starts one.")
        return 0
    t = Table(box=None, pad_edge=False)
    for col in ("id", "state", "target", "model", "metrics", "age"):
        t.add_column(col, no_wrap=col != "metrics")
    for r in records:
        model = RunDir_meta(r).get("model_description", r.model)
        t.add_row(r.id, f"[{_STATE_STYLE.get(r.state.value, '')}]{r.state.value}[/]", r.target,
                  model, _key_metrics(r.summary), _age(r.created))
    _console().print(t)
    return 0


def RunDir_meta(r: RunRecord) -> dict[str, Any]:
    from runner.rundir import RunDir

    return RunDir(r.run_dir).meta()


def cmd_show(args: argparse.Namespace) -> int:
    from rich.table import Table

    from runner.rundir import RunDir

    runs = _runs()
    rec = runs.refresh(runs.store.resolve(args.run))
    rd = RunDir(rec.run_dir)
    meta, worker = rd.meta(), rd.worker_info()
    con = _console()
    style = _STATE_STYLE.get(rec.state.value, "")
    con.print(f"run [bold]{rec.id}[/]  [{style}]{rec.state.value}[/]"
              + (f"  exit code {rec.exit_code}" if rec.exit_code is not None else "")
              + ("  [red]OOM-killed[/]" if rec.oom else ""))
    if rec.message:
        con.print(f"  {rec.message}", markup=False)
    end = rec.finished or time.time()
    rows = [
        ("target", f"{rec.target} (backend {rec.backend})"),
        ("model", meta.get("model_description", rec.model)),
        ("env", f"{meta.get('choices', {}).get('env', '?')}  key {rec.env_key or '-'}"),
        ("data", meta.get("choices", {}).get("data", "-")),
        *[(f"data.{d['key']}", _data_line(d, worker)) for d in meta.get("data_inputs") or []],
        ("created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.created))
         + f"  ({_age(rec.created)}, ran {end - rec.created:.1f}s)"),
        ("overrides", " ".join(meta.get("overrides", [])) or "-"),
    ]
    if rec.sweep_id:
        rows.append(("sweep", rec.sweep_id))
    git = meta.get("git") or {}
    if git:
        rows.append(("git", f"{git.get('commit', '')[:12]}" + (" (dirty: uncommitted diff recorded)"
                                                                if git.get("dirty") else "")))
    if worker:
        rows.append(("host", f"{worker.get('host')}  Python {worker.get('python')}"))
        rows.append(("seed", str(worker.get("seed"))))
        gpus = worker.get("gpus") or []
        rows.append(("gpus", ", ".join(f"{g['index']}: {g['name']} ({g['memory']})" for g in gpus)
                     or "none visible"))
        for k, v in (worker.get("meta") or {}).items():
            rows.append((k, v if isinstance(v, str) else _compact(v)))
    rows.append(("run dir", str(rec.run_dir)))
    t = Table(box=None, show_header=False, pad_edge=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for k, v in rows:
        t.add_row(k, str(v))
    con.print(t)
    records = rd.read_metrics()
    if records:
        m = Table(title="metrics", title_justify="left", box=None, pad_edge=False)
        for col in ("name", "last", "step", "best", "n"):
            m.add_column(col)
        by: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            by.setdefault(r["name"], []).append(r)
        for name, rs in by.items():
            vals = [r["value"] for r in rs]
            best = min(vals) if "loss" in name else max(vals)
            m.add_row(name, _fmt(vals[-1]), str(rs[-1].get("step", "")), _fmt(best), str(len(rs)))
        con.print(m)
    outputs = sorted(p for p in rd.outputs.rglob("*") if p.is_file()) if rd.outputs.is_dir() else []
    if outputs:
        con.print("[bold]outputs[/]")
        for p in outputs[:50]:
            con.print(f"  {p.relative_to(rd.outputs)}  ({p.stat().st_size:,} bytes)", markup=False)
    return 0


def _data_line(d: dict[str, Any], worker: dict[str, Any]) -> str:
    """One recorded data input: as given, by content, and where the run read it."""
    from runner.units import size_text

    if d.get("on_target"):
        text = f"{d['given']}  (on the target, not shipped)"
    else:
        text = (f"{d['given']}  sha256 {str(d.get('digest'))[:12]}  {d.get('files')} file(s), "
                f"{size_text(float(d.get('bytes') or 0))}")
    seen = [w for w in worker.get("data") or [] if w.get("key") == d.get("key")]
    if seen:
        text += f"  read at {seen[0].get('path')}"
    return text


def _compact(v: Any) -> str:
    """A recorded fact on one line: dicts as ``key value, ...`` (empty values as "none")."""
    if isinstance(v, dict):
        return ", ".join(f"{k} {_compact(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "[" + "; ".join(_compact(x) for x in v) + "]" if v else "none"
    return str(v)


def cmd_logs(args: argparse.Namespace) -> int:
    runs = _runs()
    rec = runs.refresh(runs.store.resolve(args.run))
    from runner.rundir import RunDir

    if not args.follow or rec.state.terminal:
        for _, line in RunDir(rec.run_dir).read_log(0, final=True):
            sys.stdout.write(line)
        if args.follow:
            _err(f"run {rec.id} already ended: {rec.state.value}")
        return 0
    handle = runs.handle(rec)
    if handle is None:
        _err(f"run {rec.id} has not started yet ({rec.state.value}).")
        return EXIT_RUN_FAILED
    try:
        for _, line in runs.follow(handle):
            sys.stdout.write(line)
            sys.stdout.flush()
    except KeyboardInterrupt:
        _err(f"\nstopped following; run {rec.id} goes on (runner cancel {rec.id} stops it).")
        return 0
    st = handle.status()
    runs.finish(rec.id, st)
    return _final_line(runs, rec.id, st)


def cmd_cancel(args: argparse.Namespace) -> int:
    runs = _runs()
    code = 0
    for ref in args.run:
        targets = runs.store.list(sweep_id=ref) if ref.startswith("s") and runs.store.sweep(ref) \
            else [runs.store.resolve(ref)]
        if targets and targets[0].sweep_id == ref:
            from runner.sweep import mark_cancelled

            mark_cancelled(runs, ref)  # a launcher still driving it starts nothing more
        for rec in targets:
            rec = runs.refresh(rec)
            if rec.state.terminal:
                _err(f"run {rec.id} already ended: {rec.state.value}")
                continue
            handle = runs.handle(rec)
            if handle is None:
                from runner.backend import RunState, RunStatus
                from runner.rundir import RunDir

                st = RunStatus(RunState.CANCELLED, message="cancelled before it started")
                RunDir(rec.run_dir).write_status(st)
            else:
                from runner.backend import Capability

                backend = runs.registry.backend(rec.backend)
                if Capability.CANCEL not in backend.capabilities:
                    from runner.errors import UserError

                    raise UserError(
                        f"run {rec.id}'s target '{rec.target}' cannot cancel runs: its backend "
                        f"'{backend.name}' does not declare the 'cancel' capability.",
                        "the run goes on; stop it on the target itself")
                st = handle.cancel()
            runs.finish(rec.id, st)
            _err(f"run {rec.id}: {st.state.value}")
    return code


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


def cmd_compare(args: argparse.Namespace) -> int:
    import yaml
    from rich.table import Table

    from runner.errors import UserError
    from runner.rundir import CONFIG, RunDir

    runs = _runs()
    runs.reconcile()
    swept: list[str] | None = None
    if args.sweep:
        from runner.sweep import sweep_jobs, swept_keys

        jobs = [j for j in sweep_jobs(runs, args.sweep) if j.run is not None]  # newest run per job
        records = [j.run for j in jobs if j.run is not None]
        swept = swept_keys([j.overrides for j in jobs])
    else:
        if len(args.run) < 2:
            raise UserError("compare needs two or more runs (or --sweep SWEEP).",
                            "e.g. runner compare 261126-1200-ab12 261126-1210-cd34")
        records = [runs.store.resolve(r) for r in args.run]
    flat = []
    for r in records:
        try:
            flat.append(_flatten(yaml.safe_load((r.run_dir / CONFIG).read_text()) or {}))
        except FileNotFoundError:
            flat.append({})
    for f, r in zip(flat, records, strict=True):  # what the data was, by content
        for d in RunDir(r.run_dir).meta().get("data_inputs") or []:
            f[f"data.{d['key']} (content)"] = (str(d.get("digest"))[:12] if d.get("digest")
                                               else "on target")
    keys = sorted({k for f in flat for k in f})
    differ = [k for k in keys if len({repr(f.get(k, "<unset>")) for f in flat}) > 1]
    if swept is not None:  # a sweep: only what the sweep varied (a group choice: its keys)
        differ = [k for k in differ if any(k == s or k.startswith(s + ".") for s in swept)]
    t = Table(box=None, pad_edge=False)
    t.add_column("")
    for r in records:
        t.add_column(r.id)
    t.add_row("[bold]state[/]", *[r.state.value for r in records])
    for k in differ:
        t.add_row(k, *[_fmt(f.get(k, "-")) for f in flat])
    if not differ:
        t.add_row("[dim](configs identical)[/]", *["" for _ in records])
    metric_names = sorted({m for r in records for m in r.summary})
    for m in metric_names:
        t.add_row(f"[bold]{m}[/]", *[_fmt(r.summary[m]) if m in r.summary else "-" for r in records])
    _console().print(t)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from runner import sweep

    runs = _runs()
    runs.reconcile()
    if args.resume:
        return sweep.resume(runs, args.sweep, fail_fast=args.fail_fast,
                            max_parallel=args.max_parallel or None)
    return sweep.show(runs, args.sweep)


def cmd_plugins(args: argparse.Namespace) -> int:
    from rich.table import Table

    from runner.registry import plugin_distributions

    runs = _runs()
    pm, reg = runs.pm, runs.registry
    dists = plugin_distributions(pm)
    t = Table(box=None, pad_edge=False)
    for col in ("plugin", "from", "registered", "hooks"):
        t.add_column(col)
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin) or repr(plugin)
        registered = [f"backend {n}" for (k, n), p in reg.origin.items() if p == name and k == "backend"]
        registered += [f"{k} {n}" for (k, n), p in reg.origin.items() if p == name and k != "backend"]
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        origin = dists.get(name) or "runner (built-in)"
        t.add_row(name, origin, ", ".join(registered) or "-", ", ".join(hooks))
    _console().print(t)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from rich.table import Table

    from runner import config as conf
    from runner.errors import UserError

    runs = _runs()
    path = conf.config_file("target", args.target, runs.dirs)
    if not Path(path).is_file():
        raise UserError(f"unknown target '{args.target}'.",
                        f"available target options: {', '.join(conf.options('target', runs.dirs))}")
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"target": OmegaConf.load(path)})
    cls, target_conf = conf.target_config(cfg, args.target, runs.registry, runs.dirs)
    checks = cls(target_conf).doctor()
    if not checks:
        _err(f"target {args.target} (backend {cls.name}) has no checks to run.")
        return 0
    t = Table(box=None, pad_edge=False)
    for col in ("check", "", "detail", "fix"):
        t.add_column(col, overflow="fold")
    for c in checks:
        t.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAIL[/]", c.detail, "" if c.ok else c.fix)
    _console().print(t)
    return 0 if all(c.ok for c in checks) else EXIT_RUN_FAILED


def cmd_predict(args: argparse.Namespace) -> int:
    from runner.errors import UserError
    from runner.rundir import RunDir

    inputs = list(args.inputs)
    if args.file:
        try:
            text = sys.stdin.read() if args.file == "-" else open(args.file).read()
        except OSError as e:
            raise UserError(f"--file: cannot read '{args.file}': {e.strerror}.") from None
        inputs += [ln for ln in text.splitlines() if ln.strip()]
    if not inputs:
        raise UserError("predict needs inputs: runner predict RUN \"text\" ... or --file FILE.")
    runs = _runs()
    rec = runs.refresh(runs.store.resolve(args.run))
    rd = RunDir(rec.run_dir)
    if not rd.outputs.is_dir() or not any(rd.outputs.iterdir()):
        raise UserError(
            f"run {rec.id} ({rec.state.value}) has no outputs here to predict with.",
            "predict uses the model a run saved; pick a run that SUCCEEDED (`runner runs`).",
        )
    model_cls = runs.registry.model(rec.model)
    scores = model_cls.predict(rd.outputs, inputs)
    for score, text in zip(scores, inputs, strict=True):
        shown = text if len(text) <= 70 else text[:67] + "..."
        print(f"{model_cls.format_prediction(score)}  {shown}")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "submit": cmd_submit,
    "prepare": cmd_prepare,
    "runs": cmd_runs,
    "show": cmd_show,
    "logs": cmd_logs,
    "cancel": cmd_cancel,
    "compare": cmd_compare,
    "sweep": cmd_sweep,
    "plugins": cmd_plugins,
    "predict": cmd_predict,
    "doctor": cmd_doctor,
}

if __name__ == "__main__":
    sys.exit(main())
