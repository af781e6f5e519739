"""Hydra's own launcher conformance suites, run against the ``runner`` launcher as Hydra runs
them against its basic launcher: every job of these sweeps is a run on the local target,
recorded in the ledger of a throw-away project, its task function called on the target by
Hydra's ``run_job``, and its return value handed back to the sweeper.

The launcher is found by Hydra's own plugin scan, in the install mode of the README
(``pip install -e .``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)
from pytest import mark, param


@pytest.fixture(autouse=True)
def _in_a_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sweeps from its own project (its own ledger), as a user's app would."""
    (tmp_path / "app-project" / ".runner").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "app-project")


def test_hydra_discovers_the_launcher() -> None:
    from hydra_plugins.runner_launcher.runner_launcher import RunnerLauncher

    assert RunnerLauncher.__name__ in [c.__name__ for c in Plugins.instance().discover(Launcher)]


@mark.parametrize("launcher_name, overrides", [("runner", [])])
class TestRunnerLauncher(LauncherTestSuite):
    pass


@mark.parametrize("launcher_name, overrides",
                  [("runner", ["hydra/sweeper=basic", "hydra.sweeper.max_batch_size=2"])])
class TestRunnerLauncherBatched(BatchedSweeperTestSuite):
    pass


@mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [param({}, ["-m", "hydra/launcher=runner", "hydra/hydra_logging=disabled",
                "hydra/job_logging=disabled"], id="runner_launcher_multirun")],
)
class TestRunnerLauncherIntegration(IntegrationTestSuite):
    pass
