"""``runner resume RUN``, and the automatic retries of runs that were lost.

Both start a *new* run that continues an ended one: linked to it in the ledger (``parent``),
with the same code snapshot, composed from the same overrides (plus the ones given), and with
a copy of its checkpoints and metrics (:mod:`runner.checkpoint`), so that the model goes on
from its last checkpoint. A retry is such a run started by the client that watched a run end
LOST (or OOM-killed, where ``retry_oom`` asks), after a backoff, up to ``retries`` times; its
``attempt`` is its parent's plus one.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.errors import UserError

if TYPE_CHECKING:
    from runner.backend import RunHandle, RunSpec, RunStatus
    from runner.commands import CommandContext
    from runner.compose import ComposedJob
    from runner.launch import Plan, Runs
    from runner.store import RunRecord

#: the longest wait between two attempts, whatever the backoff says
MAX_BACKOFF_S = 300.0


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RetryPolicy:
    """When a run that ended is started again, from its checkpoint."""

    retries: int = 0  #: how many more attempts after the first
    retry_oom: bool = False  #: an OOM-killed run is retried too (else only LOST ones)
    backoff: float = 5.0  #: seconds before the first retry; doubled for each next one

    @classmethod
    def of(cls, plan: Plan) -> RetryPolicy:
        """The run's ``retries``/``retry_oom`` when set, else its target's."""
        target = plan.backend.config
        retries = plan.values.get("retries")
        key = "retries" if retries is not None else "target.retries"
        if retries is None:
            retries = getattr(target, "retries", 0) or 0
        retry_oom = plan.values.get("retry_oom")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise UserError(f"{key}: must be 0 or more (attempts after the first), got "
                            f"{retries!r}.", "e.g. runner submit retries=2")
        if retry_oom is not None and not isinstance(retry_oom, bool):
            raise UserError(f"retry_oom: must be true or false, got {retry_oom!r}.")
        return cls(retries=retries,
                   retry_oom=bool(retry_oom if retry_oom is not None
                                  else getattr(target, "retry_oom", False)),
                   backoff=float(getattr(target, "retry_backoff", 5.0)))

    def wants(self, status: RunStatus, attempt: int) -> bool:
        """True when a run that ended with ``status`` on attempt ``attempt`` goes again."""
        from runner.backend import RunState

        if attempt > self.retries:
            return False
        if status.oom:
            return self.retry_oom
        return status.state == RunState.LOST

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1``."""
        return min(MAX_BACKOFF_S, self.backoff * 2 ** (attempt - 1))


def announce_retry(rec: RunRecord, st: RunStatus, policy: RetryPolicy) -> tuple[float, str]:
    """The seconds to wait before the next attempt of ``rec`` (which ended ``st``), and the
    line that says so."""
    from runner.checkpoint import checkpoint_size
    from runner.rundir import RunDir

    files, size = checkpoint_size(RunDir(rec.run_dir))
    wait = policy.delay(rec.attempt)
    why = "OOM-killed" if st.oom else f"{st.state.value}: {st.message}"
    start = (f"from its checkpoint ({files} files, {size:,} bytes)" if files
             else "from the start (it left no checkpoint)")
    return wait, (f"run {rec.id} ended {why}; attempt {rec.attempt + 1} of "
                  f"{policy.retries + 1} in {wait:g}s, {start}")


def record_attempt(runs: Runs, plan: Plan, rec: RunRecord) -> tuple[RunRecord, RunSpec]:
    """Record the next attempt of ``rec``: its code snapshot, sweep and job, and a copy of its
    checkpoint and metrics (QUEUED, not started)."""
    from runner.rundir import RunDir

    rd = RunDir(rec.run_dir)
    return runs.record(plan, sweep_id=rec.sweep_id, job_key=rec.job_key, code_from=rd.code,
                       code_manifest=rd.meta().get("code_manifest"), parent=rec,
                       attempt=rec.attempt + 1)


