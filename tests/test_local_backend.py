"""The local backend against real processes: the contract suite plus what is local-only."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from runner.backend import EnvSpec, RunHandle, RunState
from runner.plugins.local import LocalBackend, LocalConfig, LocalHandle, group_members
from runner.rundir import RunDir
from runner.testing import BackendContract, make_run


class TestLocalContract(BackendContract):
    timeout = 30.0

    @pytest.fixture
    def backend(self) -> LocalBackend:
        return LocalBackend(LocalConfig(cancel_grace=5))

    def assert_nothing_left(self, handle: RunHandle) -> None:
        assert isinstance(handle, LocalHandle)
        super().assert_nothing_left(handle)  # no process of the run's script either
        assert group_members(handle.pgid) == []


def test_a_killed_worker_is_lost_not_running(tmp_path: Path) -> None:
    backend = LocalBackend(LocalConfig())
    spec = make_run(tmp_path, backend, "import time\nprint('up', flush=True)\ntime.sleep(60)")
    handle = backend.submit(spec, backend.prepare(spec))
    assert isinstance(handle, LocalHandle)
    deadline = time.monotonic() + 20
    while "up" not in RunDir(spec.run_dir).log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(handle.pgid, 9)  # what an OOM killer or a reboot does
    st = handle.wait(10)
    assert st.state == RunState.LOST
    assert "without a final status" in st.message
    assert RunDir(spec.run_dir).status().state == RunState.LOST  # type: ignore[union-attr]


def test_a_model_crash_keeps_its_traceback_in_the_log(tmp_path: Path) -> None:
    backend = LocalBackend(LocalConfig())
    spec = make_run(tmp_path, backend, "raise ValueError('bad learning rate')")
    st = backend.submit(spec, backend.prepare(spec)).wait(20)
    assert st.state == RunState.FAILED and st.exit_code == 1
    assert "ValueError: bad learning rate" in RunDir(spec.run_dir).log.read_text()


@pytest.mark.slow
def test_declared_env_is_a_cached_virtualenv_keyed_by_content(tmp_path: Path) -> None:
    backend = LocalBackend(LocalConfig())
    reqs = tmp_path / "reqs.txt"
    reqs.write_text("# nothing heavy\n")
    env = EnvSpec(name="venv", python=None, requirements=("-r reqs.txt",), root=tmp_path)
    env = EnvSpec(**{**env.__dict__, "python": ".".join(map(str, __import__("sys").version_info[:2]))})
    spec = make_run(tmp_path, backend, "import sys, runner; print('py', sys.prefix)", env=env)
    first = backend.prepare(spec)
    assert not first.cached and "not cached" in first.reason
    second = backend.prepare(spec)
    assert second.cached and second.reason == "cached"
    assert second.details == first.details  # the same venv, not a new one
    st = backend.submit(spec, second).wait(30)
    assert st.state == RunState.SUCCEEDED, RunDir(spec.run_dir).log.read_text()
    assert str(second.details["python"]).rsplit("/bin/", 1)[0] in RunDir(spec.run_dir).log.read_text()
    # a referenced file's content is part of the key, and the miss says what changed
    reqs.write_text("six\n")
    third_spec = make_run(tmp_path, backend, "print(1)", env=env)
    third = backend.prepare(third_spec)
    assert third.env_key != first.env_key
    assert not third.cached and "requirements changed (+six)" in third.reason


def test_cancel_ends_a_child_that_left_for_a_session_of_its_own(project: Path) -> None:
    import uuid

    from runner.testing import processes_with, wait_until_gone

    from .conftest import run_cli

    marker = f"escapee-{uuid.uuid4().hex}"
    (project / "escape.py").write_text(
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); time.sleep(600)',"
        " sys.argv[1]])\n"
        "time.sleep(0.5)\nprint('escaped', flush=True)\ntime.sleep(600)\n")
    r = run_cli("submit", "--detach", "model=script", "model.path=escape.py",
                f"model.args=[{marker}]", "target.cancel_grace=2", cwd=project)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 60
    while "escaped" not in run_cli("logs", "last", cwd=project).stdout:
        assert time.monotonic() < deadline, "the script never started its child"
        time.sleep(0.3)
    assert len(processes_with(marker)) == 2  # the script and the child in its own session
    res = run_cli("cancel", "last", cwd=project)
    assert res.returncode == 0 and "CANCELLED" in res.stderr, res.stderr
    assert wait_until_gone(marker, timeout=10) == []  # nothing of the run is left
    shown = run_cli("runs", cwd=project).stdout
    assert "CANCELLED" in shown
