"""Where a Slurm target's jobs find their files, as the client reaches them: the run
directories the jobs use, the batch scripts and array manifests, the envs, and the way a
run's results come home.

:class:`LocalDirs`: ``runner`` runs on the login node; the run directory is the project's own,
or a copy in ``work_dir``. :class:`SSHDirs`: the login node is reached over SSH; everything in
``work_dir`` is written and read over that session (SFTP and commands), never through a local
path, so it works the same when the client shares no file system with the cluster:

    submit   the code objects the cluster lacks (by sha256) and the request files go up in one
             tar (see :mod:`.._shipping`), the data inputs by content (see :mod:`.._store`)
    watch    status.json and the cancel mark: one command; the log: an SFTP read from a byte
             offset, mirrored into the project's run directory
    end      the run directory (without code/) comes back as a tar, extracted safely, within
             ``max_fetch_mb``
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import sys
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

from runner.backend import EnvSpec, Prepared, RunSpec, RunStatus
from runner.bundle import cache_root
from runner.errors import UserError
from runner.plugins import _shipping as shipping
from runner.plugins._ssh import Session
from runner.plugins.slurm.config import SlurmConfig
from runner.plugins.slurm.envs import prepare_env, prepare_env_over_ssh
from runner.rundir import CANCEL, RunDir, safe_copy_tree
from runner.units import size_text

#: the folder of a run directory on the cluster that holds its data inputs (links to the trees)
DATA_LINKS = ".data"


class JobDirs(ABC):
    """The files of a target's jobs. Paths are strings: they name places on the cluster."""

    #: what ``host`` says in locators and messages ("" for this machine)
    host = ""

    @abstractmethod
    def prepare_env(self, env: EnvSpec) -> Prepared:
        """The interpreter a run uses, its virtualenv built where the nodes see it."""

    @abstractmethod
    def place(self, spec: RunSpec) -> tuple[str, str | None]:
        """The run directory a job uses (made from the project's), and the folder of its
        staged data inputs (None: read in place)."""

    @abstractmethod
    def arrays(self) -> str:
        """The folder where job arrays keep their manifests and scripts."""

    @abstractmethod
    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file (its folder is made)."""

    @abstractmethod
    def read(self, path: str, offset: int = 0) -> bytes | None:
        """A file's bytes past ``offset``; None when it does not exist."""

    @abstractmethod
    def remove(self, path: str) -> None:
        """Remove a file or folder (no error when it is gone)."""

    @abstractmethod
    def status(self, work: str) -> tuple[RunStatus | None, bool]:
        """(the run's status.json, whether a cancel was asked)."""

    @abstractmethod
    def write_status(self, work: str, st: RunStatus) -> RunStatus:
        """Record a verdict in the run's status.json; returns what it holds then (a final
        status the worker wrote meanwhile is kept)."""

    @abstractmethod
    def request_cancel(self, work: str) -> None:
        """Mark the run as cancelled by the user (the worker and the verdicts read it)."""

    @abstractmethod
    def bring_home(self, run_id: str, work: str, home: Path) -> None:
        """Copy what the run wrote into ``home`` (nothing when it is ``home``)."""

    def same(self, work: str, home: Path) -> bool:
        """Whether the job writes into ``home`` itself."""
        return False

    def doctor_dir(self) -> str:
        """A folder for the doctor's probe job (made), where runs live."""
        raise NotImplementedError


class LocalDirs(JobDirs):
    """Files on this machine (the login node), on a file system the compute nodes mount."""

    def __init__(self, work_dir: str | None) -> None:
        self.work_dir = Path(work_dir).expanduser() if work_dir else None

    def prepare_env(self, env: EnvSpec) -> Prepared:
        return prepare_env(env, str(self.work_dir) if self.work_dir else None)

    def place(self, spec: RunSpec) -> tuple[str, str | None]:
        if self.work_dir is None:
            return str(spec.run_dir), None
        work = self.work_dir / "runs" / spec.run_id
        safe_copy_tree(spec.run_dir, work)
        return str(work), None

    def arrays(self) -> str:
        return str((self.work_dir or cache_root() / "slurm") / "arrays")

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        os.chmod(path, mode)

    def read(self, path: str, offset: int = 0) -> bytes | None:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return None

    def remove(self, path: str) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)

    def status(self, work: str) -> tuple[RunStatus | None, bool]:
        rd = RunDir(Path(work))
        return rd.status(), rd.cancel_requested

    def write_status(self, work: str, st: RunStatus) -> RunStatus:
        RunDir(Path(work)).write_status(st)
        return st

    def request_cancel(self, work: str) -> None:
        RunDir(Path(work)).request_cancel()

    def bring_home(self, run_id: str, work: str, home: Path) -> None:
        if not self.same(work, home):
            safe_copy_tree(Path(work), home)

    def same(self, work: str, home: Path) -> bool:
        return Path(work).resolve() == home.resolve()

    def doctor_dir(self) -> str:
        from runner.plugins.slurm.envs import env_root

        where = self.work_dir or env_root(None)
        where.mkdir(parents=True, exist_ok=True)
        return tempfile.mkdtemp(dir=where, prefix=".doctor-")


