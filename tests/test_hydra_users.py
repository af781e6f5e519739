"""What Hydra users already type keeps working through ``runner submit``: interpolation across
sections (single runs and sweeps), the Optuna sweeper the natural way, and clear errors that
name the override a bad value came from."""

from __future__ import annotations

from pathlib import Path

import pytest

ECHO = """\
import sys
import runner
print("args=" + " ".join(sys.argv[1:]), flush=True)
nums = [float(a) for a in sys.argv[1:] if a.lstrip("-").replace(".", "", 1).isdigit()]
if nums:
    runner.log_metric("loss", sum((n - 2.0) ** 2 for n in nums))
"""


@pytest.fixture
def echo_project(project: Path) -> Path:
    (project / "echo.py").write_text(ECHO)
    return project


def _args_lines(out: str) -> list[str]:
    return sorted(line.split("args=", 1)[1] for line in out.splitlines() if "args=" in line)


def test_a_top_level_key_interpolates_into_a_section(echo_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("submit", "model=script", "model.path=echo.py", "seed=7",
            "model.args=[--seed,${seed}]")
    assert r.returncode == 0, r.stderr
    assert _args_lines(r.stdout) == ["--seed 7"]


def test_a_swept_key_interpolates_into_each_job(echo_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("submit", "-m", "model=script", "model.path=echo.py", "+a=10,20", "model.args=[${a}]")
    assert r.returncode == 0, r.stderr
    assert [line.split("] ", 1)[-1] for line in _args_lines(r.stdout)] == ["10", "20"]


def test_oc_select_reads_the_jobs_value_not_its_default(echo_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("submit", "-m", "model=script", "model.path=echo.py", "+a=10,20",
            "model.args=[${oc.select:a,-1}]")
    assert r.returncode == 0, r.stderr
    values = [line.split("] ", 1)[-1] for line in _args_lines(r.stdout)]
    assert values == ["10", "20"], "a job silently got the select's default"


def test_an_unknown_interpolation_names_the_override_and_the_fix(echo_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("submit", "model=script", "model.path=echo.py", "model.args=[${nosuch}]")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    first = r.stderr.splitlines()[0]
    assert "the command line (model.args=[${nosuch}])" in first and "model.args[0]" in first
    assert "script.yaml" not in first
    assert "+nosuch=VALUE" in r.stderr


def test_a_bad_value_through_an_interpolation_blames_the_override(echo_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("submit", "model=sentiment_cnn", "+n=many", "model.epochs=${n}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "the command line (model.epochs=${n})" in r.stderr
    assert "'many'" in r.stderr


def test_an_unset_env_var_in_an_interpolation_says_how_to_set_it(echo_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("submit", "model=script", "model.path=echo.py",
            "model.args=[${oc.env:RUNNER_TEST_UNSET_VAR}]")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "RUNNER_TEST_UNSET_VAR is not set" in r.stderr
    assert "export RUNNER_TEST_UNSET_VAR=" in r.stderr


def test_a_list_element_beyond_the_list_says_so(echo_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("submit", "model=script", "model.path=echo.py", "model.args.0=1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "index out of range" in r.stderr
    assert "model.args=[" in r.stderr  # the fix: give the whole list first


# -- a user's own @hydra.main app, its sweep dispatched by the runner launcher ---------------

APP = """\
import hydra
from omegaconf import DictConfig

import helpers  # a module of the app's own project, imported on the target


@hydra.main(config_path="conf", config_name="config", version_base=None)
def train(cfg: DictConfig) -> float:
    print(f"training lr={cfg.lr} layers={cfg.layers}", flush=True)
    if cfg.lr < 0:
        raise ValueError("a negative learning rate")
    return helpers.loss(cfg.lr, cfg.layers)


if __name__ == "__main__":
    train()
"""
HELPERS = "def loss(lr, layers):\n    return (lr - 0.3) ** 2 + layers\n"


@pytest.fixture
def app_project(project: Path) -> Path:
    (project / "app").mkdir()
    (project / "app" / "train.py").write_text(APP)
    (project / "app" / "helpers.py").write_text(HELPERS)
    (project / "app" / "conf").mkdir()
    (project / "app" / "conf" / "config.yaml").write_text("lr: 0.1\nlayers: 1\n")
    return project


def run_app(project: Path, *args: str, timeout: float = 300):  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "app/train.py", *args], cwd=project, text=True,
                          capture_output=True, timeout=timeout, env=dict(os.environ))


def test_an_apps_sweep_runs_each_job_as_a_run_on_the_target(app_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = run_app(app_project, "-m", "hydra/launcher=runner", "hydra.launcher.target=local",
                "lr=0.1,0.5", "layers=2")
    assert r.returncode == 0, r.stderr
    assert "[job 0] training lr=0.1 layers=2" in r.stdout
    assert "[job 1] training lr=0.5 layers=2" in r.stdout
    runs = cli("runs", "-n", "0")
    rows = [line for line in runs.stdout.splitlines() if "hydra app app/train.py" in line]
    assert len(rows) == 2 and all("SUCCEEDED" in row for row in rows)
    # the app's return value came back as the run's metric (and to the sweeper)
    assert sorted(float(row.split("return=")[1].split()[0]) for row in rows) == \
        pytest.approx([2.04, 2.04], abs=1e-3)
    show = cli("show", "last")
    assert "overrides" in show.stdout and "layers=2" in show.stdout
    # Hydra's per-job outputs, where the app's own sweep folder puts them
    job_dirs = list((app_project / "multirun").glob("*/*/[01]/.hydra/config.yaml"))
    assert len(job_dirs) == 2


def test_optuna_optimizes_the_apps_return_value(app_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = run_app(app_project, "-m", "hydra/launcher=runner", "hydra/sweeper=optuna",
                "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "lr=interval(0,1)")
    assert r.returncode == 0, r.stderr
    runs = cli("runs", "-n", "0")
    values = [float(line.split("return=")[1].split()[0]) for line in runs.stdout.splitlines()
              if "return=" in line]
    assert len(values) == 4
    best = [line for line in r.stderr.splitlines() if line.startswith("best: lr=")]
    assert best, r.stderr
    assert float(best[0].split("value=")[1].split()[0]) == pytest.approx(min(values), abs=1e-3)


def test_a_failing_job_of_an_app_is_a_failed_run_with_its_traceback(app_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = run_app(app_project, "-m", "hydra/launcher=runner", "lr=0.1,-1")
    assert r.returncode != 0
    assert "a negative learning rate" in r.stderr + r.stdout
    runs = cli("runs", "-n", "0").stdout
    assert runs.count("SUCCEEDED") == 1 and runs.count("FAILED") == 1
    failed = next(line.split()[0] for line in runs.splitlines() if "FAILED" in line)
    log = cli("logs", failed).stdout
    assert "ValueError: a negative learning rate" in log


def test_an_unknown_target_for_an_app_is_a_clear_error(app_project: Path) -> None:
    r = run_app(app_project, "-m", "hydra/launcher=runner", "hydra.launcher.target=nosuch",
                "lr=0.1,0.2")
    assert r.returncode != 0
    assert "unknown target 'nosuch'" in r.stderr
    assert "available target options" in r.stderr


# -- sweeps over targets, and what `runner show` says of a script run ---------------------------

def test_each_job_of_a_sweep_over_targets_is_validated_on_its_own(echo_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    conf = echo_project / "conf" / "target"
    conf.mkdir(parents=True)
    (conf / "tiny.yaml").write_text("backend: local\nslots: 0\n")  # wrong for its backend
    r = cli("submit", "-m", "model=script", "model.path=echo.py", "target=local,tiny",
            "model.args=[ok]")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    bad = [line for line in r.stderr.splitlines() if line.startswith("[job 1] FAILED")]
    assert bad and "target.slots" in bad[0] and "tiny" in bad[0]
    assert "[job 0] args=ok" in r.stdout  # the valid job ran
    runs = cli("runs", "-n", "0").stdout
    assert runs.count("SUCCEEDED") == 1


def test_the_same_mistake_in_every_job_is_one_error_and_nothing_runs(echo_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("submit", "-m", "model=script", "model.path=echo.py", "target.slots=0",
            "model.args=[1],[2]")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "target.slots" in r.stderr
    assert "no runs yet" in cli("runs").stderr


def test_a_key_only_one_swept_target_has_says_where_to_set_it(echo_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("submit", "-m", "model=script", "model.path=echo.py", "target=local,local_docker",
            "target.memory=512m")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "target.memory" in r.stderr and "conf/target/NAME.yaml" in r.stderr


def test_show_says_a_script_run_without_data_has_none(echo_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("submit", "model=script", "model.path=echo.py").returncode == 0
    data = [line for line in cli("show", "last").stdout.splitlines() if line.startswith("data")]
    assert data and data[0].split()[1] == "-", data


def _remote_problem() -> str | None:
    from .test_remote_docker import _PROBLEM

    return _PROBLEM


@pytest.mark.ssh
@pytest.mark.docker
@pytest.mark.slow
def test_an_apps_sweep_runs_on_a_remote_gpu_box(app_project: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    """The docs' journey: attach an SSH host, give the app's jobs an env with the app's
    requirements, sweep; each job runs in a container there and its return value comes back."""
    problem = _remote_problem()
    if problem:
        pytest.skip(problem)
    from .test_remote_docker import BASE, LOOPBACK, SSH_CONFIG

    r = cli("attach", "gpubox", "--host", LOOPBACK, "--ssh-config", SSH_CONFIG,
            "--work-dir", str(tmp_path / "remote-work"))
    assert r.returncode == 0, r.stderr
    env_dir = app_project / "conf" / "env"
    env_dir.mkdir(parents=True)
    (env_dir / "app_env.yaml").write_text(
        "defaults:\n  - /runner/env/base@_here_\n  - _self_\nname: app_env\n"
        f"base_image: {BASE}\nrequirements: [hydra-core, cloudpickle]\n")
    r = run_app(app_project, "-m", "hydra/launcher=runner", "hydra.launcher.target=gpubox",
                "hydra.launcher.env=app_env", "lr=0.1,0.5", timeout=600)
    assert r.returncode == 0, r.stderr
    runs = cli("runs", "-n", "0").stdout
    rows = [line for line in runs.splitlines() if "hydra app app/train.py" in line]
    assert len(rows) == 2 and all("SUCCEEDED" in row and "gpubox" in row for row in rows)
    assert sorted(float(row.split("return=")[1].split()[0]) for row in rows) == \
        pytest.approx([1.04, 1.04], abs=1e-3)
    # the job ran in a container on the host: its Hydra outputs came back with the run
    show = cli("show", "last").stdout
    assert "hydra/" in show and ".hydra/config.yaml" in show
