"""The reliability drills of ``bench/drills.py`` as a suite CI runs, at a small scale: every
figure whose goal is zero must be zero. ``bench/drills.py`` gives the figures at full scale
for docs/RELIABILITY.md; the drills on the Docker and SSH targets need the testbed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from .conftest import REPO, read_testbed_env

pytestmark = pytest.mark.slow


def _drills() -> ModuleType:
    spec = importlib.util.spec_from_file_location("runner_drills", REPO / "bench" / "drills.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


drills = _drills()


def test_concurrent_submits_leave_one_true_row_each(tmp_path: Path) -> None:
    f = drills.drill_submits(tmp_path, 12, 6)
    assert (f["rows"], f["duplicates"], f["false states"]) == (12, 0, 0), f


def test_a_cancel_storm_stops_every_run_and_leaves_no_process(tmp_path: Path) -> None:
    f = drills.drill_cancel(tmp_path, 4, 2.0)
    assert (f["cancelled"], f["processes left"]) == (4, 0), f


def test_a_cancelled_run_leaves_no_escaped_child(tmp_path: Path) -> None:
    assert drills.drill_escape(tmp_path) == {"cancelled": 1, "processes left": 0}


def test_killed_clients_and_workers_leave_true_states(tmp_path: Path) -> None:
    assert drills.drill_kill(tmp_path) == {"client killed": "SUCCEEDED", "worker killed": "LOST"}


def test_every_bad_input_is_one_clear_error(tmp_path: Path) -> None:
    f = drills.drill_bad_input(tmp_path)
    assert f["clear"] == f["tried"] and f["tracebacks"] == 0, f


def test_no_secret_value_reaches_a_file_or_a_line(tmp_path: Path) -> None:
    f = drills.drill_secrets(tmp_path)
    assert (f["lines printed with it"], f["files with it"]) == (0, 0), f
    assert f["runs that saw the value"] > 0, f


def test_a_run_that_fills_the_disk_is_failed_not_lost(tmp_path: Path) -> None:
    f = drills.drill_fulldisk(tmp_path)
    if "skipped" in f:
        pytest.skip(str(f["skipped"]))
    assert (f["'bug' messages"], f["runner tracebacks"], f["LOST"]) == (0, 0, 0), f
    assert f["state once freed"] == "FAILED" and f["said no space left"] == 1, f


_TB = read_testbed_env()


@pytest.mark.docker
@pytest.mark.ssh
@pytest.mark.skipif(not _TB.get("RUNNER_TEST_SSH_CONFIG"), reason="no testbed: scripts/testbed.sh up")
def test_cancel_storms_on_both_docker_targets_leave_no_container(tmp_path: Path) -> None:
    f = drills.drill_docker_cancel(tmp_path, 2, 2.0)
    for target in ("local_docker", "remote_docker"):
        assert f[f"{target} cancelled"] == "2 of 2", f
        assert f[f"{target} containers left"] == 0, f


@pytest.mark.ssh
@pytest.mark.skipif(not _TB.get("RUNNER_TEST_SSH_CONFIG"), reason="no testbed: scripts/testbed.sh up")
def test_connection_kills_lose_and_repeat_no_line(tmp_path: Path) -> None:
    """`runner submit` streaming a remote run while its SSH connection is cut twice (a killed
    ProxyCommand, an aborted TCP socket): every line arrives once, the run SUCCEEDS."""
    f = drills.drill_connkill(tmp_path, 2)
    for host in ("loopback", "proxycommand"):
        assert f[f"{host} cuts"] == 2, f
        assert (f[f"{host} lines lost"], f[f"{host} lines repeated"]) == (0, 0), f
        assert (f[f"{host} exit"], f[f"{host} tracebacks"]) == (0, 0), f