class SSHDirs(JobDirs):
    """Files in the target's ``work_dir`` on the cluster, reached only through the SSH
    session of its login node."""

    def __init__(self, config: SlurmConfig, session: Session) -> None:
        self.config = config
        self.session = session
        self._work_dir: str | None = None
        self._envs: dict[str, Prepared] = {}

    @property
    def host(self) -> str:  # type: ignore[override]
        return self.session.label

    @property
    def work_dir(self) -> str:
        """The work dir on the cluster (``~/`` resolved there), made once per client."""
        if self._work_dir is None:
            wd = str(self.config.work_dir)
            expr = '"$HOME"/' + shlex.quote(wd[2:]) if wd.startswith("~/") else shlex.quote(wd)
            r = self.session.run(
                f"W={expr}; mkdir -p \"$W/objects\" \"$W/runs\" \"$W/incoming\" \"$W/outgoing\" "
                "\"$W/envs\" \"$W/arrays\" 2>&1 && cd \"$W\" && pwd -P", timeout=60)
            if not r.ok:
                raise shipping.workdir_error(r.stdout.strip() or r.last_error(), wd,
                                             self.session.label)
            self._work_dir = r.stdout.strip().splitlines()[-1]
        return self._work_dir

    def prepare_env(self, env: EnvSpec) -> Prepared:
        # asked once per env and client: the jobs of a sweep share the answer
        hit = self._envs.get(repr(env))  # its repr: an EnvSpec holds dicts, not hashable
        if hit is not None:
            return dataclasses.replace(hit, cached=True, reason="cached")
        self._envs[repr(env)] = prepared = prepare_env_over_ssh(env, self.session, self.work_dir)
        return prepared

    def place(self, spec: RunSpec) -> tuple[str, str | None]:
        request = spec.request
        if request is None:
            raise ValueError(f"run {spec.run_id}: submit needs the spec's request")
        w = self.work_dir
        work = f"{w}/runs/{spec.run_id}"
        secrets_env = {n: os.environ[n] for n in request.secret_env if n in os.environ}
        shipped, _ = shipping.ship(self.session, w, spec.run_id, request, RunDir(spec.run_dir),
                                   work, secrets_env)
        print(f"[runner] shipped {shipped['sent_files']} of {shipped['files']} code files "
              f"({size_text(shipped['sent_bytes'])} of {size_text(shipped['bytes'])}) to "
              f"{self.session.label}", file=sys.stderr, flush=True)
        staged = [d for d in request.data_inputs if not d.on_target and d.digest]
        if not staged:
            return work, None
        # the worker finds input KEY at $RUNNER_STAGED_DATA/KEY: a link to its tree
        links = f"{work}/{DATA_LINKS}"
        r = self.session.run(f"mkdir -p {shlex.quote(links)} && " + " && ".join(
            f"ln -sfn {shlex.quote(f'{w}/data/{d.digest}')} {shlex.quote(f'{links}/{d.key}')}"
            for d in staged), timeout=60)
        if not r.ok:
            raise shipping.workdir_error(r.last_error(), w, self.session.label)
        return work, links

    def arrays(self) -> str:
        return f"{self.work_dir}/arrays"

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        self.session.run(f"mkdir -p {shlex.quote(os.path.dirname(path))}", timeout=60)
        try:
            self.session.write_file(path, text.encode(), mode=mode)
        except OSError as e:
            raise shipping.workdir_error(str(e), self.work_dir, self.session.label) from None

    def read(self, path: str, offset: int = 0) -> bytes | None:
        return self.session.read_file(path, offset)

    def remove(self, path: str) -> None:
        self.session.run(f"rm -rf {shlex.quote(path)}", timeout=60)

    def status(self, work: str) -> tuple[RunStatus | None, bool]:
        return shipping.read_status(self.session, work)

    def write_status(self, work: str, st: RunStatus) -> RunStatus:
        return shipping.write_final_status(self.session, work, st)

    def request_cancel(self, work: str) -> None:
        self.session.run(f"touch {shlex.quote(f'{work}/{CANCEL}')}", timeout=60)

    def bring_home(self, run_id: str, work: str, home: Path) -> None:
        shipping.fetch(self.session, self.work_dir, run_id, work, home,
                       max_fetch_mb=self.config.max_fetch_mb)

    def doctor_dir(self) -> str:
        r = self.session.run(f"mktemp -d {shlex.quote(self.work_dir)}/.doctor-XXXXXX", timeout=60)
        if not r.ok:
            raise UserError(f"cannot make a folder in {self.work_dir} on {self.session.label}: "
                            f"{r.last_error()}")
        return r.stdout.strip()


def dirs_for(config: SlurmConfig, session: Session | None) -> JobDirs:
    """The job files of a target: over ``session`` when it has a host."""
    return SSHDirs(config, session) if session is not None else LocalDirs(config.work_dir)


__all__ = ["DATA_LINKS", "JobDirs", "LocalDirs", "SSHDirs", "dirs_for"]
