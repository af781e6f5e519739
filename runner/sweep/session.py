"""A running sweep: jobs recorded, submitted as capacity allows, watched, cancelled together."""

from __future__ import annotations

import dataclasses
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from omegaconf import DictConfig

from runner import snapshot
from runner.backend import Capability, RunHandle, RunSpec, RunState, RunStatus
from runner.errors import UserError
from runner.launch import Plan, Runs
from runner.resume import RetryPolicy, announce_retry, record_attempt
from runner.rundir import RunDir, read_json, write_json_atomic
from runner.store import RunRecord
from runner.sweep.capacity import Capacity
from runner.sweep.keys import _digest, job_key
from runner.views import attempt_label, jobs_table, key_metrics

#: states of a job whose latest run `runner sweep SWEEP --resume` runs again
RESUMABLE = (RunState.FAILED, RunState.CANCELLED, RunState.LOST)
SKIPPED = "SKIPPED"  # a job whose key had already succeeded (``--skip-done``)


class SweepCancelled(KeyboardInterrupt):
    """The sweep was cancelled (Ctrl-C, or ``runner cancel SWEEP`` from another shell)."""


class JobFailed(RuntimeError):
    """What a sweeper sees as the result of a job that did not succeed."""


@dataclass
class Job:
    """One job of a sweep, as the launcher tracks it."""

    num: int  #: the job number Hydra gave it (``[job N]``)
    overrides: list[str]  #: the job's task overrides (``model.lr=0.1``)
    key: str  #: content key: config + code snapshot + env
    plan: Plan | None = None  #: None for a skipped job
    run_id: str | None = None  #: the run that executes (or, when skipped, executed) the job
    spec: RunSpec | None = None
    handle: RunHandle | None = None
    gpu: str | None = None  #: the GPU slot given to it, if the target lists GPUs
    state: str = RunState.QUEUED.value  #: a RunState value, or SKIPPED
    status: RunStatus | None = None  #: final status once ended
    summary: dict[str, float] = field(default_factory=dict)  #: final metrics
    offset: int = 0  #: how much of its log has been printed
    next_check: float = 0.0  #: when to ask its backend again (monotonic clock)
    attempt: int = 1  #: its run's attempt (a retry of a lost run is the next one)
    retry_at: float = 0.0  #: a retry starts no earlier than this (monotonic clock)
    started: float | None = None
    ended: float | None = None

    @property
    def done(self) -> bool:
        return self.state == SKIPPED or RunState(self.state).terminal

    @property
    def ok(self) -> bool:
        return self.state in (SKIPPED, RunState.SUCCEEDED.value)


def _same_params(overrides: Sequence[str], params: dict[str, Any]) -> bool:
    """True when a job's overrides set every one of ``params`` (numbers compared as numbers)."""
    given = dict(o.split("=", 1) for o in overrides if "=" in o)
    for key, want in params.items():
        got = given.get(key)
        if got is None:
            return False
        try:
            if float(got) != float(want):
                return False
        except (TypeError, ValueError):
            if got != str(want):
                return False
    return True


