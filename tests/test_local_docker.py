"""The local_docker backend against a real Docker engine (scripts/testbed.sh up starts one):
the contract suite, OOM, reconcile, the env image cache, --gpus, the GPU preflight, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.backend import EnvSpec, RunHandle, RunState
from runner.errors import UserError
from runner.plugins import _docker as dk
from runner.plugins import local_docker
from runner.plugins.local_docker import DockerHandle, LocalDockerBackend, LocalDockerConfig
from runner.rundir import RunDir
from runner.testing import BackendContract, make_run

from .conftest import read_testbed_env, run_cli

TESTBED = read_testbed_env()
BASE = TESTBED.get("RUNNER_BASE_IMAGE", "runner-base:bookworm")


def _engine_problem() -> str | None:
    try:
        r = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"no docker CLI ({e}); scripts/testbed.sh up installs and starts the engine"
    if r.returncode != 0:
        return "no Docker engine answers; start one with scripts/testbed.sh up"
    r = subprocess.run(["docker", "image", "inspect", BASE], capture_output=True, timeout=20)
    if r.returncode != 0:
        return f"base image {BASE} missing; scripts/testbed.sh up builds it"
    return None


_PROBLEM = _engine_problem()
pytestmark = [pytest.mark.docker, pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")]

ENV = EnvSpec(name="docker_python", base_image=BASE)


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)


def containers_of(run_id: str) -> list[str]:
    return docker("ps", "-aq", "--filter", f"label={dk.L_RUN_ID}={run_id}").stdout.split()


def wait_for(path: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


@pytest.fixture
def backend() -> LocalDockerBackend:
    return LocalDockerBackend(LocalDockerConfig(cancel_grace=5, base_image=BASE))


class TestLocalDockerContract(BackendContract):
    timeout = 90.0

    @pytest.fixture
    def backend(self) -> LocalDockerBackend:
        return LocalDockerBackend(LocalDockerConfig(cancel_grace=5, base_image=BASE))

    @pytest.fixture
    def env(self) -> EnvSpec:
        return ENV

    def assert_nothing_left(self, handle: RunHandle) -> None:
        assert isinstance(handle, DockerHandle)
        super().assert_nothing_left(handle)  # no process of the run's script either
        assert containers_of(handle.run_id) == []


# -- runs ---------------------------------------------------------------------------------------
def test_run_container_carries_labels_limits_and_the_run_dir(tmp_path: Path) -> None:
    b = LocalDockerBackend(LocalDockerConfig(base_image=BASE, cpus=1.5, memory="256m",
                                             shm_size="128m", network="none"))
    spec = make_run(tmp_path, b, "import time, os\nprint('cwd', os.getcwd(), flush=True)\ntime.sleep(30)",
                    env=ENV)
    handle = b.submit(spec, b.prepare(spec))
    try:
        wait_for(spec.run_dir / "log.txt", "cwd")
        info = json.loads(docker("inspect", containers_of(spec.run_id)[0]).stdout)[0]
        labels = info["Config"]["Labels"]
        assert labels[dk.L_RUN_ID] == spec.run_id and labels[dk.L_KIND] == "run"
        assert labels[dk.L_TARGET] == "contract"
        host = info["HostConfig"]
        assert host["NanoCpus"] == 1_500_000_000
        assert host["Memory"] == 256 * 2**20 and host["ShmSize"] == 128 * 2**20
        assert host["NetworkMode"] == "none" and host["Init"] is True
        assert "cwd /runner/run/code" in (spec.run_dir / "log.txt").read_text()
        assert (spec.run_dir / "worker.json").stat().st_uid == os.getuid()
    finally:
        handle.cancel()
    assert containers_of(spec.run_id) == []


def test_an_oom_killed_run_says_so(tmp_path: Path) -> None:
    b = LocalDockerBackend(LocalDockerConfig(base_image=BASE, memory="64m"))
    spec = make_run(tmp_path, b, "print('allocating', flush=True)\nx = b'1' * (400 << 20)\nprint(len(x))",
                    env=ENV)
    st = b.submit(spec, b.prepare(spec)).wait(90)
    assert st.state == RunState.FAILED and st.oom, st
    assert "out of memory" in st.message and "64 MiB" in st.message
    assert st.exit_code not in (None, 0)
    assert RunDir(spec.run_dir).status().oom  # type: ignore[union-attr]
    assert containers_of(spec.run_id) == []


_CLIENT = """
import json, sys, time
from pathlib import Path
from runner.backend import EnvSpec
from runner.plugins.local_docker import LocalDockerBackend, LocalDockerConfig
from runner.testing import make_run
b = LocalDockerBackend(LocalDockerConfig(base_image=sys.argv[2]))
spec = make_run(Path(sys.argv[1]), b, "import time\\nprint('up', flush=True)\\ntime.sleep(4)\\nprint('done')",
                env=EnvSpec(name="docker_python", base_image=sys.argv[2]))
