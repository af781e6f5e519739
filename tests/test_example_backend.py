"""The backend of docs/plugins.md (``docs/examples/subprocess_backend.py``), loaded from that
very file, against the contract suite and the facts the guide states about it."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from runner.backend import Backend, EnvSpec, RunState
from runner.errors import UserError
from runner.registry import collect, make_plugin_manager
from runner.rundir import RunDir
from runner.testing import BackendContract, make_run

from .conftest import REPO

EXAMPLE = REPO / "docs" / "examples" / "subprocess_backend.py"


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_example_subprocess_backend", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


example = _load(EXAMPLE)


class TestSubprocessBackend(BackendContract):
    timeout = 30.0

    @pytest.fixture
    def backend(self) -> Backend:
        return example.SubprocessBackend(example.SubprocessConfig())


@pytest.fixture
def backend() -> Backend:
    return example.SubprocessBackend(example.SubprocessConfig(cancel_grace=2.0))


def test_the_example_package_installs_this_very_file() -> None:
    linked = REPO / "tests" / "example_plugin" / "runner_example_plugin" / "subprocess_backend.py"
    assert linked.resolve() == EXAMPLE.resolve()


def test_it_registers_through_its_hook() -> None:
    registry = collect(make_plugin_manager(entry_points=False, extra=(example,)))
    assert registry.backends["subprocess"] is example.SubprocessBackend


def test_prepare_says_why_it_missed_then_hits(tmp_path: Path, backend: Backend,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "cache"))
    spec = make_run(tmp_path, backend, "print(1)")
    first = backend.prepare(spec)
    assert not first.cached and first.reason == "not cached: no environment built yet"
    second = backend.prepare(spec)
    assert second.cached and second.reason == "cached" and second.env_key == first.env_key
    monkeypatch.setattr(example, "bundle_hash", lambda: "0" * 16)  # new worker code
    third = backend.prepare(spec)
    assert not third.cached and third.env_key != first.env_key
    assert "runner changed (the worker code is new)" in third.reason


def test_prepare_refuses_an_env_it_would_have_to_build(tmp_path: Path, backend: Backend) -> None:
    env = EnvSpec(name="tf_cpu", requirements=("tensorflow-cpu",))
    with pytest.raises(UserError) as e:
        backend.prepare(make_run(tmp_path, backend, "print(1)", env=env))
    assert "env tf_cpu" in e.value.message and "target=local" in e.value.render()
    wrong = EnvSpec(name="old", python="2.7")
    with pytest.raises(UserError, match="cannot pick another Python"):
        backend.prepare(make_run(tmp_path, backend, "print(1)", env=wrong))


def test_a_worker_killed_without_a_cancel_is_lost(tmp_path: Path, backend: Backend) -> None:
    spec = make_run(tmp_path, backend, "import time\nprint('up', flush=True)\ntime.sleep(60)")
    handle = backend.submit(spec, backend.prepare(spec))
    deadline = time.monotonic() + 30
    while "up\n" not in RunDir(spec.run_dir).log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(handle.locator["pid"], signal.SIGKILL)
    st = handle.wait(10)
    assert st.state == RunState.LOST and "without a final status" in st.message
    assert RunDir(spec.run_dir).status() == st  # recorded for every later reader


def test_before_any_status_file_a_live_process_is_queued(tmp_path: Path, backend: Backend) -> None:
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        handle = backend.reattach("r1", rd.path, {"pid": proc.pid,
                                                 "started": example._start_time(proc.pid)})
        assert rd.status() is None and handle.status().state == RunState.QUEUED
        assert handle.cancel().state == RunState.CANCELLED  # `sleep` writes nothing: the handle does
        assert rd.status() is not None and rd.status().state == RunState.CANCELLED  # type: ignore[union-attr]
    finally:
        proc.kill()
        proc.wait()


def test_a_reused_pid_is_not_mistaken_for_the_run(tmp_path: Path, backend: Backend) -> None:
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    handle = backend.reattach("r2", rd.path, {"pid": os.getpid(), "started": "1"})
    assert handle.status().state == RunState.LOST  # and this test process was not signalled
    assert handle.cancel().state == RunState.LOST
