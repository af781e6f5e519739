"""The ray backend against a real Ray head (started by scripts/testbed.sh, address in
RUNNER_TEST_RAY_ADDRESS): the backend contract suite, what is Ray-only, and a small sweep."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pytest

from runner.backend import RunHandle, RunState
from runner.rundir import RunDir
from runner.store import Store
from runner.testing import BackendContract, make_run

from .conftest import read_testbed_env

pytestmark = pytest.mark.ray

ADDRESS = read_testbed_env().get("RUNNER_TEST_RAY_ADDRESS", "")


def _head_answers(address: str) -> bool:
    if not address:
        return False
    try:
        with urllib.request.urlopen(address.rstrip("/") + "/api/version", timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


if not _head_answers(ADDRESS):
    pytest.skip(
        "no Ray head answers at RUNNER_TEST_RAY_ADDRESS "
        f"({ADDRESS or 'unset'}); `scripts/testbed.sh up` starts one",
        allow_module_level=True,
    )
pytest.importorskip("ray.job_submission", reason="the [ray] extra is not installed")

from runner.plugins.ray import BEGIN, RayBackend, RayConfig, RayHandle  # noqa: E402


def _processes_of(run_id: str) -> list[int]:
    """PIDs on this machine (the Ray head is local in tests) that belong to ``run_id``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"RUNNER_RUN_ID={run_id}".encode() in environ.split(b"\0") and state not in ("Z", "X"):
            out.append(int(entry))
    return out


class TestRayContract(BackendContract):
    timeout = 120.0

    @pytest.fixture
    def backend(self) -> RayBackend:
        return RayBackend(RayConfig(address=ADDRESS, num_cpus=0.5, stop_timeout=30))

    def assert_nothing_left(self, handle: RunHandle) -> None:
        assert isinstance(handle, RayHandle)
        assert handle.status().terminal
        import time

        deadline = time.monotonic() + 10  # Ray reaps the job's processes just after it reports
        while _processes_of(handle.run_id) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_of(handle.run_id) == []


def test_results_travel_in_the_log_but_users_never_see_them(tmp_path: Path) -> None:
    backend = RayBackend(RayConfig(address=ADDRESS, num_cpus=0.5))
    spec = make_run(tmp_path, backend, "import runner\nprint('visible')\nrunner.log_metric('acc', 0.75)")
    handle = backend.submit(spec, backend.prepare(spec))
    assert handle.wait(120).state == RunState.SUCCEEDED
    text = "".join(t for _, t in handle.logs(0))
    assert "visible" in text and BEGIN not in text
    rd = RunDir(spec.run_dir)
    assert rd.summary() == {"acc": 0.75}  # in the local run directory, no shared filesystem
    assert "visible" in rd.log.read_text()
    # a fresh handle (another shell) sees the same final state
    again = backend.reattach(spec.run_id, spec.run_dir, handle.locator)
    assert again.status().state == RunState.SUCCEEDED


def test_oversized_outputs_stay_on_the_cluster_and_the_log_says_so(tmp_path: Path) -> None:
    backend = RayBackend(RayConfig(address=ADDRESS, num_cpus=0.5, max_output_mb=0.01))
    spec = make_run(tmp_path, backend, "import runner\n"
                    "(runner.outputs_dir() / 'big.bin').write_bytes(b'x' * 100_000)\n"
                    "runner.log_metric('n', 1)")
    handle = backend.submit(spec, backend.prepare(spec))
    assert handle.wait(120).state == RunState.SUCCEEDED
    rd = RunDir(spec.run_dir)
    assert not (rd.outputs / "big.bin").exists()
    assert rd.summary() == {"n": 1.0}
    assert "over max_output_mb=0.01: not sent back" in rd.log.read_text()


def test_a_sweep_on_a_ray_target(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    (project / "job.py").write_text("import sys, runner\nrunner.log_metric('score', float(sys.argv[1]) * 2)\n")
    (project / "conf" / "target").mkdir(parents=True)
    (project / "conf" / "target" / "cluster.yaml").write_text(
        f"backend: ray\naddress: {ADDRESS}\nnum_cpus: 0.5\n")
    res = cli("submit", "-m", "model=script", "model.path=job.py", "target=cluster",
              "model.args=[1],[2],[3]", timeout=300)
    assert res.returncode == 0, res.stderr
    runs = Store(project / ".runner").list()
    assert len(runs) == 3 and {r.state for r in runs} == {RunState.SUCCEEDED}
    assert sorted(r.summary["score"] for r in runs) == [2.0, 4.0, 6.0]
    # slots: 0 on a ray target: all three were handed to Ray before the first one ended
    progress = [line for line in res.stderr.splitlines() if line.startswith("[job ")]
    started = [i for i, line in enumerate(progress) if " RUNNING" in line]
    ended = [i for i, line in enumerate(progress) if " SUCCEEDED" in line]
    assert len(started) == 3 and max(started) < min(ended)


# -- env.requirements: the runtime env's pip list, installed on the cluster ------------------------
PINNED = "tomli==2.0.1"  # small, pure Python, and not what the head's own Python has


def _ray_project(project: Path, requirement: str) -> None:
    (project / "job.py").write_text(
        "from importlib.metadata import version\nimport tomli\n"
        "print('tomli', version('tomli'), 'parses', tomli.loads('a = 1'), flush=True)\n")
    for group, text in (
        ("target/cluster.yaml", f"backend: ray\naddress: {ADDRESS}\nnum_cpus: 0.5\n"),
        ("env/withpip.yaml", f"name: withpip\nrequirements:\n  - {requirement}\n"),
    ):
        path = project / "conf" / group
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_env_requirements_are_pip_installed_on_the_cluster(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    from importlib.metadata import PackageNotFoundError, version

    try:
        here = version("tomli")
    except PackageNotFoundError:
        here = None
    assert here != "2.0.1", "the head's Python already has the pinned version: the test proves nothing"
    _ray_project(project, PINNED)
    args = ("target=cluster", "env=withpip", "model=script", "model.path=job.py")
    res = cli("submit", *args, timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "tomli 2.0.1 parses {'a': 1}" in res.stdout
    (run,) = Store(project / ".runner").list()
    assert run.state == RunState.SUCCEEDED
    # built once: the next prepare of the same env is a cache hit
    again = cli("prepare", *args, timeout=120)
    assert again.returncode == 0 and "cached" in again.stderr, again.stderr


# slow: Ray tries a failed build three times (about 30s each) before it gives up; the head
# remembers the failure, so later runs against the same head take seconds
@pytest.mark.slow
def test_a_requirement_pip_cannot_install_is_a_clear_error(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    _ray_project(project, "tomli==999.0")
    res = cli("submit", "target=cluster", "env=withpip", "model=script", "model.path=job.py",
              timeout=600)
    assert res.returncode == 2, res.stdout + res.stderr
    assert ("error: env withpip: the Ray cluster at " in res.stderr
            and "could not install env.requirements: ERROR: No matching distribution found for "
                "tomli==999.0" in res.stderr), res.stderr
    assert "fix env.requirements" in res.stderr and "Traceback" not in res.stderr
    (run,) = Store(project / ".runner").list()
    assert run.state == RunState.FAILED and "tomli==999.0" in run.message
