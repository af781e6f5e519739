"""The backend contract suite, for built-in and third-party backends alike.

Subclass :class:`BackendContract` in a test module and provide the ``backend`` fixture
(and ``env`` when the backend needs a particular environment)::

    from runner.testing import BackendContract

    class TestMyBackend(BackendContract):
        @pytest.fixture
        def backend(self):
            return MyBackend(MyBackend.Config(host="..."))

        def assert_nothing_left(self, handle):
            ...  # e.g. no container with the run's label

Every test drives the backend directly through the run-directory protocol (no ledger, no
CLI), with the built-in ``script`` model running small Python scripts on the target.
"""

from __future__ import annotations

import dataclasses
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from runner.backend import (
    CAPABILITIES,
    Backend,
    Capability,
    EnvSpec,
    Prepared,
    RunHandle,
    RunSpec,
    RunState,
    RunStatus,
)
from runner.proc import processes_with
from runner.request import DataInput, RunRequest
from runner.rundir import RunDir
from runner.store import new_run_id

__all__ = ["BackendContract", "make_run", "processes_with", "wait_until_gone"]


def make_run(
    base: Path, backend: Backend, script: str, *, args: tuple[str, ...] = (),
    env: EnvSpec | None = None, seed: int = 0, data: dict[str, Any] | None = None,
    data_inputs: tuple[DataInput, ...] = (),
) -> RunSpec:
    """A run directory under ``base`` whose request runs ``script`` with the script model."""
    run_id = new_run_id()
    rd = RunDir(base / run_id)
    (rd.code).mkdir(parents=True)
    (rd.code / "job.py").write_text(textwrap.dedent(script))
    env = env or EnvSpec(name="current")
    request = RunRequest(
        run_id=run_id, model="script",
        model_config={"name": "script", "path": "job.py", "module": None, "args": list(args),
                      "python": None},
        data=dict(data or {}), data_inputs=tuple(data_inputs),
        env=dataclasses.asdict(env) | {"root": None}, seed=seed)
    rd.write_request(request.to_dict())
    return RunSpec(run_id=run_id, run_dir=rd.path, target_name="contract", target=backend.config,
                   env=env, model="script", project_root=base, request=request)


