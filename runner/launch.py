"""The client side of a run: plan it from a composed config, record it, prepare, submit,
follow, finish, and reconcile the ledger with what the targets say."""

from __future__ import annotations

import dataclasses
import getpass
import os
import platform
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from runner import __version__, snapshot
from runner import config as conf
from runner.backend import Backend, EnvSpec, Prepared, RunHandle, RunSpec, RunState, RunStatus
from runner.data import collect as collect_data
from runner.errors import UserError
from runner.model import Model
from runner.proc import identity_alive
from runner.registry import Registry, collect, make_plugin_manager
from runner.request import DataInput, RunRequest
from runner.rundir import CONFIG, META, RunDir, write_json_atomic
from runner.secrets import (
    check_config,
    env_ref,
    env_refs,
    env_values,
    is_secret_key,
    keep_references,
    mask_values,
    redact,
    resolve_refs,
    to_references,
)
from runner.store import LOCATOR_JSON, RunRecord, Store, find_project_root


@dataclass
class Plan:
    """One job, composed and validated, ready to be recorded and submitted."""

    cfg: DictConfig
    overrides: list[str]
    choices: dict[str, str]
    target_name: str
    backend: Backend
    env: EnvSpec
    model: Model
    seed: int
    data: dict[str, Any]  #: the data config (paths as the user gave them)
    values: dict[str, Any]  #: the whole config as plain values (see :func:`_job_values`)
    data_inputs: tuple[DataInput, ...] = ()  #: the files and folders the run reads
    #: the config as plain values, unresolved (``${...}`` as written), read once
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def gpus(self) -> str | None:
        """The GPUs the run gets unless a sweep narrows them: the env's, else the target's.
        ``prepare`` checks exactly these (its GPU preflight), so it never says "cached" for
        a run that submit would then refuse."""
        return self.env.gpus or getattr(self.backend.config, "gpus", None)


def _unresolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain values with its interpolations as written (no ``hydra`` section)."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(raw, dict)
    raw.pop("hydra", None)
    return raw  # type: ignore[return-value]


def _job_values(cfg: DictConfig, raw: dict[str, Any]) -> dict[str, Any]:
    """The config as plain values, resolved, except that every ``${oc.env:VAR}`` (whatever its
    key) and every copy of such a value travels as a reference (the worker resolves them on the
    target): see :func:`runner.secrets.keep_references`. ``raw`` is :func:`_unresolved`'s."""
    done = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(done, dict)
    done.pop("hydra", None)
    out = keep_references(raw, done)
    assert isinstance(out, dict)
    return out


def _check_config(raw: dict[str, Any], choices: dict[str, str], dirs: list[Path]) -> None:
    """Refuse a literal value under a secret-looking key in the composed config files."""
    check_config(raw, lambda key: _file_setting(key, choices, dirs))


def _file_setting(key: str, choices: dict[str, str], dirs: list[Path]) -> str:
    """The config file that most likely set ``key``: the chosen group file when it names the
    key's last part, else the first file of the search path that does."""
    group, leaf = key.split(".", 1)[0], key.rsplit(".", 1)[-1]
    candidates: list[Path] = []
    if group in conf.GROUPS and group in choices:
        candidates.append(Path(conf.config_file(group, choices[group], dirs)))
    for d in dirs:
        candidates += [d / "config.yaml", *sorted((d / group).glob("*.yaml"))]
        candidates += sorted(d.glob("**/*.yaml"))
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        if f"{leaf}:" in text:
            return str(path)
    return str(candidates[0]) if candidates else "the composed config"


