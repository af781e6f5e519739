"""The ``runner`` command: the argument parser, dispatch to the commands, and error reporting.

Start-up stays light: only argparse is imported here; Hydra, OmegaConf, rich and the plugins
load inside the command that needs them, and TensorFlow only inside a run. Composition lives in
:mod:`runner.compose`, submit and prepare in :mod:`runner.submit`, the ledger views in
:mod:`runner.views`; every command, built-in or a plugin's, gets a
:class:`runner.commands.CommandContext` as ``args.context``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.commands import CommandContext

if TYPE_CHECKING:
    from runner.backend import Command
    from runner.registry import Registry

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
    rs = add("resume", "start a new run that continues an ended one from its last checkpoint",
             epilog="overrides replace the run's own (target=local_docker model.epochs=5); "
                    "the code snapshot stays the run's.")
    rs.add_argument("run", help="run id, a unique prefix or suffix of one, or 'last'")
    rs.add_argument("--detach", "-d", action="store_true", help="return once the run has started")
    rs.add_argument("overrides", nargs="*", help="Hydra overrides (key=value)")
    wa = add("watch", "wait until a run ends and retry it as its retries say (submit --detach "
             "starts this in the background for a run with retries)")
    wa.add_argument("run", help="run id, a unique prefix or suffix of one, or 'last'")
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
    pd.add_argument("--format", choices=["text", "tsv", "json"], default="text",
                    help="text (score and input), tsv (line, score, input) or json (one object "
                         "per line: line, input, score)")
    fe = add("fetch", "copy a run's outputs here (links are not followed, sparse files stay sparse)")
    fe.add_argument("run", help="run id, prefix, suffix or 'last'")
    fe.add_argument("dest", nargs="?", help="where to put them (default: ./RUN_ID-outputs)")
    return p


def _plugin_commands(p: argparse.ArgumentParser) -> tuple[Any, Registry, dict[str, Command]]:
    """Add the subcommands plugins register (``runner_register_commands``); return the plugin
    manager and the registry (built once per command, shared with the command's ``Runs``)."""
    from runner.errors import UserError
    from runner.registry import collect, make_plugin_manager

    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    pm = make_plugin_manager()
    registry = collect(pm)
    for name, cmd in registry.commands.items():
        if name in sub.choices:
            raise UserError(f"a plugin's command '{name}' clashes with the built-in command.")
        cp = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(cp)
    return pm, registry, dict(registry.commands)


_HYDRA_COMMANDS = ("submit", "prepare")
_OWN_FLAGS = frozenset({"-h", "--help", "--detach", "-d", "--fail-fast", "--skip-done"})


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point: parse ``argv``, run the command, return its exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    if debug:
        args_list = [a for a in args_list if a != "--debug"]
        os.environ["RUNNER_DEBUG"] = "1"
    parser = _parser()
    try:
        pm, registry, plugin_commands = _plugin_commands(parser)
    except Exception as e:  # a broken plugin must not take `runner --help` down with it
        return _report(e, debug)
    args = _parse(parser, args_list)
    if args.version:
        from runner import __version__

        print(f"runner {__version__}")
        return 0
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    handler = _COMMANDS.get(args.command) or plugin_commands[args.command].run
    args.context = CommandContext(debug=debug, make_runs=lambda: _make_runs(pm, registry))
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_CANCELLED
    except BaseException as e:  # noqa: BLE001 - every error gets one clear block
        if isinstance(e, SystemExit):
            raise
        return _report(e, debug)


def _parse(parser: argparse.ArgumentParser, args_list: list[str]) -> argparse.Namespace:
    if args_list and args_list[0] in _HYDRA_COMMANDS:
        # Everything that is not one of our flags goes to Hydra untouched (overrides, --cfg,
        # -m, --info ...), wherever it stands on the line.
        ours = [a for a in args_list[1:] if a in _OWN_FLAGS]
        args = parser.parse_args([args_list[0], *ours])
        args.overrides = [a for a in args_list[1:] if a not in _OWN_FLAGS]
        return args
    return parser.parse_args(args_list)


def _make_runs(pm: Any, registry: Registry) -> Any:
    from runner.launch import Runs

    return Runs(pm=pm, registry=registry)


def _report(e: BaseException, debug: bool) -> int:
    """Print ``e`` as one ``error:`` block (with the traceback under ``--debug``)."""
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
    import errno

    from runner.errors import UserError

    if isinstance(e, UserError):
        return e
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:  # the machine's, not a bug
        where = f" (writing {e.filename})" if e.filename else ""
        return UserError(f"no space left on the device{where}.",
                         "free space on that disk, then run the command again; `runner runs` "
                         "shows what was recorded")
    if not type(e).__module__.startswith(("hydra", "omegaconf", "yaml")):
        return None  # not an error of configuration: no need to load Hydra to say so
    from runner.compose import as_user_error

    return as_user_error(e)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _ctx(args: argparse.Namespace) -> CommandContext:
    ctx = getattr(args, "context", None)
    return ctx if isinstance(ctx, CommandContext) else CommandContext()


# -- the commands -------------------------------------------------------------------------------

def cmd_submit(args: argparse.Namespace) -> int:
    from runner import submit

    return submit.submit(_ctx(args), args)


def cmd_resume(args: argparse.Namespace) -> int:
    from runner import resume

    return resume.resume(_ctx(args), args)


def cmd_watch(args: argparse.Namespace) -> int:
    from runner import resume

    return resume.watch(_ctx(args), args)


def cmd_prepare(args: argparse.Namespace) -> int:
    from runner import submit

    return submit.prepare(_ctx(args), args)


def cmd_runs(args: argparse.Namespace) -> int:
    from runner import views
    from runner.backend import RunState
    from runner.errors import UserError

    runs = _ctx(args).runs
    runs.reconcile()
    try:
        states = tuple(RunState(s.upper()) for s in args.state)
    except ValueError:
        raise UserError(f"--state: unknown state in {args.state}.",
                        f"valid: {', '.join(s.value for s in RunState)}") from None
    return views.runs_table(runs, limit=args.limit or None, states=states, sweep_id=args.sweep)


def cmd_show(args: argparse.Namespace) -> int:
    from runner import views

    return views.show_run(_ctx(args).runs, args.run)


def cmd_logs(args: argparse.Namespace) -> int:
    from runner.errors import UserError
    from runner.rundir import RunDir
    from runner.submit import final_line

    runs = _ctx(args).runs
    rec = runs.store.resolve(args.run)
    unreachable = ""
    try:
        rec = runs.refresh(rec)
    except Exception as e:  # the target does not answer: the copy here is what there is
        why = e.message if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        unreachable = why.splitlines()[0] if why else type(e).__name__
    if not args.follow or rec.state.terminal or unreachable:
        rd = RunDir(rec.run_dir)
        lines: list[str] | None = None
        handle = None if rec.state.terminal or unreachable else runs.handle(rec)
        if handle is not None:
            try:  # a run going elsewhere: its log as the target has it now
                lines = [text for _, text in handle.logs(0)]
            except Exception as e:
                unreachable = str(e).splitlines()[0] if str(e) else type(e).__name__
        if unreachable:
            _err(f"note: target {rec.target} did not answer ({unreachable}); the log of run "
                 f"{rec.id} as last copied here ({rec.state.value} when last seen):")
        if lines is None:
            lines = [text for _, text in rd.read_log(0, final=True)]
        if not lines:
            _err(f"run {rec.id} ({rec.state.value}) has no log yet"
                 + (f": {rec.message}" if rec.message else "") + ".")
        for line in lines:
            sys.stdout.write(line)
        if args.follow and unreachable:
            _err(f"cannot follow run {rec.id} until target {rec.target} answers; "
                 f"`runner logs {rec.id} -f` again later resumes where the copy ends.")
            return EXIT_RUN_FAILED
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
    return final_line(runs, rec.id, st)


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel every run named (a sweep id names its runs) at once: each cancel waits out its
    own grace period, so many stubborn runs take one grace period, not one each."""
    from concurrent.futures import ThreadPoolExecutor

    runs = _ctx(args).runs
    todo: list[tuple[Any, Any]] = []
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
                runs.finish(rec.id, st)
                _err(f"run {rec.id}: {st.state.value}")
            else:
                from runner.backend import Capability

                backend = runs.registry.backend(rec.backend)
                if Capability.CANCEL not in backend.capabilities:
                    from runner.errors import UserError

                    raise UserError(
                        f"run {rec.id}'s target '{rec.target}' cannot cancel runs: its backend "
                        f"'{backend.name}' does not declare the 'cancel' capability.",
                        "the run goes on; stop it on the target itself")
                todo.append((rec, handle))

    def cancel(item: tuple[Any, Any]) -> None:
        rec, handle = item
        st = handle.cancel()
        runs.finish(rec.id, st)
        _err(f"run {rec.id}: {st.state.value}")

    if todo:
        with ThreadPoolExecutor(max_workers=min(32, len(todo))) as pool:
            for done in [pool.submit(cancel, item) for item in todo]:
                done.result()  # the first failure is reported once all have been tried
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from runner import views

    runs = _ctx(args).runs
    runs.reconcile()
    return views.compare(runs, args.run, args.sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from runner import sweep

    runs = _ctx(args).runs
    runs.reconcile()
    if args.resume:
        return sweep.resume(runs, args.sweep, fail_fast=args.fail_fast,
                            max_parallel=args.max_parallel or None)
    return sweep.show(runs, args.sweep)


def cmd_plugins(args: argparse.Namespace) -> int:
    from rich.table import Table

    from runner.registry import plugin_distributions

    runs = _ctx(args).runs
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
    _ctx(args).console.print(t)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from rich.table import Table

    from runner import config as conf
    from runner.errors import UserError

    runs = _ctx(args).runs
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
    _ctx(args).console.print(t)
    return 0 if all(c.ok for c in checks) else EXIT_RUN_FAILED


def cmd_predict(args: argparse.Namespace) -> int:
    from runner.errors import UserError
    from runner.rundir import RunDir

    if args.file:
        try:
            raw = sys.stdin.buffer.read() if args.file == "-" else open(args.file, "rb").read()
            text = raw.decode("utf-8", "replace")  # bytes: no newline translation of a lone \r
        except OSError as e:
            raise UserError(f"--file: cannot read '{args.file}': {e.strerror}.") from None
        # one input per \n-terminated line (\r\n too): str.splitlines() would also break at
        # U+0085, U+2028 and the like, common in scraped text, and shift every later score
        numbered = [(i, ln.removesuffix("\r")) for i, ln in enumerate(text.split("\n"), 1)]
        if numbered and numbered[-1][1] == "":
            numbered.pop()
    else:
        numbered = []
    lines = [(0, t) for t in args.inputs] + [(i, t) for i, t in numbered if t.strip()]
    inputs = [t for _, t in lines]
    if not inputs:
        raise UserError("predict needs inputs: runner predict RUN \"text\" ... or --file FILE.")
    runs = _ctx(args).runs
    rec = runs.refresh(runs.store.resolve(args.run))
    rd = RunDir(rec.run_dir)
    if not rd.outputs.is_dir() or not any(rd.outputs.iterdir()):
        raise UserError(
            f"run {rec.id} ({rec.state.value}) has no outputs here to predict with.",
            "predict uses the model a run saved; pick a run that SUCCEEDED (`runner runs`).",
        )
    model_cls = runs.registry.model(rec.model)
    scores = model_cls.predict(rd.outputs, inputs)
    if len(scores) != len(inputs):
        raise RuntimeError(f"model {rec.model} returned {len(scores)} scores for {len(inputs)} inputs")
    import json

    for (line, text), score in zip(lines, scores, strict=True):
        if args.format == "json":
            print(json.dumps({"line": line or None, "input": text, "score": score}))
        elif args.format == "tsv":
            one_line = text.replace("\t", " ")
            print(f"{line or ''}\t{score}\t{one_line}")
        else:
            shown = text if len(text) <= 70 else text[:67] + "..."
            print(f"{model_cls.format_prediction(score)}  {shown}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from runner.errors import UserError
    from runner.rundir import RunDir, safe_copy_tree
    from runner.units import size_text
    from runner.views import output_files

    runs = _ctx(args).runs
    rec = runs.refresh(runs.store.resolve(args.run))
    handle = runs.handle(rec) if not rec.state.terminal else None
    if handle is not None:
        handle.fetch_outputs(rec.run_dir)  # a run still going elsewhere: what it has so far
    rd = RunDir(rec.run_dir)
    files, _ = output_files(rd.outputs)
    if not files:
        raise UserError(f"run {rec.id} ({rec.state.value}) has no outputs here.",
                        "a run's outputs are what it writes into runner.outputs_dir(); "
                        f"`runner show {rec.id}` says what it recorded.")
    dest = Path(args.dest) if args.dest else Path.cwd() / f"{rec.id}-outputs"
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest} exists and is not a folder.", "name a folder to fetch into.")
    skipped = safe_copy_tree(rd.outputs, dest)
    total = sum(size for _, size in files)
    print(f"fetched {len(files)} file(s), {size_text(total)}, of run {rec.id} into {dest}")
    if skipped:
        _err(f"not fetched: {len(skipped)} link(s) or special file(s): "
             + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "submit": cmd_submit,
    "prepare": cmd_prepare,
    "resume": cmd_resume,
    "watch": cmd_watch,
    "runs": cmd_runs,
    "show": cmd_show,
    "logs": cmd_logs,
    "cancel": cmd_cancel,
    "compare": cmd_compare,
    "sweep": cmd_sweep,
    "plugins": cmd_plugins,
    "predict": cmd_predict,
    "fetch": cmd_fetch,
    "doctor": cmd_doctor,
}

if __name__ == "__main__":
    sys.exit(main())
