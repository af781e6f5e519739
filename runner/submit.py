"""``runner submit`` and ``runner prepare``: compose, record, prepare, start, stream the log
until the run ends (Ctrl-C cancels it), and say how it ended."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import UserError

if TYPE_CHECKING:
    from runner.backend import RunHandle, RunStatus
    from runner.commands import CommandContext
    from runner.compose import ComposedJob
    from runner.launch import Runs

EXIT_RUN_FAILED = 1
EXIT_CANCELLED = 130


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def submit(ctx: CommandContext, args: argparse.Namespace) -> int:
    """Run each composed job (a sweep with ``-m``); the exit code says how they ended."""
    from runner.compose import compose_and_run
    from runner.resume import WATCH_LOG, RetryPolicy, follow, spawn_watcher
    from runner.sweep import JobFailed, Sweep, SweepCancelled

    runs = ctx.runs
    runs.reconcile()
    outcome: dict[str, int] = {"code": 0}
    multirun = any(a in ("-m", "--multirun") for a in args.overrides)
    sweep = Sweep(runs, fail_fast=args.fail_fast, skip_done=args.skip_done, argv=args.overrides,
                  detach=bool(args.detach and multirun))

    def task(job: ComposedJob) -> Any:
        plan = runs.plan(job.cfg, job.overrides, job.choices)
        policy = RetryPolicy.of(plan)  # checked before anything starts
        prefix = f"[job {job.num}] " if job.num is not None else ""
        rec, spec = runs.record(plan)
        _err(f"{prefix}run {rec.id}: target {plan.target_name} ({plan.backend.name}), "
             f"model {plan.model.describe()}, env {plan.env.name}")
        handle = runs.launch(plan, spec, on_prepared=lambda p: _err(
            f"{prefix}env {plan.env.name}: {p.reason} [{p.env_key}]"))
        if args.detach:
            _err(f"{prefix}started; follow with: runner logs {rec.id} -f")
            if policy.retries:  # someone must be there to retry it: a watcher of its own
                _err(f"{prefix}retries: {policy.retries}, by a watcher in the background (pid "
                     f"{spawn_watcher(runs, rec.id)}; its notes: {rec.run_dir / WATCH_LOG})")
            return rec.id
        last, st = follow(runs, plan, rec, handle, prefix, policy)  # with its retries, if any
        outcome["code"] = max(outcome["code"], final_line(runs, last, st, prefix))
        return last

    try:
        compose_and_run(args.overrides, task, runs, sweep=sweep)
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
        sweep.print_table()
        raise UserError(f"the sweeper failed after its jobs ran: {str(e).splitlines()[0]}",
                        "an optimizing sweeper (Optuna) needs a number from each job; name the "
                        "metric: hydra.launcher.objective=val_accuracy (any metric the jobs log).",
                        ) from None
    if not sweep.jobs:
        return outcome["code"]
    if sweep.detached:
        _err(f"sweep {sweep.sweep_id}: {len(sweep.jobs)} job(s) handed to their target's "
             "scheduler; this shell is free.")
        _err(f"  watch them: runner sweep {sweep.sweep_id}   stop them: "
             f"runner cancel {sweep.sweep_id}")
        return 0
    sweep.print_table()
    sweep.report_optimum()
    return sweep.exit_code()


def stream(runs: Runs, run_id: str, handle: RunHandle, prefix: str = "",
           patience: float | None = None) -> RunStatus:
    """Print the log until the run ends; Ctrl-C cancels the run and waits until it stopped.

    With ``patience`` (seconds between tries), a target that stops answering is asked again
    until it answers, and the log goes on from where it was: the run keeps its last known
    state meanwhile (it is never taken for lost while nobody can tell)."""
    offset = 0
    noted = False
    try:
        while True:
            try:
                for pos, line in runs.follow(handle, offset):
                    offset = pos  # where the log goes on after an outage, or after a cancel
                    sys.stdout.write(prefix + line)
                    sys.stdout.flush()
                break
            except Exception as e:
                if patience is None:
                    raise
                if not noted:
                    why = str(e).splitlines()[0] if str(e) else type(e).__name__
                    _err(f"{prefix}run {run_id}: its target did not answer ({why}); the run "
                         f"keeps its last known state, asked again every {patience:g}s")
                    noted = True
                time.sleep(patience)
                continue
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


def final_line(runs: Runs, run_id: str, st: RunStatus, prefix: str = "") -> int:
    """Say how the run ended, with its first metrics; return the exit code for it."""
    from runner.backend import RunState
    from runner.views import fmt

    rec = runs.store.get(run_id)
    metrics = ", ".join(f"{k}={fmt(v)}" for k, v in list(rec.summary.items())[:6])
    tail = f" ({st.message})" if st.message and st.state != RunState.SUCCEEDED else ""
    _err(f"{prefix}run {run_id} {st.state.value}{tail}" + (f": {metrics}" if metrics else ""))
    if st.state == RunState.SUCCEEDED:
        return 0
    return EXIT_CANCELLED if st.state == RunState.CANCELLED else EXIT_RUN_FAILED


def prepare(ctx: CommandContext, args: argparse.Namespace) -> int:
    """Make the env of each composed config ready on its target, and say whether it was cached."""
    from runner.backend import RunSpec
    from runner.compose import compose_and_run
    from runner.request import RunRequest

    runs = ctx.runs

    def task(job: ComposedJob) -> Any:
        plan = runs.plan(job.cfg, job.overrides, job.choices)
        with tempfile.TemporaryDirectory(prefix="runner-prepare-") as tmp:
            request = RunRequest(run_id="prepare", model=plan.model.name, model_config={},
                                 data=plan.data, data_inputs=plan.data_inputs)
            spec = RunSpec(run_id="prepare", run_dir=Path(tmp), target_name=plan.target_name,
                           target=plan.backend.config, env=plan.env, model=plan.model.name,
                           project_root=runs.project_root, gpus=plan.gpus,
                           request=request.with_gpus(plan.gpus))
            t0 = time.perf_counter()
            plan.backend.check_data(spec)  # data that must already be on the target is there
            prepared = plan.backend.prepare(spec)
            dt = time.perf_counter() - t0
        _err(f"env {plan.env.name} on target {plan.target_name}: {prepared.reason} "
             f"[{prepared.env_key}] in {dt:.2f}s")

    compose_and_run(args.overrides, task, runs)
    return 0