class BackendContract:
    """What every backend must do. Subclasses provide the ``backend`` fixture."""

    #: seconds a short job may take end to end on this backend (containers start slower)
    timeout: float = 60.0
    #: run id -> the unique argument its script was started with (see :meth:`start`)
    _markers: dict[str, str] = {}  # noqa: RUF012 - shared on purpose: one registry per session

    @pytest.fixture
    def backend(self) -> Backend:
        raise NotImplementedError("provide a `backend` fixture returning a configured Backend")

    @pytest.fixture
    def env(self) -> EnvSpec:
        return EnvSpec(name="current")

    def assert_nothing_left(self, handle: RunHandle) -> None:
        """Check that nothing of a run is left on the target.

        The default looks for the run's script among this machine's processes (the cancel
        tests give it a unique argument): right for targets whose processes this machine can
        see (local processes, containers of a local engine, test hosts on loopback). Override
        it for targets elsewhere (e.g. no container with the run's label on the remote host).
        """
        marker = self._markers.get(handle.run_id)
        assert marker is not None, "assert_nothing_left() is meant for runs made with start()"
        left = wait_until_gone(marker)
        assert not left, f"processes of run {handle.run_id} still alive: {left}"

    # -- helpers ------------------------------------------------------------------
    def start(self, tmp_path: Path, backend: Backend, env: EnvSpec, script: str,
              *args: str, marked: bool = False) -> tuple[RunSpec, Prepared, RunHandle]:
        """Prepare and submit ``script``; ``marked`` adds a unique argument by which
        :meth:`assert_nothing_left` finds the run's processes."""
        marker = f"runner-contract-{uuid.uuid4().hex}"
        spec = make_run(tmp_path, backend, script, args=(*args, marker) if marked else args,
                        env=env)
        prepared = backend.prepare(spec)
        handle = backend.submit(spec, prepared)
        if marked:
            self._markers[spec.run_id] = marker
        return spec, prepared, handle

    @staticmethod
    def needs(backend: Backend, capability: Capability) -> None:
        """Skip the calling test unless ``backend`` declares ``capability``."""
        if capability not in backend.capabilities:
            pytest.skip(f"backend {backend.name} does not declare {capability.value!r}")

    def wait_running(self, handle: RunHandle, rd: RunDir, marker: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for _, line in handle.logs(0):
                if marker in line:
                    return
            assert not handle.status().terminal, f"run ended early: {handle.status()}"
            time.sleep(0.1)
        raise AssertionError(f"'{marker}' never appeared in the log")

    # -- the contract ---------------------------------------------------------------
    def test_capabilities_are_known(self, backend: Backend) -> None:
        assert backend.capabilities <= CAPABILITIES
        assert all(isinstance(c, Capability) for c in backend.capabilities)

    def test_prepare_is_idempotent_and_cached(self, tmp_path: Path, backend: Backend, env: EnvSpec) -> None:
        spec = make_run(tmp_path, backend, "print('x')", env=env)
        first = backend.prepare(spec)
        second = backend.prepare(spec)
        assert first.env_key == second.env_key
        assert second.cached and "cached" in second.reason

    def _long(self, backend: Backend) -> int:
        """Seconds a "long" test script sleeps: until cancelled where the backend can cancel,
        else short enough to wait for."""
        return 60 if Capability.CANCEL in backend.capabilities else 5

    def _stop(self, backend: Backend, handle: RunHandle) -> RunStatus:
        """End a long test run: cancel it where the backend can, else wait for it."""
        if Capability.CANCEL in backend.capabilities:
            return handle.cancel()
        return handle.wait(self.timeout)

    def test_submit_returns_before_the_run_ends(self, tmp_path: Path, backend: Backend, env: EnvSpec) -> None:
        spec = make_run(tmp_path, backend,
                        f"import time; print('started', flush=True); time.sleep({self._long(backend)})",
                        env=env)
        prepared = backend.prepare(spec)
        t0 = time.monotonic()
        handle = backend.submit(spec, prepared)
        try:
            assert time.monotonic() - t0 < 30
            assert not handle.status().terminal
        finally:
            self._stop(backend, handle)

    def test_wait_reaches_succeeded_with_exit_code_0(self, tmp_path: Path, backend: Backend, env: EnvSpec) -> None:
        _, _, handle = self.start(tmp_path, backend, env, "print('hello from the target')")
        st = handle.wait(self.timeout)
        assert st.state == RunState.SUCCEEDED, st
        assert st.exit_code == 0

    def test_a_failing_run_reports_its_exit_code(self, tmp_path: Path, backend: Backend, env: EnvSpec) -> None:
        _, _, handle = self.start(tmp_path, backend, env, "import sys; print('bye'); sys.exit(3)")
        st = handle.wait(self.timeout)
        assert st.state == RunState.FAILED
        assert st.exit_code == 3

    def test_cancel_is_idempotent_and_leaves_nothing_running(
        self, tmp_path: Path, backend: Backend, env: EnvSpec
    ) -> None:
        self.needs(backend, Capability.CANCEL)
        spec, _, handle = self.start(
            tmp_path, backend, env,
            "import time\nprint('ready', flush=True)\nwhile True: time.sleep(0.1)", marked=True,
        )
        self.wait_running(handle, RunDir(spec.run_dir), "ready")
        st = handle.cancel()
        assert st.state == RunState.CANCELLED, st
        assert handle.cancel().state == RunState.CANCELLED  # idempotent
        assert handle.status().state == RunState.CANCELLED
        self.assert_nothing_left(handle)

    def test_cancel_kills_a_run_that_ignores_sigterm(
        self, tmp_path: Path, backend: Backend, env: EnvSpec
    ) -> None:
        self.needs(backend, Capability.CANCEL)
        spec, _, handle = self.start(
            tmp_path, backend, env,
            "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('stubborn', flush=True)\nwhile True: time.sleep(0.1)", marked=True,
        )
        self.wait_running(handle, RunDir(spec.run_dir), "stubborn")
        handle.grace = 1.0
        assert handle.cancel().state == RunState.CANCELLED
        self.assert_nothing_left(handle)

    def test_logs_show_while_the_run_goes(self, tmp_path: Path, backend: Backend, env: EnvSpec) -> None:
        self.needs(backend, Capability.FOLLOW_LOGS)
        spec, _, handle = self.start(
            tmp_path, backend, env,
            "import time\nprint('halfway', flush=True)\ntime.sleep(5)\nprint('done')")
        self.wait_running(handle, RunDir(spec.run_dir), "halfway")
        assert not handle.status().terminal
        self._stop(backend, handle)

    def test_gpu_devices_are_ids_or_none(self, backend: Backend) -> None:
        ids = backend.gpu_devices()
        assert ids is None or (ids and all(isinstance(i, str) and i for i in ids)), ids
        if Capability.GPU not in backend.capabilities:
            assert ids is None, "a backend without the gpu capability offers no GPUs"

    def test_logs_resume_from_an_offset(self, tmp_path: Path, backend: Backend, env: EnvSpec) -> None:
        _, _, handle = self.start(tmp_path, backend, env, "for i in range(50): print(f'line {i}')")
        handle.wait(self.timeout)
        everything = list(handle.logs(0))
        text = "".join(t for _, t in everything)
        assert all(f"line {i}\n" in text for i in range(50))
        middle = everything[len(everything) // 2][0]
        rest = "".join(t for _, t in handle.logs(middle))
        head = "".join(t for off, t in everything if off <= middle)
        assert head + rest == text  # nothing lost, nothing repeated
        assert list(handle.logs(everything[-1][0])) == []

    def test_metrics_and_outputs_come_back(self, tmp_path: Path, backend: Backend, env: EnvSpec) -> None:
        self.needs(backend, Capability.OUTPUTS)
        spec, _, handle = self.start(tmp_path, backend, env, """
            import runner
            for step in range(3):
                runner.log_metric("loss", 1.0 / (step + 1), step=step)
            (runner.outputs_dir() / "weights.bin").write_bytes(b"\\x00" * 1000)
        """)
        assert handle.wait(self.timeout).state == RunState.SUCCEEDED
        dest = RunDir(tmp_path / "fetched")
        handle.fetch_outputs(dest.path)
        assert (dest.outputs / "weights.bin").stat().st_size == 1000
        assert [m["value"] for m in dest.read_metrics()] == [1.0, 0.5, pytest.approx(1 / 3)]
        assert dest.status() is not None and dest.status().state == RunState.SUCCEEDED  # type: ignore[union-attr]

    def test_arguments_and_seed_reach_the_script(self, tmp_path: Path, backend: Backend, env: EnvSpec) -> None:
        _, _, handle = self.start(
            tmp_path, backend, env,
            "import os, sys; print('args', sys.argv[1:], 'seed', os.environ['RUNNER_SEED'])",
            "--lr", "0.5",
        )
        assert handle.wait(self.timeout).state == RunState.SUCCEEDED
        text = "".join(t for _, t in handle.logs(0))
        assert "args ['--lr', '0.5'] seed 0" in text

    def test_data_inputs_reach_the_run(self, tmp_path: Path, backend: Backend, env: EnvSpec) -> None:
        from runner.data import collect

        folder = tmp_path / "client-data" / "reviews"
        (folder / "sub").mkdir(parents=True)
        (folder / "a.txt").write_text("alpha\n")
        (folder / "sub" / "b.txt").write_text("beta\n")
        inputs = collect({"path": str(folder)}, {"path": "dir"}, cwd=tmp_path,
                         cache_path=tmp_path / "hashes.db")
        spec = make_run(tmp_path, backend, """
            import runner
            p = runner.data_path()
            print("files", sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file()))
            print("b", (p / "sub" / "b.txt").read_text().strip())
        """, env=env, data={"name": "x", "path": str(folder)}, data_inputs=inputs)
        prepared = backend.prepare(spec)
        backend.check_data(spec)
        handle = backend.submit(spec, prepared)
        st = handle.wait(self.timeout)
        text = "".join(t for _, t in handle.logs(0))
        assert st.state == RunState.SUCCEEDED, text
        assert "files ['a.txt', 'sub/b.txt']" in text and "b beta" in text

    def test_submit_many_starts_every_run(self, tmp_path: Path, backend: Backend, env: EnvSpec) -> None:
        specs = [make_run(tmp_path, backend, f"print('job {i} of three')", env=env)
                 for i in range(3)]
        items = [(spec, backend.prepare(spec)) for spec in specs]
        t0 = time.monotonic()
        handles = backend.submit_many(items, 2)
        assert len(handles) == 3
        if Capability.ARRAY in backend.capabilities:
            assert time.monotonic() - t0 < 30  # one submission, not three waits
        for i, (spec, handle) in enumerate(zip(specs, handles, strict=True)):
            assert handle.run_id == spec.run_id
            assert handle.wait(self.timeout).state == RunState.SUCCEEDED
            again = backend.reattach(spec.run_id, spec.run_dir, _json_roundtrip(handle.locator))
            text = "".join(t for _, t in again.logs(0))
            assert f"job {i} of three" in text and all(f"job {j} " not in text for j in range(3) if j != i)

    def test_reattach_sees_the_same_run(self, tmp_path: Path, backend: Backend, env: EnvSpec) -> None:
        spec, _, handle = self.start(
            tmp_path, backend, env,
            f"import time\nprint('up', flush=True)\ntime.sleep({self._long(backend)})", marked=True)
        self.wait_running(handle, RunDir(spec.run_dir), "up")
        again = backend.reattach(spec.run_id, spec.run_dir, _json_roundtrip(handle.locator))
        assert again.status().state == RunState.RUNNING
        ended = self._stop(backend, again).state  # the reattached handle controls the run
        assert ended == (RunState.CANCELLED if Capability.CANCEL in backend.capabilities
                         else RunState.SUCCEEDED)
        assert handle.status().state == ended
        self.assert_nothing_left(handle)


def wait_until_gone(field: str, *, source: str = "cmdline", timeout: float = 10) -> list[int]:
    """:func:`processes_with` once they are gone or ``timeout`` seconds passed (an engine
    reaps a stopped run's processes just after it reports the stop)."""
    deadline = time.monotonic() + timeout
    while True:
        left = processes_with(field, source=source)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _json_roundtrip(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value))