class Runs:
    """The ledger plus the plugins: everything the CLI and the sweep launcher do with runs."""

    def __init__(self, project_root: Path | None = None, *, registry: Registry | None = None,
                 pm: Any = None) -> None:
        self.project_root = project_root or find_project_root()
        self.store = Store.for_project(self.project_root)
        self.pm = pm or make_plugin_manager()
        self.registry = registry or collect(self.pm)
        self.dirs = conf.conf_dirs(self.project_root)

    # -- planning ---------------------------------------------------------------
    def plan(self, cfg: DictConfig, overrides: list[str], choices: dict[str, str]) -> Plan:
        target_name = choices.get("target", "?")
        backend_cls, target_conf = conf.target_config(cfg, target_name, self.registry, self.dirs,
                                                      overrides)
        env = conf.env_spec(cfg, choices.get("env", "?"), self.dirs, self.project_root, overrides)
        model = conf.model_instance(cfg, choices.get("model", "?"), self.registry, self.dirs,
                                    overrides)
        raw = _unresolved(cfg)
        _check_config(raw, choices, self.dirs)
        values = _job_values(cfg, raw)
        data = values.get("data") or {}
        resolved_data = resolve_refs(data)  # the client reads the data; references travel
        before = dict(resolved_data)
        model.validate(self.project_root, resolved_data)
        for k, v in resolved_data.items():  # what validation filled in (a word index found
            if k not in before or before[k] != v:  # beside the reviews) travels with the run
                data[k] = v
        seed = cfg.get("seed", 0)
        if not isinstance(seed, int):
            raise UserError(f"seed: must be an integer, got {seed!r}.")
        inputs = collect_data(resolved_data, type(model).data_paths, cwd=Path.cwd(),
                              cache_path=self.store.home / "cache" / "file-hashes.db",
                              max_mb=getattr(target_conf, "max_data_mb", None),
                              target=f"target {target_name}")
        return Plan(cfg, list(overrides), dict(choices), target_name, backend_cls(target_conf),
                    env, model, seed, data, values, inputs, raw)

    def backend_for(self, record: RunRecord) -> Backend:
        meta = RunDir(record.run_dir).meta()
        cls = self.registry.backend(record.backend, where=f"run {record.id} was made with ")
        values = meta.get("target_config") or {}
        names = {f.name for f in dataclasses.fields(cls.Config)}
        # the recorded target config goes through the backend's schema again, as at submit
        target = conf._validate(cls.Config, {k: v for k, v in values.items() if k in names},
                                what=f"backend '{record.backend}'",
                                path=f"run {record.id} (meta.json)", prefix="target")
        return cls(target)

    # -- starting ---------------------------------------------------------------
    def record(self, plan: Plan, *, sweep_id: str | None = None, job_key: str | None = None,
               code_from: Path | None = None, code_manifest: dict[str, Any] | None = None,
               gpus: str | None = None, parent: RunRecord | None = None,
               attempt: int = 1) -> tuple[RunRecord, RunSpec]:
        """Create the ledger row and the run directory (request, config, meta, code).

        With ``parent`` (``runner resume``, a retry) the new run continues that one: it is
        linked to it in the ledger, and starts with a copy of its checkpoints and metrics."""
        rec = self.store.create_run(target=plan.target_name, backend=plan.backend.name,
                                    model=plan.model.name, sweep_id=sweep_id, job_key=job_key,
                                    parent=parent.id if parent else None, attempt=attempt)
        rd = RunDir(rec.run_dir)
        values = plan.values
        if code_from is not None:
            import shutil

            shutil.copytree(code_from, rd.code, symlinks=True)
            manifest: dict[str, Any] | None = code_manifest
        else:
            # data the run declares travels as data (by content, read-only), not again as code
            manifest = snapshot.take(self.project_root, rd.code, exclude=tuple(
                Path(d.source) for d in plan.data_inputs if not d.on_target))
        target_conf = dataclasses.asdict(plan.backend.config)  # type: ignore[call-overload]
        gpus = gpus if gpus is not None else plan.gpus
        model_config = _model_config(plan, values.get("model") or {})
        env_config = values.get("env") or {}
        request = RunRequest(
            run_id=rec.id, model=plan.model.name, model_config=model_config,
            data=plan.data, data_inputs=plan.data_inputs, env=env_config,
            seed=plan.seed, gpus=gpus, require_gpu=plan.env.require_gpu,
            # every variable the config references: the target receives it, the worker masks it
            secret_env=tuple(sorted(env_refs([values, model_config]))),
            code_manifest=manifest)
        rd.write_request(request.to_dict())
        # every variable the config references, the target's too: masked in what people read
        secrets = env_values(env_refs(plan.raw))
        hidden = list(secrets.values())
        (rd.path / CONFIG).write_text(
            yaml.safe_dump(mask_values(redact(values), hidden), sort_keys=False))
        write_json_atomic(rd.path / META, mask_values({
            "overrides": [redact_override(to_references(o, secrets)) for o in plan.overrides],
            "choices": plan.choices,
            "target_config": redact(target_conf),
            "git": snapshot.git_state(self.project_root),
            "code_manifest": manifest,
            "client": {
                "host": socket.gethostname(), "user": getpass.getuser(),
                "python": platform.python_version(), "runner": __version__,
                "argv": [redact_override(to_references(a, secrets)) for a in sys.argv[1:]],
                "cwd": os.getcwd(), "time": time.time(), "pid": os.getpid(),
            },
            "sweep_id": sweep_id,
            "model_description": plan.model.describe(),
            "data_inputs": [d.record() for d in plan.data_inputs],
            "reads_data": type(plan.model).reads_data_config or bool(plan.data_inputs),
            **({"parent": parent.id, "attempt": attempt} if parent else {}),
        }, hidden))
        if parent is not None:
            from runner.checkpoint import continue_from

            continue_from(RunDir(parent.run_dir), rd)
        spec = RunSpec(run_id=rec.id, run_dir=rd.path, target_name=plan.target_name,
                       target=plan.backend.config, env=plan.env, model=plan.model.name,
                       project_root=self.project_root, gpus=gpus,
                       labels={"sweep": sweep_id} if sweep_id else {}, request=request)
        return rec, spec

    def launch(self, plan: Plan, spec: RunSpec, *, on_prepared: Callable[[Prepared], None] | None = None
               ) -> RunHandle:
        """Prepare and submit a recorded run; a failure is recorded as FAILED and re-raised."""
        try:
            prepared = self._prepare(plan, spec)
            if on_prepared:
                on_prepared(prepared)
            handle = plan.backend.submit(spec, prepared)
        except BaseException as e:
            self._failed_to_start(spec, e)
            raise
        self._submitted(spec, handle)
        return handle

    def launch_many(self, plan: Plan, specs: Sequence[RunSpec], *, max_parallel: int | None = None
                    ) -> list[RunHandle]:
        """Prepare recorded runs of one target and submit them together
        (:meth:`Backend.submit_many`); a failure is recorded as FAILED for every run that
        did not start, and re-raised."""
        items: list[tuple[RunSpec, Prepared]] = []
        try:
            for spec in specs:
                items.append((spec, self._prepare(plan, spec)))
            handles = plan.backend.submit_many(items, max_parallel)
        except BaseException as e:
            for spec in specs:
                self._failed_to_start(spec, e)
            raise
        for spec, handle in zip(specs, handles, strict=True):
            self._submitted(spec, handle)
        return handles

    def _prepare(self, plan: Plan, spec: RunSpec) -> Prepared:
        self.store.update(spec.run_id, state=RunState.PREPARING)
        RunDir(spec.run_dir).write_status(RunStatus(RunState.PREPARING))
        self.pm.hook.runner_before_prepare(spec=spec)
        plan.backend.check_data(spec)
        prepared = plan.backend.prepare(spec)
        self.store.update(spec.run_id, env_key=prepared.env_key)
        return prepared

    def _failed_to_start(self, spec: RunSpec, e: BaseException) -> None:
        msg = e.message if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        if isinstance(e, KeyboardInterrupt):
            st = RunStatus(RunState.CANCELLED, message="cancelled before it started")
        else:
            st = RunStatus(RunState.FAILED, message=f"could not start: {msg}")
        RunDir(spec.run_dir).write_status(st)
        self.finish(spec.run_id, st)

    def _submitted(self, spec: RunSpec, handle: RunHandle) -> None:
        self.store.update(spec.run_id, locator=handle.locator, state=RunState.RUNNING)
        # the run directory holds how to reattach too: a rebuilt ledger can follow the run
        write_json_atomic(RunDir(spec.run_dir).path / LOCATOR_JSON, handle.locator)
        try:
            self.pm.hook.runner_after_submit(spec=spec, handle=handle)
        except Exception as e:  # the run is already going; report, never kill it
            print(f"warning: a runner_after_submit hook failed: {e}", file=sys.stderr)

    # -- observing --------------------------------------------------------------
    def handle(self, record: RunRecord) -> RunHandle | None:
        if record.locator is None:
            return None
        return self.backend_for(record).reattach(record.id, record.run_dir, record.locator)

    def refresh(self, record: RunRecord) -> RunRecord:
        """Ask the target for the truth about a non-terminal run and record it."""
        if record.state.terminal:
            return record
        handle = self.handle(record)
        if handle is None:
            return self._refresh_unsubmitted(record)
        st = handle.status()
        if st.terminal:
            self.finish(record.id, st)
        elif st.state != record.state:
            self.store.update(record.id, state=st.state)
        return self.store.get(record.id)

    def _refresh_unsubmitted(self, record: RunRecord) -> RunRecord:
        """A run recorded but not (yet) handed to its backend: fine while its creator lives.
        Once the creator is gone, the run directory is the evidence: a final status there is
        the truth; a worker that reported RUNNING started (its handle was never recorded);
        only a run with neither is LOST."""
        creator = record.creator or RunDir(record.run_dir).meta().get("client") or {}
        if identity_alive(creator):
            return record
        rd = RunDir(record.run_dir)
        st = rd.status()
        if st is not None and st.terminal:
            self.finish(record.id, st)
        elif st is not None and st.state == RunState.RUNNING:
            if record.state != RunState.RUNNING:
                self.store.update(record.id, state=RunState.RUNNING)
        else:
            lost = RunStatus(RunState.LOST, message="its client ended before the run was submitted "
                                                    "(nothing of it started)")
            rd.write_status(lost)
            self.finish(record.id, lost)
        return self.store.get(record.id)

    def reconcile(self) -> list[RunRecord]:
        """Refresh every run the ledger thinks is still going; return those that changed.

        A target that cannot be reached is tried once per command: its other runs keep their
        last known state, and one line says so (no traceback, no wait per run)."""
        changed = []
        unreachable: dict[str, list[str]] = {}
        for rec in self.store.list(states=(RunState.QUEUED, RunState.PREPARING, RunState.RUNNING)):
            if rec.target in unreachable:
                unreachable[rec.target].append(rec.id)
                continue
            try:
                new = self.refresh(rec)
            except Exception as e:  # one unreachable target must not hide the others
                why = e.message if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
                print(f"warning: could not check run {rec.id} on target {rec.target}: "
                      f"{why.splitlines()[0] if why else type(e).__name__}", file=sys.stderr)
                unreachable[rec.target] = []
                continue
            if new.state != rec.state:
                changed.append(new)
        for target, skipped in unreachable.items():
            if skipped:
                print(f"  {len(skipped)} more run(s) on target {target} keep their last known "
                      "state until it answers", file=sys.stderr)
        return changed

    def finish(self, run_id: str, status: RunStatus) -> None:
        """Record a terminal status (once) and tell the plugins."""
        rec = self.store.get(run_id)
        if rec.state.terminal:
            return
        summary = RunDir(rec.run_dir).summary()
        if self.store.update(run_id, only_if_active=True, state=status.state,
                             exit_code=status.exit_code, oom=int(status.oom),
                             message=status.message, summary=summary, finished=time.time()):
            self.pm.hook.runner_run_finished(run_id=run_id, status=status, summary=summary)

    def follow(self, handle: RunHandle, offset: int = 0, *, poll: float = 0.2
               ) -> Iterator[tuple[int, str]]:
        """Yield log lines until the run ends (then the rest of the log). Polls fast at first
        (short runs end quickly) and backs off to ``poll`` seconds."""
        delay = 0.02
        while True:
            ended = handle.status().terminal
            for item in handle.logs(offset):
                offset = item[0]
                yield item
            if ended:
                return
            time.sleep(delay)
            delay = min(poll, delay * 1.5)


def _model_config(plan: Plan, values: dict[str, Any]) -> dict[str, Any]:
    """The model's validated config as it travels: a key whose config value holds a
    ``${oc.env:VAR}`` keeps it, unless validation changed the value (a path made relative to
    the project); :meth:`runner.request.RunRequest.to_dict` turns the values of referenced
    variables left in it into references again."""
    out = dataclasses.asdict(plan.model.config)  # type: ignore[call-overload]
    for k, v in values.items():
        if k in out and env_refs(v) and resolve_refs(v) == out[k]:
            out[k] = v
    return dict(out)


def redact_override(text: str) -> str:
    key, sep, value = text.partition("=")
    if sep and is_secret_key(key) and not env_ref(value):
        return f"{key}=****"
    return redact(text) if sep else text