handle = b.submit(spec, b.prepare(spec))
print(json.dumps({"run_id": spec.run_id, "run_dir": str(spec.run_dir), "locator": handle.locator}),
      flush=True)
time.sleep(600)
"""


def test_a_killed_client_does_not_leave_the_run_unknown(tmp_path: Path, backend: LocalDockerBackend) -> None:
    client = subprocess.Popen([sys.executable, "-c", _CLIENT, str(tmp_path), BASE],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None
        started = json.loads(client.stdout.readline())
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
    handle = backend.reattach(started["run_id"], Path(started["run_dir"]), started["locator"])
    wait_for(Path(started["run_dir"]) / "log.txt", "up")
    assert handle.status().state == RunState.RUNNING  # the run outlives its client
    st = handle.wait(60)
    assert st.state == RunState.SUCCEEDED, st
    assert "done" in "".join(t for _, t in handle.logs(0))
    assert containers_of(started["run_id"]) == []


def test_a_container_removed_behind_our_back_is_lost(tmp_path: Path, backend: LocalDockerBackend) -> None:
    spec = make_run(tmp_path, backend, "import time\nprint('up', flush=True)\ntime.sleep(60)", env=ENV)
    handle = backend.submit(spec, backend.prepare(spec))
    wait_for(spec.run_dir / "log.txt", "up")
    docker("rm", "-f", *containers_of(spec.run_id))
    again = backend.reattach(spec.run_id, spec.run_dir, handle.locator)
    st = again.status()
    assert st.state == RunState.LOST and "vanished" in st.message
    assert RunDir(spec.run_dir).status().state == RunState.LOST  # type: ignore[union-attr]
    assert handle.cancel().state == RunState.LOST  # cancel of an ended run changes nothing


def test_every_cli_call_reconciles_the_ledger(project: Path) -> None:
    (project / "job.py").write_text("import time\nprint('up', flush=True)\ntime.sleep(120)\n")
    r = run_cli("submit", "--detach", "target=local_docker", "env=docker_python", "model=script",
                "model.path=job.py", f"env.base_image={BASE}", cwd=project)
    assert r.returncode == 0, r.stderr
    run_id = r.stderr.split("run ", 1)[1].split(":", 1)[0]
    from runner.store import Store

    store = Store.for_project(project)
    assert store.get(run_id).state == RunState.RUNNING
    time.sleep(1)
    docker("rm", "-f", *containers_of(run_id))  # what a reboot or a `docker rm` does
    r = run_cli("runs", cwd=project)
    assert r.returncode == 0, r.stderr
    rec = store.get(run_id)
    assert rec.state == RunState.LOST and "vanished" in rec.message


def test_orphans_are_listed_and_cleaned(tmp_path: Path, backend: LocalDockerBackend) -> None:
    spec = make_run(tmp_path, backend, "import time; time.sleep(60)", env=ENV)
    handle = backend.submit(spec, backend.prepare(spec))
    try:
        assert spec.run_id not in [o.run_id for o in local_docker.orphans([spec.run_id])]
        found = [o for o in local_docker.orphans([], project=tmp_path) if o.run_id == spec.run_id]
        assert len(found) == 1 and found[0].state == "running" and found[0].kind == "run"
        assert found[0].run_dir == str(spec.run_dir.resolve())
        assert local_docker.orphans([], project=tmp_path / "other-project") == []
        assert local_docker.clean(found) == [f"runner-{spec.run_id}"]
        assert containers_of(spec.run_id) == []
        assert handle.status().state == RunState.LOST
    finally:
        handle.cancel()


def test_runner_docker_orphans_lists_and_cleans_a_projects_strays(
    tmp_path: Path, backend: LocalDockerBackend
) -> None:
    from .conftest import run_cli

    project = tmp_path / "proj"
    (project / ".runner").mkdir(parents=True)
    spec = make_run(project, backend, "import time; time.sleep(60)", env=ENV)
    handle = backend.submit(spec, backend.prepare(spec))  # started outside the ledger: a stray
    try:
        listed = run_cli("docker-orphans", cwd=project)
        assert listed.returncode == 0, listed.stderr
        assert f"runner-{spec.run_id}" in listed.stdout and "--clean" in listed.stdout
        assert containers_of(spec.run_id) != []
        cleaned = run_cli("docker-orphans", "--clean", cwd=project)
        assert "removed 1 container(s)" in cleaned.stdout
        assert containers_of(spec.run_id) == []
        assert "no orphan containers" in run_cli("docker-orphans", cwd=project).stdout
    finally:
        handle.cancel()


def test_a_failed_start_leaves_no_created_container(
    tmp_path: Path, backend: LocalDockerBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_run(tmp_path, backend, "print(1)", env=ENV)
    prepared = backend.prepare(spec)
    monkeypatch.setattr(dk, "user_arg", lambda: "no-such-user-here")  # fails at start, not create
    with pytest.raises(UserError, match="docker could not start the run's container"):
        backend.submit(spec, prepared)
    assert containers_of(spec.run_id) == []


def test_bad_network_mode_is_a_clear_error() -> None:
    with pytest.raises(UserError, match=r"target.network: 'bridge'.*\n?.*") as e:
        LocalDockerBackend(LocalDockerConfig(network="bridge"))
    assert "default, host, none" in e.value.render()
    with pytest.raises(UserError, match="target.slots: must be at least 1, got 0"):
        LocalDockerBackend(LocalDockerConfig(slots=0))
    with pytest.raises(UserError, match="target.cpus: must be a positive number"):
        LocalDockerBackend(LocalDockerConfig(cpus=0))


# -- env images ---------------------------------------------------------------------------------
@pytest.fixture
def scratch_images() -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    if made:
        docker("image", "rm", "-f", *made)


def _derive(tag: str, marker: str) -> None:
    r = subprocess.run(["docker", "build", "-q", "-t", tag, "-"], input=f"FROM {BASE}\nLABEL t={marker}\n",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_env_image_cache_hit_builds_nothing_and_a_miss_says_what_changed(
    tmp_path: Path, backend: LocalDockerBackend, scratch_images: list[str]
) -> None:
    base = f"runner-test-base:{tmp_path.name.lower()[-20:]}"
    _derive(base, "one")
    reqs = tmp_path / "reqs.txt"
    reqs.write_text("pip  # satisfied by the venv itself: no download\n")
    env = EnvSpec(name="cachetest", base_image=base, requirements=("-r reqs.txt",), root=tmp_path)
    spec = make_run(tmp_path, backend, "print(1)", env=env)
    first = backend.prepare(spec)
    scratch_images.append(str(first.details["image"]))
    assert not first.cached
    hit = backend.prepare(spec)  # how fast a hit is: bench/docker_overhead.py
    assert hit.cached and hit.reason == "cached" and hit.env_key == first.env_key
    assert hit.details["image_id"] == first.details["image_id"]  # nothing was rebuilt
    labels = json.loads(docker("image", "inspect", str(hit.details["image"])).stdout)[0]["Config"]["Labels"]
    assert json.loads(labels[dk.L_ENV_INPUTS])["requirements"] == ["pip"]

    reqs.write_text("pip\nsetuptools\n")  # a referenced file's content is part of the key
    changed = backend.prepare(spec)
    scratch_images.append(str(changed.details["image"]))
    assert not changed.cached and "requirements changed (+setuptools)" in changed.reason

    _derive(base, "two")  # the same tag now names another image: rebuild
    retagged = backend.prepare(spec)
    scratch_images.append(str(retagged.details["image"]))
    assert not retagged.cached and "base_image changed" in retagged.reason
    assert "requirements" not in retagged.reason
    scratch_images.append(base)


def test_a_missing_base_image_is_one_clear_error(tmp_path: Path, backend: LocalDockerBackend) -> None:
    env = EnvSpec(name="nobase", base_image="no-such-base:never")
    spec = make_run(tmp_path, backend, "print(1)", env=env)
    with pytest.raises(UserError) as e:
        backend.prepare(spec)
    text = e.value.render()
    assert "'no-such-base:never' is not in the Docker engine" in text
    assert "does not pull" in text


# -- GPUs ---------------------------------------------------------------------------------------
def test_gpus_reach_the_engine_and_the_run_records_what_it_saw(tmp_path: Path) -> None:
    if TESTBED.get("RUNNER_DOCKER_HOST_GPUS") != "fake":
        pytest.skip("the engine has no (stand-in) NVIDIA runtime: scripts/testbed.sh up adds one")
    b = LocalDockerBackend(LocalDockerConfig(base_image=BASE, gpu_preflight=False))
    spec = make_run(tmp_path, b, "import os\nprint('nv', os.environ.get('NVIDIA_VISIBLE_DEVICES'), "
                                 "'cuda', os.environ.get('CUDA_VISIBLE_DEVICES'))", env=ENV)
    spec = type(spec)(**{**spec.__dict__, "gpus": "1,0"})
    hook_log = Path(TESTBED["RUNNER_FAKE_GPU_HOOK_LOG"]) if TESTBED.get("RUNNER_FAKE_GPU_HOOK_LOG") else None
    before = hook_log.read_text() if hook_log and hook_log.exists() else ""
    st = b.submit(spec, b.prepare(spec)).wait(60)
    assert st.state == RunState.SUCCEEDED, st
    assert "nv 1,0 cuda 0,1" in (spec.run_dir / "log.txt").read_text()
    assert RunDir(spec.run_dir).worker_info()["gpus"] == []  # what it saw: nothing, no real GPU
    if hook_log is not None:
        new = hook_log.read_text()[len(before):]
        assert "NVIDIA_VISIBLE_DEVICES=1,0" in new, new


def test_gpu_preflight_names_the_missing_layer(tmp_path: Path, backend: LocalDockerBackend) -> None:
    if TESTBED.get("RUNNER_DOCKER_HOST_GPUS") != "fake":
        pytest.skip("the engine has no (stand-in) NVIDIA runtime: scripts/testbed.sh up adds one")
    env = EnvSpec(name="docker_python", base_image=BASE, gpus="all")
    spec = make_run(tmp_path, backend, "print(1)", env=env)
    with pytest.raises(UserError) as e:
        backend.prepare(spec)
    text = e.value.render()
    assert "GPU preflight failed" in text and "missing layer: host driver" in text
    assert "ok      container toolkit" in text
    assert "was not started" in text


def test_prepare_checks_the_gpus_the_target_offers_as_submit_does(project: Path) -> None:
    if TESTBED.get("RUNNER_DOCKER_HOST_GPUS") != "fake":
        pytest.skip("the engine has no (stand-in) NVIDIA runtime: scripts/testbed.sh up adds one")
    (project / "job.py").write_text("print(1)\n")
    base = ["target=local_docker", "target.gpus=0", "env=docker_python", f"env.base_image={BASE}",
            "model=script", "model.path=job.py"]
    prep = run_cli("prepare", *base, cwd=project, timeout=300)
    sub = run_cli("submit", *base, cwd=project, timeout=300)
    # the env itself is cached either way; the GPUs of the target decide, for both alike
    assert prep.returncode == sub.returncode == 2, (prep.stderr, sub.stderr)
    assert "GPU preflight failed" in prep.stderr and "GPU preflight failed" in sub.stderr


def test_a_passed_preflight_is_not_repeated_for_the_same_image_and_gpus(
    tmp_path: Path, backend: LocalDockerBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no GPU here: the probe's verdict is the one stand-in, the image and the engine are real
    calls: list[str] = []

    def passing(cli: object, image: str, gpus: str, **kw: object) -> dk.Preflight:
        calls.append(gpus)
        return dk.Preflight(True, [("host driver", True, "stand-in")], None, {})

    from runner.plugins._docker import target as docker_target

    monkeypatch.setattr(docker_target, "gpu_preflight", passing)
    monkeypatch.setattr(docker_target, "_PREFLIGHT_PASSED", set())
    env = EnvSpec(name="docker_python", base_image=BASE, gpus="0")
    for _ in range(3):  # a sweep prepares once per job
        backend.prepare(make_run(tmp_path, backend, "print(1)", env=env))
    other = EnvSpec(name="docker_python", base_image=BASE, gpus="1")
    details = backend.prepare(make_run(tmp_path, backend, "print(1)", env=other)).details
    assert calls == ["0", "1"]  # once per GPU set
    assert "stand-in" in details["gpu_preflight"]


def test_a_cpu_only_run_needs_no_preflight(tmp_path: Path, backend: LocalDockerBackend) -> None:
    spec = make_run(tmp_path, backend, "print(1)", env=ENV)
    assert "gpu_preflight" not in backend.prepare(spec).details


# -- the CLI ------------------------------------------------------------------------------------
def test_cli_submit_runs_a_script_in_a_container(project: Path) -> None:
    (project / "train.py").write_text(textwrap.dedent("""
        import platform, sys
        import runner
        print("in", platform.node(), "args", sys.argv[1:])
        runner.log_metric("acc", 0.75)
        (runner.outputs_dir() / "model.txt").write_text("weights")
    """))
    (project / "big.bin").write_bytes(b"0" * 100)
    (project / ".runnerignore").write_text("big.bin\n")
    r = run_cli("submit", "target=local_docker", "env=docker_python", "model=script",
                "model.path=train.py", "model.args=[--lr,0.1]", f"env.base_image={BASE}",
                cwd=project, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "args ['--lr', '0.1']" in r.stdout
    assert "SUCCEEDED" in r.stderr and "acc=0.75" in r.stderr
    run_id = r.stderr.split("run ", 1)[1].split(":", 1)[0]
    from runner.store import Store

    rec = Store.for_project(project).get(run_id)
    rd = RunDir(rec.run_dir)
    assert (rd.outputs / "model.txt").read_text() == "weights"
    assert not (rd.code / "big.bin").exists()  # the snapshot honours .runnerignore
    assert containers_of(run_id) == []
    r = run_cli("prepare", "target=local_docker", "env=docker_python", "model=script",
                "model.path=train.py", f"env.base_image={BASE}", cwd=project)
    assert r.returncode == 0 and "cached" in r.stderr, r.stderr


def test_a_project_with_its_own_runner_package_runs_in_a_container(project: Path) -> None:
    # a project may well have a folder named like this tool; it must not hide the worker
    (project / "runner").mkdir()
    (project / "runner" / "__init__.py").write_text("raise ImportError('the project\\'s own')\n")
    (project / "job.py").write_text("print('job ran')\n")
    # the console script, as typed (`python -m runner.cli` here would import the project's)
    runner_cmd = str(Path(sys.executable).parent / "runner")
    r = subprocess.run([runner_cmd, "submit", "target=local_docker", "env=docker_python",
                        "model=script", "model.path=job.py", f"env.base_image={BASE}"],
                       cwd=project, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "job ran" in r.stdout, r.stdout + r.stderr


# -- TensorFlow in a container (slow: builds a tensorflow-cpu image once) ------------------------
@pytest.fixture(scope="module")
def tf_cpu_backend() -> tuple[LocalDockerBackend, EnvSpec]:
    import yaml

    conf = yaml.safe_load((Path(__file__).parent.parent / "conf" / "env" / "tf_cpu.yaml").read_text())
    env = EnvSpec(name=conf["name"], base_image=BASE, requirements=tuple(conf["requirements"]))
    return LocalDockerBackend(LocalDockerConfig(base_image=BASE)), env


@pytest.mark.slow
def test_gpu_preflight_on_a_cpu_only_tensorflow_image(
    tmp_path: Path, tf_cpu_backend: tuple[LocalDockerBackend, EnvSpec]
) -> None:
    if TESTBED.get("RUNNER_DOCKER_HOST_GPUS") != "fake":
        pytest.skip("the engine has no (stand-in) NVIDIA runtime: scripts/testbed.sh up adds one")
    backend, env = tf_cpu_backend
    spec = make_run(tmp_path, backend, "print(1)", env=EnvSpec(**{**env.__dict__, "gpus": "0"}))
    with pytest.raises(UserError) as e:
        backend.prepare(spec)
    text = e.value.render()
    assert "missing layer: host driver" in text
    assert "MISSING framework: tensorflow" in text and "CPU-only build" in text


# -- data travels with the run: the lab's journey through the CLI --------------------------------
MR = Path(__file__).resolve().parents[2] / "shared" / "data" / "rt-polarity"
TINY_CNN = ["model=sentiment_cnn", "data=text_files", "data.max_samples=600", "model.epochs=1",
            "model.maxlen=20", "model.num_words=500", "model.filters=8", "model.hidden_dims=8",
            "model.embedding_dim=8", "model.batch_size=32"]

BLOCKER = """\
import sys
class _NoFramework:
    BLOCKED = ("numpy", "tensorflow", "keras", "jax", "torch")
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NoFramework())
"""


def reviews(where: Path) -> Path:
    """Real movie-review sentences when the shared MR set is here, else generated ones."""
    if MR.is_dir():
        return MR
    where.mkdir(parents=True, exist_ok=True)
    good = ["a wonderful moving film", "great acting and a clever story", "i loved every minute"]
    bad = ["a dull boring mess", "terrible script and wooden acting", "i hated every minute"]
    (where / "reviews.pos").write_text("\n".join(good * 100) + "\n")
    (where / "reviews.neg").write_text("\n".join(bad * 100) + "\n")
    return where


def test_data_is_mounted_read_only_and_the_cache_volume_persists(project: Path, tmp_path: Path) -> None:
    (project / "job.py").write_text(textwrap.dedent("""
        import os, sys
        import runner
        p = runner.data_path()
        print("DATA", p, sorted(x.name for x in p.iterdir()) if p.is_dir() else p.read_text().strip())
        try:
            open(p / "new.txt" if p.is_dir() else str(p) + ".new", "w")
            print("WROTE")
        except OSError as e:
            print("READ-ONLY", e.errno)
        cache = os.environ["KERAS_HOME"]
        os.makedirs(cache, exist_ok=True)
        marker = os.path.join(cache, "runner-test-marker")
        print("CACHE", os.path.exists(marker))
        open(marker, "w").write(sys.argv[1])
    """))
    (project / "data").mkdir()
    (project / "data" / "a.txt").write_text("alpha\n")
    (project / ".runnerignore").write_text("data/\n")
    base = ["submit", "target=local_docker", "env=docker_python", f"env.base_image={BASE}",
            "model=script", "model.path=job.py", "target.cache_volume=runner-test-cache"]
    docker("volume", "rm", "-f", "runner-test-cache")
    try:
        r = run_cli(*base, "data.path=data", "model.args=[one]", cwd=project, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "DATA /runner/data/path ['a.txt']" in r.stdout  # in the container, not the client's path
        assert "READ-ONLY" in r.stdout and "WROTE" not in r.stdout
        assert "CACHE False" in r.stdout
        f = tmp_path / "single.txt"
        f.write_text("one file\n")
        r = run_cli(*base, f"data.path={f}", "model.args=[two]", cwd=project, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "DATA /runner/data/path/single.txt one file" in r.stdout  # a file keeps its name
        assert "CACHE True" in r.stdout  # the cache volume outlives the run
        there = tmp_path / "resident"
        there.mkdir()
        (there / "r.txt").write_text("x")
        r = run_cli(*base, f"data.path=target:{there}", "model.args=[three]", cwd=project, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"DATA {there} ['r.txt']" in r.stdout  # on the host: mounted at its own path
    finally:
        docker("volume", "rm", "-f", "runner-test-cache")


@pytest.mark.slow
@pytest.mark.tf
def test_the_lab_journey_in_a_container_through_the_cli(project: Path, tmp_path: Path) -> None:
    """prepare (then a cache hit), submit the sentiment CNN on real reviews by a relative path,
    an absolute one and one that lies on the host, follow the log, show, predict."""
    data = reviews(tmp_path / "reviews")
    env = ["target=local_docker", "env=tf_cpu", f"env.base_image={BASE}"]
    rel = os.path.relpath(data, project)
    r = run_cli("prepare", *env, *TINY_CNN, f"data.path={rel}", cwd=project, timeout=1800)
    assert r.returncode == 0, r.stderr
    r = run_cli("prepare", *env, *TINY_CNN, f"data.path={rel}", cwd=project, timeout=300)
    assert r.returncode == 0 and ": cached [" in r.stderr, r.stderr
    ids = {}
    for how, path in (("relative", rel), ("absolute", str(data)), ("on host", f"target:{data}")):
        r = run_cli("submit", "--detach", *env, *TINY_CNN, f"data.path={path}", cwd=project,
                    timeout=300)
        assert r.returncode == 0, r.stderr
        run_id = r.stderr.split("run ", 1)[1].split(":", 1)[0]
        ids[how] = run_id
        logs = run_cli("logs", run_id, "-f", cwd=project, timeout=600)
        assert logs.returncode == 0, logs.stderr
        assert "val_accuracy:" in logs.stdout, logs.stdout[-2000:]
        show = run_cli("show", run_id, cwd=project)
        assert "SUCCEEDED" in show.stdout, show.stdout
        assert "data.path" in show.stdout and "gpus" in show.stdout
        if how == "on host":
            assert "on the target, not shipped" in show.stdout and f"read at {data}" in show.stdout
        else:
            assert "read at /runner/data/path" in show.stdout
    cmp = run_cli("compare", ids["relative"], ids["absolute"], cwd=project)
    assert "data.path (content)" not in cmp.stdout  # the same data, whichever way it was named
    pred = run_cli("predict", ids["relative"], "a wonderful, moving film", cwd=project, timeout=300)
    assert pred.returncode == 0, pred.stderr
    assert "a wonderful, moving film" in pred.stdout


@pytest.mark.slow
@pytest.mark.tf
def test_a_client_without_numpy_or_tensorflow_trains_in_a_container(project: Path,
                                                                     tmp_path: Path) -> None:
    blocker = tmp_path / "no-framework"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    client = {"PYTHONPATH": str(blocker)}
    probe = run_cli("plugins", cwd=project, env=client)
    assert probe.returncode == 0, probe.stderr
    check = subprocess.run([sys.executable, "-c", "import numpy"], env={**os.environ, **client},
                           capture_output=True, text=True)
    assert check.returncode != 0 and "No module named" in check.stderr  # the client truly lacks it
    data = reviews(tmp_path / "reviews")
    env = ["target=local_docker", "env=tf_cpu", f"env.base_image={BASE}"]
    r = run_cli("prepare", *env, *TINY_CNN, f"data.path={data}", cwd=project, env=client,
                timeout=1800)
    assert r.returncode == 0, r.stderr
    r = run_cli("submit", *env, *TINY_CNN, f"data.path={data}", cwd=project, env=client,
                timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert "SUCCEEDED" in r.stderr
    for args in (["runs"], ["show", "last"]):
        v = run_cli(*args, cwd=project, env=client)
        assert v.returncode == 0 and "SUCCEEDED" in v.stdout, v.stderr
    pred = run_cli("predict", "last", "a fine film", cwd=project, env=client)
    assert pred.returncode == 2, pred.stdout + pred.stderr
    assert "Traceback" not in pred.stderr and "pip install" in pred.stderr


def test_a_container_never_started_is_lost_and_removed(
    tmp_path: Path, backend: LocalDockerBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_run(tmp_path, backend, "print(1)", env=ENV)
    image = str(backend.prepare(spec).details["image"])
    name = f"runner-{spec.run_id}"  # what a client killed between create and start leaves
    r = docker("create", "--name", name, "--label", f"{dk.L_RUN_ID}={spec.run_id}", image, "true")
    assert r.returncode == 0, r.stderr
    handle = backend.reattach(spec.run_id, spec.run_dir, {"container": name})
    assert handle.status().state == RunState.QUEUED  # may still be starting
    monkeypatch.setattr(local_docker, "CREATED_PATIENCE", 0.0)
    st = handle.status()
    assert st.state == RunState.LOST and "never started" in st.message
    assert containers_of(spec.run_id) == []


# -- runner docker-prune ------------------------------------------------------------------------
def _env_tags(env_name: str) -> set[str]:
    r = docker("image", "ls", "--filter", f"label={dk.L_ENV_NAME}={env_name}",
               "--format", "{{.Repository}}:{{.Tag}}")
    return set(r.stdout.split())


def test_a_failed_env_build_leaves_no_container_and_its_leftovers_are_pruned(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "job.py").write_text("print(1)\n")
    before = set(docker("ps", "-aq", "--no-trunc").stdout.split())
    images_before = set(docker("image", "ls", "-q", "--no-trunc").stdout.split())
    # a requirement no index has: the build fails at its pip step, after its earlier steps
    r = run_cli("prepare", "target=local_docker", "env=docker_python", f"env.base_image={BASE}",
                f"+env.requirements=[no-such-package-{uuid.uuid4().hex[:8]}]", "model=script",
                "model.path=job.py", cwd=project, timeout=600)
    assert r.returncode == 2 and "building the image" in r.stderr, r.stderr
    assert set(docker("ps", "-aq", "--no-trunc").stdout.split()) == before  # no stopped step
    left = set(docker("image", "ls", "-q", "--no-trunc").stdout.split()) - images_before
    assert left, "a failed build leaves its completed steps (the build cache of a retry)"
    from runner.plugins._docker import housekeeping

    cli = dk.DockerCLI()
    young = {i.id for i in dk.unused_env_images(cli, keep=1)}
    assert not (left & young), "a build's untagged steps are left alone while it may still run"
    monkeypatch.setattr(housekeeping, "STAGING_PATIENCE", 0.0)  # as if an hour had passed
    old = {i.id for i in dk.unused_env_images(cli, keep=1)}
    assert left <= old  # they are the runner's, and docker-prune removes them
    dk.remove_env_images(cli, [i for i in dk.unused_env_images(cli, keep=1) if i.id in left])
    assert not left & set(docker("image", "ls", "-q", "--no-trunc").stdout.split())


def test_docker_prune_lists_then_removes_only_old_unused_env_images(
    tmp_path: Path, backend: LocalDockerBackend, scratch_images: list[str]
) -> None:
    name = f"prunetest-{tmp_path.name.lower()[-12:]}"
    reqs = tmp_path / "reqs.txt"
    reqs.write_text("pip\n")
    env = EnvSpec(name=name, base_image=BASE, requirements=("-r reqs.txt",), root=tmp_path)
    spec = make_run(tmp_path, backend, "print(1)", env=env)
    old = str(backend.prepare(spec).details["image"])
    scratch_images.append(old)
    reqs.write_text("pip\nsetuptools\n")  # the env changed: a second image for the same env
    new = str(backend.prepare(spec).details["image"])
    scratch_images.append(new)
    assert old != new and _env_tags(name) == {old, new}

    # an image a container was made from stays, even a stopped container of an older image
    made = docker("create", old, "true")
    assert made.returncode == 0, made.stderr
    try:
        kept = run_cli("docker-prune", "--env", name, cwd=tmp_path)
        assert kept.returncode == 0, kept.stderr
        assert "no unused env images" in kept.stdout and old not in kept.stdout
    finally:
        docker("rm", "-f", made.stdout.strip())

    dry = run_cli("docker-prune", "--env", name, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert old in dry.stdout and new not in dry.stdout and "MiB" in dry.stdout
    assert f"`runner docker-prune --env {name} --yes` removes them" in dry.stdout
    assert _env_tags(name) == {old, new}  # a dry run removes nothing

    done = run_cli("docker-prune", "--env", name, "--yes", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "removed 1 env image(s)" in done.stdout
    assert _env_tags(name) == {new}  # exactly the old one went
    assert "no unused env images" in run_cli("docker-prune", "--env", name, cwd=tmp_path).stdout


def test_docker_prune_never_touches_an_image_built_from_an_env_image(
    tmp_path: Path, backend: LocalDockerBackend, scratch_images: list[str]
) -> None:
    env = EnvSpec(name=f"prunetest-{tmp_path.name.lower()[-12:]}", base_image=BASE,
                  requirements=("pip",))
    spec = make_run(tmp_path, backend, "print(1)", env=env)
    image = str(backend.prepare(spec).details["image"])
    scratch_images.append(image)
    derived = f"runner-test-derived:{tmp_path.name.lower()[-20:]}"  # inherits our labels
    r = subprocess.run(["docker", "build", "-q", "-t", derived, "-"], capture_output=True,
                       text=True, input=f"FROM {image}\nLABEL mine=1\n", timeout=120)
    assert r.returncode == 0, r.stderr
    scratch_images.insert(0, derived)  # the child goes first
    listed = run_cli("docker-prune", "--env", env.name, "--keep", "0", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert image in listed.stdout and derived not in listed.stdout


def test_docker_prune_refuses_a_negative_keep(tmp_path: Path) -> None:
    r = run_cli("docker-prune", "--keep", "-1", cwd=tmp_path)
    assert r.returncode == 2
    assert "--keep: must be 0 or more, got -1" in r.stderr