class Sweep:
    """One sweep: its ledger record, its snapshot, its jobs, and the loop that runs them."""

    def __init__(
        self, runs: Runs, *, sweep_id: str | None = None, fail_fast: bool = False,
        skip_done: bool = False, max_parallel: int | None = None, objective: str | None = None,
        show_logs: bool = True, poll: float = 0.1, out: TextIO | None = None,
        log_out: TextIO | None = None, argv: Sequence[str] = (), detach: bool = False,
    ) -> None:
        self.runs = runs
        self.store = runs.store
        self.sweep_id = sweep_id
        self.fail_fast = fail_fast
        self.skip_done = skip_done
        self.capacity = Capacity(max_parallel)
        self.objective = objective
        self.show_logs = show_logs
        self.poll = poll
        self.out = out or sys.stderr  # progress lines
        self.log_out = log_out or sys.stdout  # the jobs' logs, each line prefixed by [job N]
        self.argv = list(argv)
        #: hand the jobs to a target that queues them itself, then return (--detach)
        self.detach = detach
        self.detached = False  #: True once run() returned with the jobs left to their target
        self.jobs: list[Job] = []
        self.manifest_digest: str | None = None
        self._code_manifest: dict[str, Any] | None = None
        self._env_keys: dict[str, str] = {}
        self._gpus: dict[str, list[str] | None] = {}
        self._lock = threading.Lock()
        self.cancelled = False
        self.failed_fast = False
        self._active: list[Job] = []  # started by add(), before run() took over
        self._said_no_retries = False
        self.hydra_dir: Path | None = None  # Hydra's sweep folder (where sweepers write)
        self.began = time.time()
        if sweep_id is not None:
            info = self.info()
            self.manifest_digest = info.get("manifest_digest")

    def configure(self, *, max_parallel: int | None = None, objective: str | None = None,
                  show_logs: bool | None = None, poll: float | None = None,
                  hydra_dir: Path | None = None) -> None:
        """Apply the launcher's settings (``hydra.launcher.*``); None leaves one as it is."""
        if hydra_dir is not None:
            self.hydra_dir = hydra_dir
        if max_parallel is not None:
            self.capacity = Capacity(max_parallel)
        if objective is not None:
            if self.detach:
                raise UserError(
                    "--detach does not apply to an optimizing sweep: the sweeper needs each "
                    f"job's {objective} before it picks the next.",
                    "run it in the foreground, or in the background with nohup or tmux.")
            self.objective = objective
        if show_logs is not None:
            self.show_logs = show_logs
        if poll is not None:
            self.poll = poll

    def abort(self) -> None:
        """Cancel every job that started and record the others as CANCELLED (an interrupt
        while the sweeper was still handing jobs over)."""
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self._cancel_all([j for j in self.jobs if j.handle is not None and not j.done],
                             "cancelled")
            for job in self.jobs:
                if job.handle is None and not job.done:
                    self._end(job, RunStatus(RunState.CANCELLED, message="cancelled before it started"))
        finally:
            signal.signal(signal.SIGINT, old)
        self.cancelled = True

    # -- the sweep's folder and record ------------------------------------------------
    @property
    def home(self) -> Path:
        assert self.sweep_id is not None
        return self.store.home / "sweeps" / self.sweep_id

    @property
    def code_dir(self) -> Path:
        return self.home / "code"

    @property
    def code_manifest(self) -> dict[str, Any] | None:
        """The manifest of the sweep's code snapshot (what a remote target ships by content)."""
        if self._code_manifest is None:
            self._code_manifest = read_json(self.home / "manifest.json")
        return self._code_manifest

    def info(self) -> dict[str, Any]:
        assert self.sweep_id is not None
        rec = self.store.sweep(self.sweep_id)
        if rec is None:
            raise UserError(f"no sweep '{self.sweep_id}' in the ledger at {self.store.home}.",
                            "`runner runs` shows each run's sweep; sweep ids start with 's'.")
        return dict(rec["info"])

    def _begin(self, target: str, plan: Plan | None = None) -> None:
        """Create the sweep record and take the one code snapshot all its jobs run (without
        the first job's data inputs: they travel as data)."""
        if self.sweep_id is not None:
            return
        root = self.runs.project_root
        with tempfile.TemporaryDirectory(dir=self.store.home, prefix=".snapshot-") as tmp:
            data = tuple(Path(d.source) for d in (plan.data_inputs if plan else ()) if not d.on_target)
            manifest = snapshot.take(root, Path(tmp) / "code", exclude=data)
            self.manifest_digest = _digest(manifest)
            self.sweep_id = self.store.create_sweep(target, {
                "argv": self.argv, "manifest_digest": self.manifest_digest,
                "objective": self.objective, "files": len(manifest),
            })
            self.home.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / "code"), self.code_dir)
        write_json_atomic(self.home / "manifest.json", manifest)
        self._code_manifest = manifest
        self._say(f"sweep {self.sweep_id}: code snapshot of {len(manifest)} files taken once for "
                  f"every job; cancel with Ctrl-C or `runner cancel {self.sweep_id}`")

    def _cancel_marker(self) -> Path:
        return self.home / "cancel"

    # -- adding jobs --------------------------------------------------------------------
    def _env_key(self, plan: Plan) -> str:
        """Prepare each distinct (target, env) once per sweep; its key goes into job keys."""
        memo = _digest([plan.target_name, dataclasses.asdict(plan.backend.config),  # type: ignore[call-overload]
                        repr(plan.env)])
        if memo not in self._env_keys:
            with tempfile.TemporaryDirectory(prefix="runner-sweep-prepare-") as tmp:
                spec = RunSpec(run_id="prepare", run_dir=Path(tmp), target_name=plan.target_name,
                               target=plan.backend.config, env=plan.env, model=plan.model.name,
                               project_root=self.runs.project_root, gpus=plan.env.gpus)
                prepared = plan.backend.prepare(spec)
            self._say(f"env {plan.env.name} on {plan.target_name}: {prepared.reason} "
                      f"[{prepared.env_key}]")
            self._env_keys[memo] = prepared.env_key
        return self._env_keys[memo]

    def add(self, num: int, cfg: DictConfig, overrides: list[str], choices: dict[str, str],
            *, key: str | None = None, continues: RunRecord | None = None) -> Job:
        """Plan, key and record one job (QUEUED), or mark it skipped when its key succeeded.

        Called by the launcher while Hydra's config of that job is current, so interpolations
        that need it resolve. With ``continues`` (``runner sweep --resume`` of a job whose run
        left a checkpoint) the job's run goes on from that run's checkpoint and metrics.
        """
        plan = self.runs.plan(cfg, overrides, choices)
        policy = RetryPolicy.of(plan)  # a bad retries/retry_oom: an error before any record
        if self.detach and Capability.ARRAY not in plan.backend.capabilities:
            raise UserError(
                f"--detach does not apply to a sweep on target {plan.target_name}: the launcher "
                "starts its queued jobs as slots free up, so it runs until the sweep ends.",
                "targets whose scheduler queues the jobs itself (slurm) take a detached sweep; "
                "elsewhere run it in the background (nohup, tmux): `runner sweep SWEEP` shows it.")
        if self.detach and policy.retries and not self._said_no_retries:
            self._said_no_retries = True
            self._say(f"note: retries={policy.retries} applies while a process follows the "
                      "sweep; this one is detached, so a lost job is not retried by itself: "
                      "`runner sweep SWEEP --resume` continues it from its checkpoint.")
        self._begin(plan.target_name, plan)
        assert self.sweep_id is not None and self.manifest_digest is not None
        self._check_not_cancelled()
        values = plan.values
        # the data a job reads is part of what it is: the same path with new content is new
        data = {d.key: d.digest or d.given for d in plan.data_inputs}
        key = key or job_key({**values, "_data": data} if data else values,
                             self.manifest_digest, self._env_key(plan))
        job = Job(num=num, overrides=list(overrides), key=key, plan=plan)
        jobs_dir = self.home / "jobs"
        jobs_dir.mkdir(exist_ok=True)
        write_json_atomic(jobs_dir / f"{num}.json", {
            "num": num, "key": key, "overrides": list(overrides), "choices": dict(choices),
            "config": values,
        })
        done = self.store.find_by_job_key(key, RunState.SUCCEEDED) if self.skip_done else None
        if done is not None:
            job.run_id, job.state, job.summary = done.id, SKIPPED, dict(done.summary)
            job.plan = None
            self._say(f"[job {num}] skipped: the same job succeeded as run {done.id} "
                      f"({self._label(job)})")
        else:
            target = plan.target_name
            if target not in self._gpus:
                self._gpus[target] = plan.backend.gpu_devices()
            rec, spec = self.runs.record(plan, sweep_id=self.sweep_id, job_key=key,
                                         code_from=self.code_dir,
                                         code_manifest=self.code_manifest, parent=continues)
            job.run_id, job.spec = rec.id, spec
            goes_on = f", continues {continues.id} from its checkpoint" if continues else ""
            self._say(f"[job {num}] {rec.id} QUEUED  {self._label(job)}{goes_on}")
            # start at once when there is room: the next jobs are recorded while it runs
            # (a target that takes many runs as one submission gets them all in run())
            if (not self.failed_fast and Capability.ARRAY not in plan.backend.capabilities
                    and self.capacity.free(plan) and self._start(job)):
                self._active.append(job)
        self.jobs.append(job)
        return job

    def add_invalid(self, num: int, overrides: list[str], error: UserError) -> Job:
        """A job whose own config is wrong: FAILED at once with the error, no run made."""
        job = Job(num=num, overrides=list(overrides), key="", state=RunState.FAILED.value,
                  status=RunStatus(RunState.FAILED, message=error.message), ended=time.time())
        hints = "".join(f"\n[job {num}]   {h}" for h in error.hints)
        self._say(f"[job {num}] FAILED before a run was made ({self._label(job)}): "
                  f"{error.message}{hints}")
        self.jobs.append(job)
        return job

    # -- running ------------------------------------------------------------------------
    def run(self, jobs: Sequence[Job]) -> list[Job]:
        """Submit ``jobs`` as capacity allows and wait for all of them to end."""
        pending = [j for j in jobs if not j.done and j.handle is None]
        active = [j for j in jobs if not j.done and j.handle is not None]
        try:
            pending = self._start_arrays(pending, active)
            if self.detach:  # every job went to a scheduler that queues it (add() checked)
                self.detached = True
                return list(jobs)
            while pending or active:
                self._check_not_cancelled()
                for job in list(pending):
                    assert job.plan is not None
                    if self.failed_fast:
                        pending.remove(job)
                        self._end(job, RunStatus(RunState.CANCELLED,
                                                 message="not started: an earlier job failed (--fail-fast)"))
                        continue
                    if job.retry_at > time.monotonic() or not self.capacity.free(job.plan):
                        continue
                    pending.remove(job)
                    if self._start(job):
                        active.append(job)
                now = time.monotonic()
                for job in list(active):
                    if job.next_check > now:
                        continue
                    assert job.handle is not None
                    job.next_check = now + max(self.poll, type(job.handle).poll_interval)
                    if self._watch(job):
                        active.remove(job)
                        if not job.done:  # lost, and it goes again once its backoff passed
                            pending.append(job)
                            continue
                        if not job.ok and self.fail_fast and not self.failed_fast:
                            self.failed_fast = True
                            self._say(f"[job {job.num}] {job.state}: --fail-fast, cancelling the rest")
                            self._cancel_all(active, "cancelled: an earlier job failed (--fail-fast)")
                            active.clear()
                if pending or active:
                    time.sleep(self.poll)
        except KeyboardInterrupt:
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan jobs
            try:
                self.cancelled = True
                self._say(f"\nsweep {self.sweep_id}: cancelling {len(active)} running and "
                          f"{len(pending)} queued jobs ...")
                for job in pending:
                    self._end(job, RunStatus(RunState.CANCELLED, message="cancelled before it started"))
                self._cancel_all(active, "cancelled")
            finally:
                signal.signal(signal.SIGINT, old)
            raise SweepCancelled() from None
        return list(jobs)

    def _start_arrays(self, pending: list[Job], active: list[Job]) -> list[Job]:
        """Hand the jobs of each target that takes many runs as one submission
        (:attr:`Capability.ARRAY`: a Slurm job array) over together; the target keeps at most
        ``max_parallel`` of them running. Returns the jobs still to start one by one."""
        groups: list[list[Job]] = []
        for job in pending:
            assert job.plan is not None
            if Capability.ARRAY not in job.plan.backend.capabilities or self.failed_fast:
                continue
            for group in groups:  # the same target with the same keys: one submission
                first = group[0].plan
                assert first is not None
                if (first.target_name == job.plan.target_name
                        and first.backend.config == job.plan.backend.config):
                    group.append(job)
                    break
            else:
                groups.append([job])
        for group in groups:
            plan = group[0].plan
            assert plan is not None
            specs = []
            for job in group:
                assert job.spec is not None and job.run_id is not None
                if self.store.get(job.run_id).state.terminal:  # cancelled while it was queued
                    rec = self.store.get(job.run_id)
                    job.state, job.status = rec.state.value, RunStatus(rec.state, message=rec.message)
                    continue
                specs.append(job.spec)
            group = [j for j in group if not j.done]
            for job in group:
                pending.remove(job)
            if not group:
                continue
            now = time.time()
            try:
                handles = self.runs.launch_many(plan, specs, max_parallel=self.capacity.max_parallel)
            except Exception as e:
                msg = e.message if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
                for job in group:
                    job.status = RunStatus(RunState.FAILED, message=f"could not start: {msg}")
                    job.state, job.ended = RunState.FAILED.value, time.time()
                    self._say(f"[job {job.num}] {job.run_id} FAILED: could not start: {msg}")
                if self.fail_fast:
                    self.failed_fast = True
                continue
            for job, handle in zip(group, handles, strict=True):
                self.capacity.take(job.plan, None)  # type: ignore[arg-type]
                job.handle, job.started = handle, now
                self._transition(job, RunState.RUNNING.value, " (array)")
                active.append(job)
        return pending

    def _check_not_cancelled(self) -> None:
        if self.sweep_id is not None and self._cancel_marker().exists():
            raise SweepCancelled()

    def _start(self, job: Job) -> bool:
        """Submit one job; False when it could not start (recorded as FAILED) or was
        cancelled while it waited."""
        assert job.plan is not None and job.spec is not None and job.run_id is not None
        rec = self.store.get(job.run_id)
        if rec.state.terminal:  # cancelled from another shell while it was queued
            job.state, job.status = rec.state.value, RunStatus(rec.state, message=rec.message)
            self._say(f"[job {job.num}] {job.run_id} {rec.state.value} before it started")
            return False
        job.gpu = self.capacity.take(job.plan, self._gpus.get(job.plan.target_name))
        if job.gpu is not None:
            req = job.spec.request.with_gpus(job.gpu) if job.spec.request else None
            job.spec = dataclasses.replace(job.spec, gpus=job.gpu, request=req)
            if req is not None:
                RunDir(job.spec.run_dir).write_request(req.to_dict())
        job.started = time.time()
        try:
            job.handle = self.runs.launch(job.plan, job.spec)
        except KeyboardInterrupt:
            self.capacity.give_back(job.plan, job.gpu)
            raise
        except Exception as e:
            self.capacity.give_back(job.plan, job.gpu)
            msg = e.message if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            job.status = RunStatus(RunState.FAILED, message=f"could not start: {msg}")
            job.state, job.ended = RunState.FAILED.value, time.time()
            self._say(f"[job {job.num}] {job.run_id} FAILED: could not start: {msg}")
            if self.fail_fast:
                self.failed_fast = True
            return False
        if self.store.get(job.run_id).state.terminal:  # a cancel raced the submit
            job.handle.cancel()
        gpu = f" on GPU {job.gpu}" if job.gpu is not None else ""
        self._transition(job, RunState.RUNNING.value, gpu)
        return True

    def _watch(self, job: Job) -> bool:
        """Print new log lines and state changes of a running job; True once it ended."""
        assert job.handle is not None and job.run_id is not None and job.plan is not None
        try:
            st = job.handle.status()
        except Exception as e:  # a target that does not answer once is not a failed job
            self._say(f"[job {job.num}] warning: cannot check run {job.run_id}: {e}")
            return False
        self._print_logs(job)
        if not st.terminal:
            return False
        self._print_logs(job)
        self.runs.finish(job.run_id, st)
        self.capacity.give_back(job.plan, job.gpu)
        if not self._retry(job, st):
            self._end(job, st)
        return True

    def _retry(self, job: Job, st: RunStatus) -> bool:
        """When the job's run ended LOST (or OOM-killed, where ``retry_oom`` asks) and its
        ``retries`` allow another attempt: record that attempt (QUEUED, continuing the run from
        its checkpoint) and put it in ``job``, to start once its backoff has passed."""
        assert job.plan is not None and job.run_id is not None
        policy = RetryPolicy.of(job.plan)
        rec = self.store.get(job.run_id)
        if not policy.wants(st, rec.attempt):
            return False
        wait, note = announce_retry(rec, st, policy)
        self._say(f"[job {job.num}] {note}")
        new, spec = record_attempt(self.runs, job.plan, rec)
        job.run_id, job.spec, job.handle, job.gpu = new.id, spec, None, None
        job.attempt, job.offset, job.state = new.attempt, 0, RunState.QUEUED.value
        job.retry_at = time.monotonic() + wait
        self._say(f"[job {job.num}] {new.id} QUEUED  attempt {new.attempt}, continues {rec.id}")
        return True

    def _print_logs(self, job: Job) -> None:
        assert job.handle is not None
        for offset, line in job.handle.logs(job.offset):
            job.offset = offset
            if self.show_logs:
                with self._lock:
                    self.log_out.write(f"[job {job.num}] {line if line.endswith(chr(10)) else line + chr(10)}")
        self.log_out.flush()

    def _end(self, job: Job, st: RunStatus) -> None:
        if job.run_id is not None and not self.store.get(job.run_id).state.terminal:
            if job.spec is not None:
                RunDir(job.spec.run_dir).write_status(st)
            self.runs.finish(job.run_id, st)
        rec = self.store.get(job.run_id) if job.run_id else None
        job.status = st
        job.summary = dict(rec.summary) if rec else {}
        job.ended = time.time()
        tail = f" ({st.message})" if st.message and st.state != RunState.SUCCEEDED else ""
        metrics = key_metrics(job.summary, self.objective)
        self._transition(job, st.state.value, tail + (f": {metrics}" if metrics else ""))

    def _cancel_all(self, active: Sequence[Job], why: str) -> None:
        """Cancel running jobs in parallel (each cancel waits until its run stopped)."""
        def one(job: Job) -> None:
            assert job.handle is not None and job.plan is not None
            try:
                st = job.handle.cancel()
            except Exception as e:
                self._say(f"[job {job.num}] could not cancel run {job.run_id}: {e}")
                return
            if st.state == RunState.CANCELLED and not st.message.startswith(why):
                st = RunStatus(RunState.CANCELLED, st.exit_code, st.oom, why)
            self._print_logs(job)
            assert job.run_id is not None
            self.runs.finish(job.run_id, st)
            self.capacity.give_back(job.plan, job.gpu)
            self._end(job, st)

        threads = [threading.Thread(target=one, args=(j,)) for j in active if j.handle is not None]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    # -- output ---------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        with self._lock:
            self.out.write(text + "\n")
            self.out.flush()

    def _label(self, job: Job) -> str:
        return " ".join(job.overrides) or "(no overrides)"

    def _transition(self, job: Job, state: str, tail: str = "") -> None:
        job.state = state
        self._say(f"[job {job.num}] {job.run_id} {state}{tail}")

    def result(self, job: Job) -> Any:
        """What a sweeper gets from a job: the objective metric's value when
        ``objective`` is set, else the job's final metrics. Raises :class:`JobFailed`."""
        if not job.ok:
            st = job.status
            raise JobFailed(f"job {job.num} ({self._label(job)}): run {job.run_id} {job.state}"
                            + (f": {st.message}" if st and st.message else ""))
        if self.objective is None:
            return dict(job.summary)
        if self.objective not in job.summary:
            raise JobFailed(
                f"job {job.num}: run {job.run_id} logged no metric '{self.objective}' "
                f"(hydra.launcher.objective); it logged: {', '.join(job.summary) or 'nothing'}.")
        return job.summary[self.objective]

    def report_optimum(self) -> None:
        """Say what an optimizing sweeper (Optuna) found, and keep its
        ``optimization_results.yaml`` with the sweep (Hydra's sweep folder is shared by every
        sweep of the project, so the next one would overwrite it)."""
        import yaml

        if self.hydra_dir is None or self.sweep_id is None:
            return
        src = self.hydra_dir / "optimization_results.yaml"
        try:
            if src.stat().st_mtime < self.began:
                return
            text = src.read_text()
        except OSError:
            return
        dest = self.home / src.name
        dest.write_text(text)
        found = yaml.safe_load(text) or {}
        what = self.objective or "value"
        if isinstance(found.get("best_params"), dict):
            params = {str(k): v for k, v in found["best_params"].items()}
            job = next((j for j in self.jobs if _same_params(j.overrides, params)), None)
            where = f" (job {job.num}, run {job.run_id})" if job is not None else ""
            shown = " ".join(f"{k}={v}" for k, v in params.items())
            self._say(f"best: {shown}: {what}={found.get('best_value')}{where}")
        elif isinstance(found.get("solutions"), list):
            self._say(f"best: {len(found['solutions'])} trade-offs of {what} (a Pareto front)")
        self._say(f"the sweeper's results: {dest}")

    def exit_code(self) -> int:
        if self.detached:
            return 0
        if self.cancelled:
            return 130
        return 0 if all(j.ok for j in self.jobs) else 1

    def print_table(self, console: Any = None) -> None:
        """The table of the sweep's jobs (on stderr unless ``console`` says otherwise)."""
        if not self.jobs:
            return
        jobs_table(self.sweep_id or "?", [(j.num, j.overrides, attempt_label(j.run_id, j.attempt),
                                           j.state, j.summary,
                                           (j.ended or time.time()) - j.started
                                           if j.started else None) for j in self.jobs],
                   self.objective, console)
