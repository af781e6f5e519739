"""The slurm backend against a real one-node Slurm cluster (started by scripts/testbed.sh,
its slurm.conf in RUNNER_TEST_SLURM_CONF): the backend contract suite, and what users type."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from runner.backend import RunHandle
from runner.testing import BackendContract

from .conftest import read_testbed_env

pytestmark = pytest.mark.slurm

TB = read_testbed_env()
SLURM_CONF = TB.get("RUNNER_TEST_SLURM_CONF", "")


def _cluster_answers() -> bool:
    if not SLURM_CONF or not Path(SLURM_CONF).is_file() or shutil.which("scontrol") is None:
        return False
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10,
                             env=dict(os.environ, SLURM_CONF=SLURM_CONF))
    except (OSError, subprocess.SubprocessError):
        return False
    return "UP" in out.stdout


if not _cluster_answers():
    pytest.skip("no Slurm controller answers for RUNNER_TEST_SLURM_CONF "
                f"({SLURM_CONF or 'unset'}); `scripts/testbed.sh up` starts one",
                allow_module_level=True)

from runner.plugins.slurm.backend import SlurmBackend  # noqa: E402
from runner.plugins.slurm.config import SlurmConfig  # noqa: E402
from runner.plugins.slurm.handle import SlurmHandle  # noqa: E402


def _squeue(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                          text=True, env=dict(os.environ, SLURM_CONF=SLURM_CONF)).stdout.strip()


class TestSlurmContract(BackendContract):
    timeout = 90.0

    @pytest.fixture
    def backend(self) -> SlurmBackend:
        return SlurmBackend(SlurmConfig(slurm_conf=SLURM_CONF, cancel_grace=5))

    def assert_nothing_left(self, handle: RunHandle) -> None:
        assert isinstance(handle, SlurmHandle)
        super().assert_nothing_left(handle)  # the node is this machine: no process of the run
        assert _squeue(handle.job_id) == ""  # and the job left the queue


class TestSlurmWorkDirContract(TestSlurmContract):
    """The same contract when runs live in a work dir (a copy of the run directory)."""

    @pytest.fixture
    def backend(self, tmp_path: Path) -> SlurmBackend:
        return SlurmBackend(SlurmConfig(slurm_conf=SLURM_CONF, cancel_grace=5,
                                        work_dir=str(tmp_path / "shared")))
