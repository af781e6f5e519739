"""Bad input through the CLI: each case one clear error (what, where, what to do), exit code 2,
no traceback, never "this looks like a bug"."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import run_cli

SCRIPT = ["model=script", "model.path=job.py"]

CASES = [
    ("a folder as the script", ["model=script", "model.path=somedir"],
     ["'somedir' is a folder", "model.path=folder/train.py"]),
    ("a misspelt group", [*SCRIPT, "tagret=local"], ["'tagret' is neither", "did you mean target"]),
    ("a misspelt group key", [*SCRIPT, "targte.slots=2"], ["did you mean target"]),
    ("an unset variable", [*SCRIPT, "+x=${oc.env:RUNNER_TEST_NOT_SET}"],
     ["RUNNER_TEST_NOT_SET is not set", "export RUNNER_TEST_NOT_SET=", "${oc.env:RUNNER_TEST_NOT_SET,"]),
    ("no slots", [*SCRIPT, "target.slots=0"], ["target.slots: must be at least 1"]),
    ("negative slots", [*SCRIPT, "target.slots=-1"], ["target.slots: must be at least 1"]),
    ("data without its path", [*SCRIPT, "data=text_files"], ["data.path is not set", "data.path=PATH"]),
    ("a bad value typed on the command line", [*SCRIPT, "env.require_gpu=maybe"],
     ["the command line (env.require_gpu=maybe)", "not a valid bool"]),
    ("a bad Hydra mode", [*SCRIPT, "hydra.mode=BOGUS"], ["hydra.mode", "RUN, MULTIRUN"]),
]


@pytest.mark.parametrize(("what", "args", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(project: Path, what: str, args: list[str],
                                      expected: list[str]) -> None:
    (project / "job.py").write_text("print('ran')\n")
    (project / "somedir").mkdir()
    res = run_cli("submit", *args, cwd=project)
    assert res.returncode == 2, (what, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and "looks like a bug" not in res.stderr, res.stderr
    assert res.stderr.startswith("error: "), res.stderr
    for text in expected:
        assert text in res.stderr, (what, res.stderr)
    assert "ran" not in res.stdout  # nothing started


def test_runs_of_an_unknown_sweep_is_an_error_not_an_empty_ledger(project: Path) -> None:
    (project / "job.py").write_text("print('ran')\n")
    assert run_cli("submit", *SCRIPT, cwd=project).returncode == 0
    res = run_cli("runs", "--sweep", "snosuch", cwd=project)
    assert res.returncode == 2 and "no sweep 'snosuch'" in res.stderr, res.stderr
    assert "no runs yet" not in res.stderr


def test_env_files_extend_the_env_defaults_so_every_key_can_be_set(project: Path) -> None:
    (project / "job.py").write_text("print('ran')\n")
    res = run_cli("submit", "--cfg", "job", *SCRIPT, "env.require_gpu=true", "env.gpus=0",
                  cwd=project)
    assert res.returncode == 0, res.stderr
    import yaml

    env = yaml.safe_load(res.stdout)["env"]
    assert env["require_gpu"] is True and str(env["gpus"]) == "0" and env["name"] == "current"