def follow(runs: Runs, plan: Plan, rec: RunRecord, handle: RunHandle, prefix: str = "",
           policy: RetryPolicy | None = None) -> tuple[str, RunStatus]:
    """Stream the run's log until it ends; while it ends LOST (or OOM, where asked) and
    attempts are left, start it again from its checkpoint and stream that. Returns the id and
    the status of the last attempt."""
    from runner.submit import stream

    policy = policy or RetryPolicy.of(plan)
    # a run that may be retried is watched through an outage of its target, so that it is
    # retried only once the target says it is gone (never while it may still be running)
    patience = min(30.0, max(1.0, policy.backoff)) if policy.retries else None
    st = stream(runs, rec.id, handle, prefix, patience)
    while policy.wants(st, rec.attempt):
        rec = runs.store.get(rec.id)
        wait, note = announce_retry(rec, st, policy)
        _err(prefix + note)
        time.sleep(wait)
        rec, spec = record_attempt(runs, plan, rec)
        _err(f"{prefix}run {rec.id}: attempt {rec.attempt}, continues {rec.parent}")
        handle = runs.launch(plan, spec)
        st = stream(runs, rec.id, handle, prefix, patience)
    return rec.id, st


#: seconds between two looks at a watched run (``runner watch``)
WATCH_POLL_S = 2.0
#: in the run directory: what the background watcher of a detached run printed
WATCH_LOG = "watch.txt"


def spawn_watcher(runs: Runs, run_id: str) -> int:
    """Start ``runner watch RUN`` in the background, in a session of its own (it outlives
    this client), from the current folder (relative paths resolve as they did); its output
    goes to ``watch.txt`` in the run directory. Returns its PID."""
    import os
    import subprocess

    from runner.rundir import RunDir

    rd = RunDir(runs.store.get(run_id).run_dir)
    with open(rd.path / WATCH_LOG, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "watch", run_id],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=dict(os.environ))
    return proc.pid


def wait_quietly(runs: Runs, rec: RunRecord, handle: RunHandle, patience: float) -> RunStatus:
    """Wait for the run to end without printing its log; a target that does not answer is
    asked again every ``patience`` seconds (the run keeps its last known state meanwhile)."""
    noted = False
    while True:
        try:
            st = handle.status()
        except Exception as e:  # noqa: BLE001 - an outage: ask again later
            if not noted:
                _err(f"run {rec.id}: its target did not answer ({str(e).splitlines()[0]}); "
                     f"asked again every {patience:g}s")
                noted = True
            time.sleep(patience)
            continue
        if st.terminal:
            runs.finish(rec.id, st)
            return st
        time.sleep(WATCH_POLL_S)


def watch(ctx: CommandContext, args: argparse.Namespace) -> int:
    """``runner watch RUN``: wait until the run ends, and retry it as its ``retries`` say
    (what ``runner submit --detach`` starts in the background for a run with retries)."""
    from runner.compose import compose_and_run
    from runner.rundir import RunDir
    from runner.submit import final_line

    runs = ctx.runs
    rec = runs.store.resolve(args.run)
    meta = RunDir(rec.run_dir).meta()
    outcome: dict[str, int] = {"code": 0}

    def task(job: ComposedJob) -> Any:
        nonlocal rec
        plan = runs.plan(job.cfg, job.overrides, job.choices)
        policy = RetryPolicy.of(plan)
        patience = min(30.0, max(1.0, policy.backoff))
        handle = runs.handle(rec)
        if handle is None:
            raise UserError(f"run {rec.id} was never started on its target: nothing to watch.")
        _err(f"watching run {rec.id} (retries: {policy.retries})")
        st = wait_quietly(runs, rec, handle, patience)
        while policy.wants(st, rec.attempt):
            wait, note = announce_retry(rec, st, policy)
            _err(note)
            time.sleep(wait)
            rec, spec = record_attempt(runs, plan, rec)
            _err(f"run {rec.id}: attempt {rec.attempt}, continues {rec.parent}")
            handle = runs.launch(plan, spec)
            st = wait_quietly(runs, rec, handle, patience)
        outcome["code"] = final_line(runs, rec.id, st)

    compose_and_run(list(meta.get("overrides") or []), task, runs)
    return outcome["code"]


def override_key(text: str) -> str:
    """The key an override sets (``+a.b=1`` and ``a.b=2`` both set ``a.b``)."""
    return text.split("=", 1)[0].lstrip("+~")


