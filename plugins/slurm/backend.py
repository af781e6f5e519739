"""The ``slurm`` backend: prepare (check the cluster, make the env ready) and submit (one
``sbatch`` per run, or one job array per sweep, returning at once), on this machine or on
the login node over SSH (``target.host``)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.backend import Backend, BackendConfig, Capability, Check, Prepared, RunHandle, RunSpec
from runner.errors import UserError
from runner.plugins._ssh import session_of
from runner.plugins.slurm import config as cf
from runner.plugins.slurm.client import slurm_for
from runner.plugins.slurm.cluster import check_accounts, check_target, refused
from runner.plugins.slurm.handle import SlurmHandle
from runner.plugins.slurm.jobdirs import dirs_for
from runner.plugins.slurm.script import SCRIPT, array_script, batch_script
from runner.rundir import LOG


class SlurmBackend(Backend):
    """Runs each run as one Slurm batch job on a cluster this machine submits to, or whose
    login node it reaches over SSH."""

    name = "slurm"
    Config = cf.SlurmConfig
    capabilities = frozenset({Capability.CANCEL, Capability.FOLLOW_LOGS, Capability.OUTPUTS,
                              Capability.GPU, Capability.VENV, Capability.ARRAY})
    config: cf.SlurmConfig

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        c = self.config
        cf.check(c)
        # a session opens on first use: a target's config is read without connecting
        session = session_of(c) if c.host else None
        self.slurm = slurm_for(c, session)
        self.dirs = dirs_for(c, session)
        self._checked: set[str | None] = set()

    def gpus_for(self, spec: RunSpec) -> str | None:
        """The GPU count a run asks Slurm for: the target's, else the one the env gives."""
        if self.config.gpus is not None:
            return str(self.config.gpus)
        if spec.gpus in (None, "", "none"):
            return None
        if not str(spec.gpus).isdigit():
            raise UserError(f"env {spec.env.name} asks for GPUs ({spec.gpus!r}); a Slurm run asks "
                            "for a number of them.",
                            "say how many each run gets: target.gpus=N")
        return str(spec.gpus)

    # -- environments ---------------------------------------------------------------------
    def prepare(self, spec: RunSpec) -> Prepared:
        gpus = self.gpus_for(spec)
        if gpus not in self._checked:
            check_target(self.config, gpus, self.slurm)
            if not self._checked:  # the account and QOS are the same for every run
                check_accounts(self.config, self.slurm)
            self._checked.add(gpus)
        return self.dirs.prepare_env(spec.env)

    # -- runs -------------------------------------------------------------------------------
    def _write_script(self, spec: RunSpec, prepared: Prepared, *, own_log: bool) -> str:
        """The run directory the job uses (made from the project's), with its batch script."""
        gpus = self.gpus_for(spec)
        work, staged = self.dirs.place(spec)
        self.dirs.write(f"{work}/{SCRIPT}", batch_script(
            run_id=spec.run_id, python=str(prepared.details.get("python") or sys.executable),
            run_dir=work, gpus_requested=cf.gres_request(self.config, gpus) is not None,
            warn_before_s=self.config.warn_before_s, own_log=own_log, staged_data=staged,
            time_limit=self.config.time_limit),
            mode=0o755)
        return work

    def _sbatch(self, *argv: str) -> str:
        r = self.slurm.run("sbatch", "--parsable", *argv, retry=False)  # never two jobs
        if not r.ok:
            raise refused(r.first_error())
        job_id = r.out.strip().split(";")[0]
        if not job_id:
            raise RuntimeError(f"sbatch printed no job id (stdout {r.out!r}, stderr {r.err!r})")
        return job_id

    def submit(self, spec: RunSpec, prepared: Prepared) -> RunHandle:
        work = self._write_script(spec, prepared, own_log=False)
        job_id = self._sbatch(
            f"--job-name=runner-{spec.run_id}", f"--output={work}/{LOG}", "--open-mode=append",
            f"--chdir={work}", *cf.sbatch_options(self.config, self.gpus_for(spec)),
            f"{work}/{SCRIPT}")
        return SlurmHandle(spec.run_id, self.slurm, job_id, self.dirs, work, spec.run_dir,
                           self.config.cancel_grace)

    def submit_many(self, items: Sequence[tuple[RunSpec, Prepared]], max_parallel: int | None
                    ) -> list[RunHandle]:
        """One job array: task N runs the N-th run's batch script (listed in a manifest), and
        Slurm runs at most ``max_parallel`` (and the target's ``slots``) tasks at once."""
        if not items:
            return []
        gpus = {self.gpus_for(spec) for spec, _ in items}
        if len(gpus) > 1:  # one array asks for one thing per task
            return super().submit_many(items, max_parallel)
        works = [self._write_script(spec, prepared, own_log=True) for spec, prepared in items]
        home = f"{self.dirs.arrays()}/{items[0][0].run_id}"
        self.dirs.write(f"{home}/manifest", "".join(f"{w}/{SCRIPT}\n" for w in works))
        self.dirs.write(f"{home}/array.sh", array_script(f"{home}/manifest"))
        limits = [n for n in (max_parallel, self.config.slots) if n and n > 0]
        spread = f"0-{len(items) - 1}" + (f"%{min(limits)}" if limits else "")
        array_id = self._sbatch(
            f"--array={spread}", f"--job-name=runner-sweep-{items[0][0].run_id}",
            f"--output={home}/task-%a.out", f"--chdir={home}",
            *cf.sbatch_options(self.config, gpus.pop()), f"{home}/array.sh")
        return [SlurmHandle(spec.run_id, self.slurm, f"{array_id}_{i}", self.dirs, work,
                            spec.run_dir, self.config.cancel_grace)
                for i, ((spec, _), work) in enumerate(zip(items, works, strict=True))]

    def reattach(self, run_id: str, run_dir: Path, locator: Mapping[str, Any]) -> RunHandle:
        work = str(locator.get("work_run_dir") or run_dir)
        return SlurmHandle(run_id, self.slurm, str(locator["job_id"]), self.dirs, work, run_dir,
                           self.config.cancel_grace)

    def gpu_devices(self) -> list[str] | None:
        return None  # Slurm places each run and picks its GPUs (CUDA_VISIBLE_DEVICES)

    def doctor(self) -> list[Check]:
        from runner.plugins.slurm.doctor import checks

        return checks(self)
