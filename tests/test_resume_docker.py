"""Checkpoints, resume and retries on the local_docker target, against the real Docker engine:
``docker stop`` gives the run its grace to save, a resume may move the rest of a run to
another target, and a killed container is retried from its checkpoint."""

from __future__ import annotations

import os
import signal
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


def test_an_oom_killed_run_is_retried_only_when_asked(project: Path) -> None:
    """The first attempt saves a checkpoint, then outgrows the container's memory; with
    ``retry_oom=true`` the second finds the checkpoint and finishes with less."""
    (project / "greedy.py").write_text(
        "import os\n"
        "ckpt = os.path.join(os.environ['RUNNER_CHECKPOINT_DIR'], 'half.txt')\n"
        "if os.path.exists(ckpt):\n"
        "    print('resumed from the checkpoint: the rest fits', flush=True)\n"
        "else:\n"
        "    open(ckpt, 'w').write('half')\n"
        "    print('allocating', flush=True)\n"
        "    x = b'1' * (400 << 20)\n")
    args = ["target=local_docker", "env=docker_python", f"env.base_image={BASE}",
            "model=script", "model.path=greedy.py", "target.memory=64m", "retries=1",
            "target.retry_backoff=0.2"]
    res = run_cli("submit", *args, cwd=project, timeout=300)
    assert res.returncode == 1 and "out of memory" in res.stderr and "attempt 2" not in res.stderr
    res = run_cli("submit", *args, "retry_oom=true", cwd=project, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "ended OOM-killed; attempt 2 of 2" in res.stderr, res.stderr
    assert "resumed from the checkpoint: the rest fits" in res.stdout


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

    # slots: the test host is shared; a run of another suite there must not hold this one up
    _target(project, tmp_path / "remote-work", retry_backoff=0.2, slots=4)
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


@pytest.mark.ssh
@pytest.mark.skipif(_REMOTE is not None, reason=_REMOTE or "")
def test_a_host_that_goes_away_is_waited_for_then_the_run_is_retried_once(
        project: Path, tmp_path: Path) -> None:
    """The host stops answering mid-run and its container is gone when it comes back (a
    reboot): the watching client keeps the run's last known state while the host is away
    (no second attempt starts then), and retries it once it can tell the run is lost."""
    from tests.test_remote_docker import CLIENT_KEY, KNOWN_HOSTS, PORT

    down = tmp_path / "host-down"
    key = next(ln.split(None, 1)[1] for ln in Path(KNOWN_HOSTS).read_text().splitlines()
               if ln.startswith(f"[127.0.0.1]:{PORT} "))
    (tmp_path / "known_hosts").write_text(f"gonebox {key}\n")
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(
        "Host gonebox\n  HostName gonebox\n  User root\n"
        f"  IdentityFile {CLIENT_KEY}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {tmp_path / 'known_hosts'}\n"
        f"  ProxyCommand sh -c 'test -e {down} && exit 1; exec socat STDIO TCP:127.0.0.1:{PORT}'\n")
    (project / "conf" / "target").mkdir(parents=True)
    (project / "conf" / "target" / "gonebox.yaml").write_text(
        f"backend: remote_docker\nhost: gonebox\nssh_config: {ssh_config}\n"
        f"work_dir: {tmp_path / 'remote-work'}\nbase_image: {BASE}\ncancel_grace: 3\n"
        "connect_timeout: 5\nretry_backoff: 1\nslots: 4\n")
    (project / "epochs.py").write_text(EPOCHS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "submit", "target=gonebox", "env=docker_python",
         "model=script", "model.path=epochs.py", "model.args=[8,2]", "retries=1"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    runs = project / ".runner" / "runs"
    try:
        deadline = time.monotonic() + 180
        first = None
        while first is None or "epoch 2 done" not in run_cli("logs", first, cwd=project).stdout:
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            first = next((d.name for d in runs.iterdir()), None) if runs.is_dir() else None
            time.sleep(0.3)
        down.touch()  # the host goes away: no new connection, and the client's are cut
        for pid in _descendants(proc.pid):
            if b"socat" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        time.sleep(2)
        assert docker("kill", *containers_of(first)).returncode == 0  # ... and reboots
        time.sleep(5)
        assert [d.name for d in runs.iterdir()] == [first]  # no retry while nobody can tell
        assert proc.poll() is None
        down.unlink()  # it answers again
        _, err = proc.communicate(timeout=300)
    finally:
        down.unlink(missing_ok=True)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"run {first}: its target did not answer" in err
    assert f"run {first} ended LOST" in err and "from its checkpoint" in err, err
    (second,) = [d.name for d in runs.iterdir() if d.name != first]
    done1 = _epochs(run_cli("logs", first, cwd=project).stdout)
    done2 = _epochs(run_cli("logs", second, cwd=project).stdout)
    assert sorted(done1 + done2) == [1, 2, 3, 4, 5, 6, 7, 8], (done1, done2)  # none twice
    assert containers_of(first) == [] and containers_of(second) == []


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (the client's ProxyCommand connections)."""
    from runner.proc import proc_stat

    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            if proc_stat(k) is not None:
                out.append(k)
                todo.append(k)
    return out
