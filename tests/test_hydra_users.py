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