def merged_overrides(before: list[str], given: list[str]) -> list[str]:
    """The parent's overrides with those ``given`` put in place of the ones of the same key."""
    keys = {override_key(o) for o in given}
    return [o for o in before if override_key(o) not in keys] + list(given)


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def config_drift(parent_config: Any, values: dict[str, Any], given: list[str]) -> list[str]:
    """``key: old -> new`` for each config value that differs from the parent's although no
    override given to resume changed it (a config file edited since the parent ran)."""
    from runner.secrets import redact

    if not isinstance(parent_config, dict):
        return []
    keys = [override_key(o) for o in given]
    before, now = _flat(parent_config), _flat(redact(values))
    out = []
    for k in sorted(set(before) | set(now)):
        if any(k == g or k.startswith(g + ".") for g in keys):
            continue
        old, new = before.get(k, "(none)"), now.get(k, "(none)")
        if old != new and "****" not in f"{old}{new}":
            out.append(f"{k}: {old!r} -> {new!r}")
    return out


def resumable(runs: Runs, ref: str) -> RunRecord:
    """The run ``ref`` names, when it can be resumed; else a clear error saying why not."""
    from runner.rundir import RunDir

    rec = runs.refresh(runs.store.resolve(ref))
    rd = RunDir(rec.run_dir)
    if not rec.state.terminal:
        raise UserError(
            f"run {rec.id} is still {rec.state.value} on target {rec.target}: a run resumes "
            "once it has ended.",
            f"stop it first (it saves a checkpoint): runner cancel {rec.id}; then "
            f"runner resume {rec.id}",
        )
    if not rd.has_checkpoint():
        raise UserError(
            f"run {rec.id} ({rec.state.value}) left no checkpoint: {rd.checkpoints} is empty "
            "or missing, so there is nothing to resume from.",
            "a model saves one in ctx.checkpoint_dir ($RUNNER_CHECKPOINT_DIR for a script); "
            "to start the same run from zero: runner submit " + " ".join(rd.meta().get(
                "overrides", [])),
        )
    if not rd.code.is_dir():
        raise UserError(
            f"run {rec.id}'s code snapshot is gone ({rd.code} does not exist): the resumed run "
            "must run the same code.",
            "submit it again from the project as it is now (runner submit ...), or restore "
            "that folder.",
        )
    return rec


def _read_yaml(path: Any) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def resume(ctx: CommandContext, args: argparse.Namespace) -> int:
    """``runner resume RUN [overrides]``: a new run that continues ``RUN`` from its checkpoint."""
    from runner.compose import compose_and_run
    from runner.rundir import CONFIG, RunDir
    from runner.submit import final_line

    runs = ctx.runs
    runs.reconcile()
    parent = resumable(runs, args.run)
    rd = RunDir(parent.run_dir)
    meta = rd.meta()
    overrides = merged_overrides(list(meta.get("overrides") or []), list(args.overrides))
    outcome: dict[str, int] = {"code": 0}

    def task(job: ComposedJob) -> Any:
        from runner.checkpoint import checkpoint_size

        plan = runs.plan(job.cfg, job.overrides, job.choices)
        policy = RetryPolicy.of(plan)  # checked before anything starts
        drift = config_drift(_read_yaml(rd.path / CONFIG), plan.values, list(args.overrides))
        if drift:
            _err(f"note: the config files changed since run {parent.id}; composed now, these "
                 f"differ from its config (override them to keep its values): "
                 + "; ".join(drift[:8]) + (" ..." if len(drift) > 8 else ""))
        rec, spec = runs.record(plan, code_from=rd.code, code_manifest=meta.get("code_manifest"),
                                parent=parent)
        files, size = checkpoint_size(rd)
        _err(f"run {rec.id}: resumes {parent.id} from its checkpoint ({files} files, "
             f"{size:,} bytes); target {plan.target_name} ({plan.backend.name}), model "
             f"{plan.model.describe()}, env {plan.env.name}")
        handle = runs.launch(plan, spec, on_prepared=lambda p: _err(
            f"env {plan.env.name}: {p.reason} [{p.env_key}]"))
        if args.detach:
            _err(f"started; follow with: runner logs {rec.id} -f")
            if policy.retries:
                _err(f"retries: {policy.retries}, by a watcher in the background (pid "
                     f"{spawn_watcher(runs, rec.id)}; its notes: {rec.run_dir / WATCH_LOG})")
            return rec.id
        last, st = follow(runs, plan, rec, handle, policy=policy)
        outcome["code"] = final_line(runs, last, st)
        return last

    compose_and_run(overrides, task, runs)
    return outcome["code"]
