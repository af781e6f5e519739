"""Checkpoints, resume and retries on the local_docker target, against the real Docker engine:
``docker stop`` gives the run its grace to save, a resume may move the rest of a run to
another target, and a killed container is retried from its checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.test_local_docker import _PROBLEM, BASE, containers_of, docker
from tests.test_resume import EPOCHS, _epochs, _ledger, _run_id, _wait_for_line

pytestmark = [pytest.mark.docker, pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")]

DOCKER = ["target=local_docker", "env=docker_python", f"env.base_image={BASE}", "model=script",
          "model.path=epochs.py"]


def test_a_cancelled_container_saves_and_the_rest_runs_on_another_target(project: Path) -> None:
    (project / "epochs.py").write_text(EPOCHS)
    r = run_cli("submit", "--detach", *DOCKER, "model.args=[5,0.6]", "target.cancel_grace=5",
                cwd=project, timeout=300)
    assert r.returncode == 0, r.stderr
    first = _run_id(r.stderr)
    _wait_for_line(project, first, "epoch 2 done", timeout=120)
    c = run_cli("cancel", first, cwd=project, timeout=120)
    assert c.returncode == 0 and f"run {first}: CANCELLED" in c.stderr, c.stderr
    assert containers_of(first) == []
    log1 = run_cli("logs", first, cwd=project).stdout
    assert "stopped on the signal; checkpoint at epoch" in log1, log1  # docker stop's SIGTERM
    done1 = _epochs(log1)
    # the rest on this machine, in the client's interpreter
    res = run_cli("resume", first, "target=local", "env=current", cwd=project, timeout=120)
    assert res.returncode == 0, res.stderr
    second = _run_id(res.stderr)
    assert "target local (local)" in res.stderr
    done2 = _epochs(run_cli("logs", second, cwd=project).stdout)
    assert sorted(done1 + done2) == [1, 2, 3, 4, 5], (done1, done2)
    assert _ledger(project, second)["parent"] == first


def test_a_killed_container_is_retried_from_its_checkpoint(project: Path) -> None:
    (project / "epochs.py").write_text(EPOCHS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "submit", *DOCKER, "model.args=[4,0.6]",
         "retries=1", "target.retry_backoff=0.2"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    runs = project / ".runner" / "runs"
    deadline = time.monotonic() + 180
    while not list(runs.glob("*/log.txt")) or "epoch 2 done" not in next(
            runs.glob("*/log.txt")).read_text():
        assert time.monotonic() < deadline and proc.poll() is None, "epoch 2 never ended"
        time.sleep(0.05)
    first = next(runs.glob("*/log.txt")).parent.name
    assert docker("kill", *containers_of(first)).returncode == 0
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert f"run {first} ended LOST" in err and "from its checkpoint" in err, err
    (second,) = [d.name for d in runs.iterdir() if d.name != first]
    done1 = _epochs((runs / first / "log.txt").read_text())
    done2 = _epochs((runs / second / "log.txt").read_text())
    assert sorted(done1 + done2) == [1, 2, 3, 4], (done1, done2)
    assert _ledger(project, second)["attempt"] == 2
    assert containers_of(first) == [] and containers_of(second) == []


# -- the remote testbed host (Docker over SSH) ---------------------------------------------------

def _remote_problem() -> str | None:
    from tests.test_remote_docker import _PROBLEM as problem

    return problem


_REMOTE = _remote_problem()


@pytest.mark.ssh
@pytest.mark.skipif(_REMOTE is not None, reason=_REMOTE or "")
def test_on_the_ssh_host_a_cancel_saves_resume_ships_the_checkpoint_and_a_kill_is_retried(
        project: Path, tmp_path: Path) -> None:
    from tests.test_remote_docker import _target

    _target(project, tmp_path / "remote-work", retry_backoff=0.2)
    (project / "epochs.py").write_text(EPOCHS)
    remote = ["target=box", "env=docker_python", "model=script", "model.path=epochs.py"]
    r = run_cli("submit", "--detach", *remote, "model.args=[6,1.5]", cwd=project, timeout=300)
    assert r.returncode == 0, r.stderr
    first = _run_id(r.stderr)
    deadline = time.monotonic() + 120
    while "epoch 2 done" not in run_cli("logs", first, cwd=project).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    c = run_cli("cancel", first, cwd=project, timeout=120)
    assert c.returncode == 0 and "CANCELLED" in c.stderr, c.stderr
    # the checkpoint came back with the run directory
    assert (project / ".runner" / "runs" / first / "checkpoints" / "state.json").is_file()
    done1 = _epochs(run_cli("logs", first, cwd=project).stdout)
    res = run_cli("resume", first, cwd=project, timeout=300)
    assert res.returncode == 0, res.stderr
    second = _run_id(res.stderr)
    log2 = run_cli("logs", second, cwd=project).stdout
    assert f"starting after epoch {done1[-1]}" in log2, log2  # the checkpoint reached the host
    assert sorted(done1 + _epochs(log2)) == [1, 2, 3, 4, 5, 6]

    # a container killed on the host: retried there from its checkpoint
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "submit", *remote, "model.args=[6,1.5]",
         "retries=1"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    runs = project / ".runner" / "runs"
    deadline = time.monotonic() + 180
    third = None
    while third is None or "epoch 2 done" not in run_cli("logs", third, cwd=project).stdout:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        third = next((d.name for d in runs.iterdir() if d.name not in (first, second)), None)
        time.sleep(0.3)
    assert docker("kill", *containers_of(third)).returncode == 0
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert f"run {third} ended LOST" in err and "from its checkpoint" in err, err
    (fourth,) = [d.name for d in runs.iterdir() if d.name not in (first, second, third)]
    done3 = _epochs(run_cli("logs", third, cwd=project).stdout)
    done4 = _epochs(run_cli("logs", fourth, cwd=project).stdout)
    assert sorted(done3 + done4) == [1, 2, 3, 4, 5, 6], (done3, done4)
