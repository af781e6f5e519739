"""The remote_docker backend against real SSH hosts and a real Docker engine
(scripts/testbed.sh up starts both): the contract suite, attach and its host-key and key
refusals, content-addressed shipping, --gpus, logs across a killed connection, cancel, outputs,
reconcile after a killed client, slots, doctor, and the clear errors of a broken host."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.backend import EnvSpec, RunHandle, RunState
from runner.data import collect as collect_data
from runner.errors import UserError
from runner.plugins import _docker as dk
from runner.plugins import _store as store
from runner.plugins.local_docker import LocalDockerBackend, LocalDockerConfig
from runner.plugins.remote_docker import (
    RemoteDockerBackend,
    RemoteDockerConfig,
    RemoteHandle,
    safe_extract,
)
from runner.rundir import RunDir
from runner.testing import BackendContract, make_run
from runner.units import size_text

from .conftest import read_testbed_env, run_cli

TB = read_testbed_env()
BASE = TB.get("RUNNER_BASE_IMAGE", "runner-base:bookworm")
SSH_CONFIG = TB.get("RUNNER_TEST_SSH_CONFIG", "")
KNOWN_HOSTS = TB.get("RUNNER_TEST_KNOWN_HOSTS", "")
CLIENT_KEY = TB.get("RUNNER_TEST_SSH_KEY", "")
HOSTS = TB.get("RUNNER_TEST_SSH_HOSTS", "").split()
PORT = TB.get("RUNNER_TEST_SSH_PORT", "")
LOOPBACK = HOSTS[0] if HOSTS else "runner-remote"
NETNS = HOSTS[1] if len(HOSTS) > 1 else None


def _problem() -> str | None:
    if not (SSH_CONFIG and Path(SSH_CONFIG).is_file() and HOSTS and PORT):
        return "no SSH test hosts; start them with scripts/testbed.sh up"
    try:
        r = subprocess.run(["docker", "image", "inspect", BASE], capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"no docker CLI ({e}); scripts/testbed.sh up installs and starts the engine"
    if r.returncode != 0:
        return f"no Docker engine with the base image {BASE}; scripts/testbed.sh up makes both"
    r = subprocess.run(["ssh", "-F", SSH_CONFIG, LOOPBACK, "true"], capture_output=True, timeout=30)
    if r.returncode != 0:
        return f"SSH test host {LOOPBACK} does not answer; scripts/testbed.sh up starts it"
    return None


_PROBLEM = _problem()
pytestmark = [pytest.mark.ssh, pytest.mark.docker,
              pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")]

ENV = EnvSpec(name="docker_python", base_image=BASE)


@pytest.fixture(autouse=True, scope="module")
def _user_ssh_untouched() -> Iterator[None]:
    """No test may change the user's ~/.ssh (everything uses the testbed's own files)."""
    def snap() -> dict[str, str]:
        d = Path("~/.ssh").expanduser()
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in (sorted(d.iterdir()) if d.is_dir() else []) if p.is_file()}
    before = snap()
    yield
    assert snap() == before, "a test changed ~/.ssh"


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)


def containers_of(run_id: str) -> list[str]:
    return docker("ps", "-aq", "--filter", f"label={dk.L_RUN_ID}={run_id}").stdout.split()


def config(work: Path, host: str = LOOPBACK, **kw: object) -> RemoteDockerConfig:
    return RemoteDockerConfig(host=host, ssh_config=SSH_CONFIG, work_dir=str(work),
                              base_image=BASE, cancel_grace=5, **kw)  # type: ignore[arg-type]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The work dir on the host (the test hosts share this machine's filesystem; a real host
    would not, and nothing here relies on it)."""
    return tmp_path / "remote-work"


@pytest.fixture
def backend(work: Path) -> RemoteDockerBackend:
    return RemoteDockerBackend(config(work))


def wait_log(handle: RunHandle, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line for _, line in handle.logs(0)):
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in the log")


class TestRemoteDockerContract(BackendContract):
    timeout = 90.0

    @pytest.fixture
    def backend(self, tmp_path: Path) -> RemoteDockerBackend:
        return RemoteDockerBackend(config(tmp_path / "remote-work"))

    @pytest.fixture
    def env(self) -> EnvSpec:
        return ENV

    def assert_nothing_left(self, handle: RunHandle) -> None:
        assert isinstance(handle, RemoteHandle)
        super().assert_nothing_left(handle)  # no process of the run's script either (same kernel)
        assert containers_of(handle.run_id) == []


# -- attach ---------------------------------------------------------------------------------
def _fingerprint() -> str:
    pub = Path(KNOWN_HOSTS).parent / "host_ed25519.pub"
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                          check=True).stdout.split()[1]


def test_attach_checks_then_writes_the_target_and_a_run_goes_through_it(
        project: Path, work: Path) -> None:
    r = run_cli("attach", "gpubox", "--host", LOOPBACK, "--ssh-config", SSH_CONFIG,
                "--work-dir", str(work), cwd=project)
    assert r.returncode == 0, r.stderr
    assert "Docker answers" in r.stdout
    target = project / "conf" / "target" / "gpubox.yaml"
    text = target.read_text()
    assert "backend: remote_docker" in text and f'host: "{LOOPBACK}"' in text
    assert "password" not in text.lower()
    (project / "job.py").write_text("import runner\nprint('on the remote', flush=True)\n"
                                    "runner.log_metric('acc', 0.75)\n"
                                    "(runner.outputs_dir() / 'model.txt').write_text('weights')\n")
    # a documented key the file leaves at its default is overridden as typed (no "+")
    r = run_cli("submit", "target=gpubox", "env=docker_python", "model=script",
                "model.path=job.py", "target.memory=512m", cwd=project, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "on the remote" in r.stdout and "SUCCEEDED" in r.stderr
    rd = next((project / ".runner" / "runs").iterdir())
    assert RunDir(rd).meta()["target_config"]["memory"] == "512m"
    assert (rd / "outputs" / "model.txt").read_text() == "weights"  # fetched back
    assert RunDir(rd).summary() == {"acc": 0.75}
    assert containers_of(rd.name) == []
    # a second attach under the same name is refused; --force replaces it
    r = run_cli("attach", "gpubox", "--host", LOOPBACK, "--ssh-config", SSH_CONFIG, cwd=project)
    assert r.returncode == 2 and "already exists" in r.stderr


def test_attach_refuses_an_unknown_host_key_then_trusts_the_checked_one(
        project: Path, tmp_path: Path) -> None:
    empty_conf = tmp_path / "empty_ssh_config"
    empty_conf.write_text("")
    known = tmp_path / "known_hosts"
    args = ["attach", "box", "--host", "127.0.0.1", "--port", PORT, "--user", "root",
            "--key", CLIENT_KEY, "--ssh-config", str(empty_conf), "--known-hosts", str(known)]
    r = run_cli(*args, cwd=project)
    fp = _fingerprint()
    assert r.returncode == 2
    assert "host key not in" in r.stderr and fp in r.stderr
    assert f"--trust-host-key {fp}" in r.stderr  # the exact command to run
    assert not (project / "conf" / "target" / "box.yaml").exists()
    r = run_cli(*args, "--trust-host-key", "SHA256:" + "A" * 43, cwd=project)
    assert r.returncode == 2 and "does not match" in r.stderr
    assert not known.exists() or known.read_text() == ""
    r = run_cli(*args, "--trust-host-key", fp, cwd=project)
    assert r.returncode == 0, r.stderr
    assert known.read_text().startswith(f"[127.0.0.1]:{PORT} ssh-ed25519 ")
    assert (project / "conf" / "target" / "box.yaml").is_file()
    # the next connection checks against that file: no flag needed, and a changed key is refused
    r = run_cli("doctor", "box", cwd=project)
    assert "host key known" in r.stdout
    other = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(tmp_path / "impostor")], capture_output=True)
    assert other.returncode == 0
    fake = (tmp_path / "impostor.pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{PORT} {fake[0]} {fake[1]}\n")
    r = run_cli("doctor", "box", cwd=project)
    assert r.returncode != 0 and "CHANGED" in r.stdout


def test_attach_refuses_a_key_the_host_does_not_accept(project: Path, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "bad")],
                   check=True)
    empty_conf = tmp_path / "empty_ssh_config"
    empty_conf.write_text("")
    r = run_cli("attach", "box", "--host", "127.0.0.1", "--port", PORT, "--user", "root",
                "--key", str(tmp_path / "bad"), "--ssh-config", str(empty_conf),
                "--known-hosts", KNOWN_HOSTS, cwd=project)
    assert r.returncode == 2
    assert "refused the key" in r.stderr and str(tmp_path / "bad") in r.stderr
    assert "ssh-copy-id" in r.stderr and "--install-key" in r.stderr
    assert not (project / "conf" / "target" / "box.yaml").exists()
    r = run_cli("attach", "box", "--host", "127.0.0.1", "--port", PORT, "--key",
                str(tmp_path / "missing"), "--ssh-config", str(empty_conf), cwd=project)
    assert r.returncode == 2 and "does not exist" in r.stderr


@pytest.mark.skipif(NETNS is None, reason="the testbed's second (netns) host is not up")
def test_a_host_behind_a_proxycommand_runs_work(tmp_path: Path, work: Path) -> None:
    b = RemoteDockerBackend(config(work, host=str(NETNS)))
    spec = make_run(tmp_path, b, "print('through the proxy')", env=ENV)
    handle = b.submit(spec, b.prepare(spec))
    assert handle.wait(90).state == RunState.SUCCEEDED
    assert f"@{NETNS}:22" in b.session.label
    assert "through the proxy" in (spec.run_dir / "log.txt").read_text()


# -- prepare and shipping -------------------------------------------------------------------
def test_prepare_hits_the_same_image_key_as_local_docker(tmp_path: Path,
                                                         backend: RemoteDockerBackend) -> None:
    spec = make_run(tmp_path, backend, "pass", env=ENV)
    backend.prepare(spec)
    again = RemoteDockerBackend(backend.config)  # a new client: nothing remembered
    hit = again.prepare(spec)
    assert hit.cached and hit.reason == "cached"
    local = LocalDockerBackend(LocalDockerConfig(base_image=BASE)).prepare(spec)
    assert local.env_key == hit.env_key and local.cached  # the host's engine is this one


def test_a_second_submit_after_one_edit_ships_about_that_file(project: Path, work: Path) -> None:
    (project / "conf" / "target").mkdir(parents=True)
    (project / "conf" / "target" / "box.yaml").write_text(
        f"backend: remote_docker\nhost: {LOOPBACK}\nssh_config: {SSH_CONFIG}\n"
        f"work_dir: {work}\nbase_image: {BASE}\n")
    lib = project / "lib"
    lib.mkdir()
    for i in range(40):
        (lib / f"mod{i}.py").write_text(f"# module {i}\n" + "x = 1\n" * 500)
    (project / "job.py").write_text("print('job ran')\n")
    args = ("submit", "target=box", "env=docker_python", "model=script", "model.path=job.py")
    r1 = run_cli(*args, cwd=project, timeout=300)
    assert r1.returncode == 0, r1.stderr
    (lib / "mod7.py").write_text("# module 7, edited\n")
    r2 = run_cli(*args, cwd=project, timeout=300)
    assert r2.returncode == 0, r2.stderr
    first, second = _run_dirs(project)
    s1 = json.loads((first / "remote.json").read_text())["shipped"]
    s2 = json.loads((second / "remote.json").read_text())["shipped"]
    assert s1["sent_files"] == s1["files"] == 42  # 40 modules, job.py, conf/target/box.yaml
    assert s2["sent_files"] == 1 and s2["sent_bytes"] == len("# module 7, edited\n")
    assert s2["archive_bytes"] < s2["bytes"] / 3  # request files + one module, not the project
    assert "shipped 1 of 42 code files" in r2.stderr
    remote_code = Path(json.loads((second / "remote.json").read_text())["remote_run_dir"]) / "code"
    assert (remote_code / "lib" / "mod7.py").read_text() == "# module 7, edited\n"
    assert (remote_code / "lib" / "mod8.py").read_text().startswith("# module 8")


# -- data by content ------------------------------------------------------------------------
COUNT_JOB = """\
import os, runner
root = runner.data_path()
files = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
print('data at', root, flush=True)
print('files', len(files), flush=True)
first = 'r000.txt' if 'r000.txt' in files else files[0]
print('first says', open(os.path.join(root, first)).readline().strip(), flush=True)
"""


def _data_project(project: Path, work: Path, n: int = 30) -> Path:
    _target(project, work)
    (project / ".runnerignore").write_text("reviews/\n")  # data travels as data, not as code
    (project / "job.py").write_text(COUNT_JOB)
    reviews = project / "reviews"
    (reviews / "more").mkdir(parents=True)
    for i in range(n):
        (reviews / ("more" if i % 3 else ".") / f"r{i:03d}.txt").write_text(f"review {i}\n" * 50)
    return reviews


def _run_dirs(project: Path) -> list[Path]:
    """The project's run directories in the order the runs were made (two runs in one second
    have ids that sort either way)."""
    from runner.store import Store

    return [r.run_dir for r in reversed(Store(project / ".runner").list())]


def _data_cost(project: Path, run: int = -1) -> dict:  # type: ignore[type-arg]
    rd = _run_dirs(project)[run]
    return json.loads((rd / "remote.json").read_text())["data"]  # type: ignore[no-any-return]


def _verified_store(work: Path) -> list[str]:
    """Every object's name is its sha256: the store never holds a partial or wrong object."""
    names = []
    for p in (work / "objects").iterdir():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name, p
        names.append(p.name)
    return names


def test_data_travels_by_content_once_and_an_edit_ships_one_file(project: Path,
                                                                work: Path) -> None:
    reviews = _data_project(project, work)
    args = ("submit", "target=box", "env=docker_python", "model=script", "model.path=job.py",
            "data.path=reviews")
    r = run_cli(*args, cwd=project, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "data at /runner/data/path" in r.stdout and "files 30" in r.stdout
    assert "first says review 0" in r.stdout
    total = sum(p.stat().st_size for p in reviews.rglob("*.txt"))
    kib = size_text(total)
    assert f"[runner] data path: shipped 30 of 30 files ({kib} of {kib}) to root@" in r.stderr
    cost = _data_cost(project)["inputs"][0]
    assert (cost["sent_files"], cost["files"], cost["present"]) == (30, 30, False)
    assert cost["sent_bytes"] == cost["bytes"] == total
    tree = work / "data" / cost["digest"]
    assert (tree / "more" / "r001.txt").read_text() == "review 1\n" * 50
    assert (tree / "r000.txt").stat().st_nlink >= 2  # a hard link into objects/, not a copy
    # the same data again: one cheap check, no byte of data sent
    r = run_cli(*args, cwd=project, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "files 30" in r.stdout
    assert f"[runner] data path: 30 files ({kib}) already on root@" in r.stderr
    again = _data_cost(project)
    assert again["wire_bytes"] == 0 and again["inputs"][0]["present"]
    # one file edited: exactly that file travels, into a new tree; the old tree is untouched
    (reviews / "r000.txt").write_text("edited\n")
    r = run_cli(*args, cwd=project, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "first says edited" in r.stdout and "files 30" in r.stdout
    assert f"[runner] data path: shipped 1 of 30 files ({size_text(7)} of " in r.stderr  # 7 B
    edit = _data_cost(project)["inputs"][0]
    assert (edit["sent_files"], edit["sent_bytes"]) == (1, len("edited\n"))
    assert edit["digest"] != cost["digest"]
    assert (tree / "r000.txt").read_text() == "review 0\n" * 50
    assert not list((work / "data").glob(".tmp-*")) and not list((work / "incoming").iterdir())
    assert len(_verified_store(work)) >= 31
    # the run saw its data read-only
    rid = _run_dirs(project)[-1].name
    assert containers_of(rid) == []


def test_data_on_the_host_is_read_in_place_and_a_missing_path_stops_first(
        project: Path, work: Path, tmp_path: Path) -> None:
    _data_project(project, work, n=3)
    on_host = tmp_path / "on-host" / "reviews"  # the test host shares this filesystem
    on_host.mkdir(parents=True)
    (on_host / "a.txt").write_text("lies on the host\n")
    args = ("submit", "target=box", "env=docker_python", "model=script", "model.path=job.py")
    r = run_cli(*args, f"data.path=target:{on_host}", cwd=project, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"data at {on_host}" in r.stdout and "first says lies on the host" in r.stdout
    assert "[runner] data" not in r.stderr  # nothing shipped
    r = run_cli(*args, "data.path=target:/no/such/data", cwd=project, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "error: data.path='target:/no/such/data': /no/such/data does not exist on " in r.stderr
    assert "root@127.0.0.1" in r.stderr and "without the target: prefix" in r.stderr
    assert "Traceback" not in r.stderr
    rid = _run_dirs(project)[-1].name
    assert containers_of(rid) == [] and not (work / "runs" / rid).exists()  # nothing started


class _CutAfter:
    """A file that ends early (or says something else): what a file changed mid-upload, or a
    stream cut off, looks like to the upload."""

    def __init__(self, path: str, keep: int | None, flip: bool = False) -> None:
        data = Path(path).read_bytes()
        if flip:
            data = bytes([data[0] ^ 1]) + data[1:]
        self.f = io.BytesIO(data[:keep] if keep is not None else data)

    def __enter__(self) -> io.BytesIO:
        return self.f

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def test_a_cut_off_data_upload_publishes_no_partial_object(tmp_path: Path,
                                                          backend: RemoteDockerBackend) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        (data / f"f{i}.bin").write_bytes(os.urandom(50_000 + i))
    (inp,) = collect_data({"path": str(data)}, {"path": "dir"}, cwd=tmp_path,
                          cache_path=tmp_path / "hashes.db")
    w = backend.work_dir
    work = Path(w)
    sha = {n: h for n, (h, _) in inp.manifest.items()}
    by_hash = sorted(sha, key=sha.__getitem__)  # objects travel in hash order
    cut_name, flip_name = by_hash[2], by_hash[-1]

    def cut(path: str) -> _CutAfter:  # the third object arrives half: the stream ends there
        return _CutAfter(path, 25_000 if path.endswith("/" + cut_name) else None)

    with pytest.raises(UserError) as e:
        store.stage(backend.session, w, [inp], set(), opener=cut)  # type: ignore[arg-type]
    assert f"{cut_name} could not be read whole" in e.value.message
    assert "nothing partial was kept" in " ".join(e.value.hints)
    # the two objects before it came whole and are kept; the half one and the rest are not
    assert set(_verified_store(work)) == {sha[n] for n in by_hash[:2]}
    assert not (work / "data" / str(inp.digest)).exists()
    assert not list((work / "data").iterdir()) and not list((work / "incoming").iterdir())

    def flip(path: str) -> _CutAfter:  # same size, other bytes: only the host's check sees it
        return _CutAfter(path, None, flip=path.endswith("/" + flip_name))

    with pytest.raises(UserError) as e:
        store.stage(backend.session, w, [inp], set(), opener=flip)  # type: ignore[arg-type]
    assert "other content than they were hashed with" in e.value.message
    assert set(_verified_store(work)) == set(sha.values()) - {sha[flip_name]}
    assert not (work / "data" / str(inp.digest)).exists()
    # a clean retry sends only what is still missing, and publishes the tree
    shipped, totals = store.stage(backend.session, w, [inp], set())
    assert shipped[0].sent_files == 1 and totals["objects_sent"] == 1
    tree = work / "data" / str(inp.digest)
    assert sorted(p.name for p in tree.iterdir()) == [f"f{i}.bin" for i in range(6)]
    assert all((tree / n).read_bytes() == (data / n).read_bytes() for n in sha)
    assert not list((work / "incoming").iterdir())


# -- GPUs -----------------------------------------------------------------------------------
def test_gpus_reach_the_remote_engine(tmp_path: Path, work: Path) -> None:
    hook_log = TB.get("RUNNER_FAKE_GPU_HOOK_LOG")
    if not hook_log or TB.get("RUNNER_DOCKER_HOST_GPUS") != "fake":
        pytest.skip("the engine has no stand-in NVIDIA hook (scripts/testbed.sh starts one)")
    b = RemoteDockerBackend(config(work, gpus="0,1", gpu_preflight=False))
    spec = make_run(tmp_path, b, "import os; print('cuda', os.environ.get('CUDA_VISIBLE_DEVICES'))",
                    env=ENV)
    spec = type(spec)(**{**spec.__dict__, "gpus": "0,1"})
    prepared = b.prepare(spec)
    before = len(Path(hook_log).read_text().splitlines())
    handle = b.submit(spec, prepared)
    assert handle.wait(90).state == RunState.SUCCEEDED
    assert "cuda 0,1" in (spec.run_dir / "log.txt").read_text()
    new = Path(hook_log).read_text().splitlines()[before:]
    # the hook logs each container the engine started with a device request
    assert any(ln.endswith("NVIDIA_VISIBLE_DEVICES=0,1") for ln in new), new


def test_gpu_preflight_names_the_missing_host_layer(tmp_path: Path, work: Path) -> None:
    b = RemoteDockerBackend(config(work, gpus="all"))
    spec = make_run(tmp_path, b, "pass", env=ENV)
    spec = type(spec)(**{**spec.__dict__, "gpus": "all"})
    with pytest.raises(UserError) as e:
        b.prepare(spec)
    assert "missing layer: host driver" in e.value.message
    assert any("nvidia-smi" in h for h in e.value.hints)


# -- logs, cancel, outputs, reconcile ---------------------------------------------------------
def _cut(b: RemoteDockerBackend) -> None:
    """Kill the client's SSH connection under it: the ProxyCommand process we started, or the
    TCP socket of a direct connection."""
    transport = b.session.connect().transport
    sock = transport.sock
    proc = getattr(sock, "process", None)
    if proc is not None:
        os.kill(proc.pid, signal.SIGKILL)
    else:
        sock.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize("host", [LOOPBACK, NETNS or LOOPBACK], ids=["loopback", "proxycommand"])
def test_logs_survive_a_killed_connection_without_losing_or_repeating_a_line(
        tmp_path: Path, work: Path, host: str) -> None:
    b = RemoteDockerBackend(config(work, host=host))
    spec = make_run(tmp_path, b, "import time\nfor i in range(80):\n"
                                 "    print(f'tick {i}', flush=True)\n    time.sleep(0.04)\n", env=ENV)
    handle = b.submit(spec, b.prepare(spec))
    seen: list[str] = []
    offset, cuts = 0, 0
    while True:
        ended = handle.status().terminal
        for nxt, line in list(handle.logs(offset)):
            seen.append(line)
            offset = nxt
        if cuts < 2 and len(seen) > 10 + 30 * cuts:
            _cut(b)
            cuts += 1
        if ended:
            break
        time.sleep(0.1)
    assert handle.status().state == RunState.SUCCEEDED
    ticks = [ln.strip() for ln in seen if ln.startswith("tick")]
    assert ticks == [f"tick {i}" for i in range(80)]
    assert cuts == 2 and b.session.reconnects >= 2


def test_cancel_through_the_cli_leaves_no_container(project: Path, work: Path) -> None:
    _target(project, work)
    (project / "job.py").write_text("import time\nprint('working', flush=True)\ntime.sleep(120)\n")
    r = run_cli("submit", "--detach", "target=box", "env=docker_python", "model=script",
                "model.path=job.py", cwd=project, timeout=300)
    assert r.returncode == 0, r.stderr
    run_id = next((project / ".runner" / "runs").iterdir()).name
    assert len(containers_of(run_id)) == 1
    r = run_cli("cancel", run_id, cwd=project)
    assert "CANCELLED" in r.stderr
    assert containers_of(run_id) == []
    r = run_cli("runs", cwd=project)
    assert "CANCELLED" in r.stdout


def _target(project: Path, work: Path, **extra: object) -> None:
    (project / "conf" / "target").mkdir(parents=True, exist_ok=True)
    lines = ["backend: remote_docker", f"host: {LOOPBACK}", f"ssh_config: {SSH_CONFIG}",
             f"work_dir: {work}", f"base_image: {BASE}", "cancel_grace: 3"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    (project / "conf" / "target" / "box.yaml").write_text("\n".join(lines) + "\n")


def test_a_killed_client_leaves_a_run_that_runs_reconciles_and_logs_f_reattaches(
        project: Path, work: Path) -> None:
    _target(project, work)
    (project / "job.py").write_text(
        "import time, runner\nfor i in range(30):\n    print(f'step {i}', flush=True)\n"
        "    time.sleep(0.1)\nrunner.log_metric('done', 1.0)\n"
        "(runner.outputs_dir() / 'result.txt').write_text('ok')\n")
    import sys

    from .conftest import REPO  # noqa: F401 - the CLI runs from the installed package

    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "submit", "target=box",
                             "env=docker_python", "model=script", "model.path=job.py"],
                            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "step 3" in line:
            break
    proc.kill()
    proc.wait()
    run_id = next((project / ".runner" / "runs").iterdir()).name
    r = run_cli("runs", cwd=project)
    assert "RUNNING" in r.stdout  # the run went on without its client
    r = run_cli("logs", run_id, "-f", cwd=project, timeout=120)  # from another process
    steps = [ln for ln in r.stdout.splitlines() if ln.startswith("step")]
    assert steps == [f"step {i}" for i in range(30)]
    r = run_cli("runs", cwd=project)
    assert "SUCCEEDED" in r.stdout
    rd = project / ".runner" / "runs" / run_id
    assert (rd / "outputs" / "result.txt").read_text() == "ok"
    assert containers_of(run_id) == []


def test_outputs_over_the_cap_stay_on_the_host_with_a_message(tmp_path: Path, work: Path) -> None:
    b = RemoteDockerBackend(config(work, max_fetch_mb=1))
    spec = make_run(tmp_path, b, "import runner\nrunner.log_metric('m', 2.0)\n"
                                 "(runner.outputs_dir() / 'big.bin').write_bytes(b'0' * 3_000_000)",
                    env=ENV)
    handle = b.submit(spec, b.prepare(spec))
    assert handle.wait(90).state == RunState.SUCCEEDED
    out = spec.run_dir / "outputs"
    assert not (out / "big.bin").exists()
    note = (out / "NOT_FETCHED.txt").read_text()
    assert "max_fetch_mb" in note and "2.9 MiB" in note
    assert RunDir(spec.run_dir).summary() == {"m": 2.0}  # the small files still came back


def test_safe_extraction_keeps_everything_inside_the_run_directory(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("../escape.txt", "/tmp/absolute.txt", "outputs/ok.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
        link = tarfile.TarInfo("outputs/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        big = tarfile.TarInfo("outputs/big")
        big.size = 5000
        tar.addfile(big, io.BytesIO(b"0" * 5000))
    dest = tmp_path / "run"
    with pytest.raises(UserError, match="cap"):
        safe_extract(buf.getvalue(), dest, max_bytes=1000)
    skipped = safe_extract(buf.getvalue(), dest, max_bytes=10_000)
    assert set(skipped) == {"../escape.txt", "/tmp/absolute.txt", "outputs/passwd"}
    assert (dest / "outputs" / "ok.txt").read_text() == "hi"
    assert not (tmp_path / "escape.txt").exists() and not (dest / "outputs" / "passwd").exists()


def test_slots_are_not_oversubscribed(tmp_path: Path, work: Path) -> None:
    b = RemoteDockerBackend(config(work, slots=1, slot_wait=2))
    busy = make_run(tmp_path, b, "import time\nprint('holding', flush=True)\ntime.sleep(120)",
                    env=ENV)
    first = b.submit(busy, b.prepare(busy))
    try:
        other = make_run(tmp_path, b, "print('second')", env=ENV)
        with pytest.raises(UserError, match="no free slot") as e:
            b.submit(other, b.prepare(other))
        assert busy.run_id in e.value.message
        assert containers_of(other.run_id) == []
        # a waiting submit starts as soon as the slot frees
        b2 = RemoteDockerBackend(config(work, slots=1, slot_wait=60))
        got: list[RunHandle] = []
        t = threading.Thread(target=lambda: got.append(b2.submit(other, b2.prepare(other))))
        t.start()
        time.sleep(2)
        assert not got
        first.cancel()
        t.join(60)
        assert got and got[0].wait(90).state == RunState.SUCCEEDED
    finally:
        first.cancel()


def test_secrets_reach_the_container_but_no_file_or_command_line(project: Path, work: Path) -> None:
    _target(project, work)
    token = "abc-secret-123"
    digest = hashlib.sha256(token.encode()).hexdigest()
    (project / "job.py").write_text(
        "import hashlib, os\nprint('token ok', hashlib.sha256("
        f"os.environ['RUNNER_TEST_TOKEN'].encode()).hexdigest() == '{digest}')\n")
    r = run_cli("submit", "target=box", "env=docker_python", "model=script", "model.path=job.py",
                "+data.api_token=${oc.env:RUNNER_TEST_TOKEN}", cwd=project, timeout=300,
                env={"RUNNER_TEST_TOKEN": token})
    assert r.returncode == 0, r.stderr
    assert "token ok True" in r.stdout and token not in r.stdout + r.stderr
    rd = next((project / ".runner" / "runs").iterdir())
    remote = Path(json.loads((rd / "remote.json").read_text())["remote_run_dir"])
    for folder in (remote, rd):
        for p in folder.rglob("*"):
            assert not p.name.startswith(".runner-env")
            if p.is_file():
                assert token.encode() not in p.read_bytes(), p


# -- broken hosts -----------------------------------------------------------------------------
def test_a_host_without_docker_on_its_path_gets_a_clear_error(tmp_path: Path, work: Path) -> None:
    b = RemoteDockerBackend(config(work, docker="env PATH=/nonexistent docker"))
    spec = make_run(tmp_path, b, "pass", env=ENV)
    with pytest.raises(UserError) as e:
        b.prepare(spec)
    assert "non-interactive PATH" in e.value.message
    assert any("target.docker" in h for h in e.value.hints)


def test_doctor_prints_every_check_with_a_fix(project: Path, work: Path) -> None:
    _target(project, work)
    r = run_cli("doctor", "box", cwd=project)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("ssh", "docker on PATH", "docker permission", "disk space", "clock skew"):
        assert name in r.stdout
    (project / "conf" / "target" / "box.yaml").write_text(
        (project / "conf" / "target" / "box.yaml").read_text()
        + "docker: env PATH=/nonexistent docker\nmin_free_mb: 100000000\n")
    r = run_cli("doctor", "box", cwd=project)
    assert r.returncode != 0
    assert "FAIL" in r.stdout and "set target.docker" in r.stdout


def test_an_unwritable_work_dir_gets_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    b = RemoteDockerBackend(config(blocker / "work"))
    spec = make_run(tmp_path, b, "pass", env=ENV)
    with pytest.raises(UserError) as e:
        b.prepare(spec)
    assert "cannot be written" in e.value.message and str(blocker / "work") in e.value.message
    assert any("target.work_dir" in h for h in e.value.hints)


def test_a_full_work_dir_gets_a_clear_error(tmp_path: Path, tiny_fs: Path) -> None:
    b = RemoteDockerBackend(config(tiny_fs / "work"))
    spec = make_run(tmp_path, b, "pass", env=ENV)
    prepared = b.prepare(spec)
    with pytest.raises(UserError) as e:  # the free-space floor (1 GiB by default)
        b.submit(spec, prepared)
    assert "is full" in e.value.message and "min_free_mb" in e.value.message
    b = RemoteDockerBackend(config(tiny_fs / "work", min_free_mb=0))
    (spec.run_dir / "code" / "data.bin").write_bytes(os.urandom(2_000_000))
    with pytest.raises(UserError) as e:  # the disk fills while the code is unpacked
        b.submit(spec, b.prepare(spec))
    assert "is full" in e.value.message and "No space left" in e.value.message
    assert containers_of(spec.run_id) == []


MR = Path(__file__).resolve().parents[2] / "shared" / "data" / "rt-polarity"  # read in place


@pytest.mark.slow
@pytest.mark.tf
def test_sentiment_cnn_trains_on_the_remote_with_gpus_requested(project: Path,
                                                                 work: Path) -> None:
    """The lab's experiment end to end through the CLI: the env image with TensorFlow is built
    on the host (minutes the first time), the reviews travel as data by content, one short
    epoch, --gpus reaches the engine, and the metrics and the saved model come back."""
    from runner.registry import collect, make_plugin_manager

    if "sentiment_cnn" not in collect(make_plugin_manager(entry_points=False)).models:
        pytest.skip("the sentiment_cnn model plugin is not registered")
    hook_log = TB.get("RUNNER_FAKE_GPU_HOOK_LOG")
    gpus = "0" if hook_log and TB.get("RUNNER_DOCKER_HOST_GPUS") == "fake" else None
    _target(project, work, **({"gpus": f'"{gpus}"', "gpu_preflight": "false"} if gpus else {}))
    if (MR / "rt-polarity.pos").is_file():
        data = str(MR)  # 10,662 reviews, 1.2 MB: shipped once, then found on the host
    else:
        import random

        words_good = ["wonderful", "moving", "clever", "great", "loved", "superb", "charming"]
        words_bad = ["dull", "boring", "wooden", "terrible", "hated", "messy", "tedious"]
        rng = random.Random(0)
        reviews = project.parent / "reviews"  # outside the project: data, not code
        reviews.mkdir()
        for name, words in (("reviews.pos", words_good), ("reviews.neg", words_bad)):
            (reviews / name).write_text("\n".join(
                " ".join(rng.choice(words + ["the", "a", "film", "plot"]) for _ in range(12))
                for _ in range(150)) + "\n")
        data = "../reviews"  # relative to the working directory, as a user types it
    before = len(Path(hook_log).read_text().splitlines()) if gpus and hook_log else 0
    cnn = ["target=box", "env=tf_cpu", f"env.base_image={BASE}", "model=sentiment_cnn",
           "data=text_files", "data.format=pos_neg", "data.max_samples=2000",
           "data.test_split=0.2", "data.val_split=0.0", "model.epochs=1", "model.maxlen=20",
           "model.num_words=200", "model.filters=8", "model.hidden_dims=8",
           "model.embedding_dim=8", "model.batch_size=16", "model.verbose=2"]
    doctor = run_cli("doctor", "box", cwd=project, timeout=120)
    failed = [ln for ln in doctor.stdout.splitlines() if "  FAIL  " in ln]
    assert all("gpu: host driver" in ln for ln in failed), doctor.stdout  # stand-in GPUs only
    assert doctor.returncode == (1 if failed else 0), doctor.stdout + doctor.stderr
    assert "docker permission       ok" in doctor.stdout, doctor.stdout
    r = run_cli("prepare", *cnn, f"data.path={data}", cwd=project, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli("prepare", *cnn, f"data.path={data}", cwd=project, timeout=300)
    assert r.returncode == 0 and ": cached [" in r.stderr, r.stderr  # the second is a hit
    r = run_cli("submit", "--detach", *cnn, f"data.path={data}", cwd=project, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[runner] data path: shipped " in r.stderr
    run_id = r.stderr.split("run ", 1)[1].split(":", 1)[0]
    logs = run_cli("logs", run_id, "-f", cwd=project, timeout=600)
    assert "val_accuracy:" in logs.stdout, logs.stdout[-3000:] + logs.stderr
    rd = RunDir(project / ".runner" / "runs" / run_id)
    assert any("acc" in m["name"] for m in rd.read_metrics())
    assert any(p.is_file() for p in rd.outputs.rglob("*"))  # the saved model came back
    show = run_cli("show", run_id, cwd=project)
    assert "SUCCEEDED" in show.stdout and "read at /runner/data/path" in show.stdout, show.stdout
    assert "gpus" in show.stdout
    pred = run_cli("predict", run_id, "a wonderful moving film", cwd=project, timeout=300)
    assert pred.returncode == 0 and "a wonderful moving film" in pred.stdout, pred.stderr
    # the same data by its absolute path: already on the host, nothing travels again
    absolute = str((project / data).resolve()) if not Path(data).is_absolute() else data
    r = run_cli("submit", *cnn, f"data.path={absolute}", cwd=project, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[runner] data path: " in r.stderr and " already on " in r.stderr, r.stderr
    # data that lies on the host itself (the loopback host shares this disk): mounted, not sent
    r = run_cli("submit", *cnn, f"data.path=target:{absolute}", cwd=project, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[runner] data path:" not in r.stderr, r.stderr
    show = run_cli("show", "last", cwd=project)
    assert "on the target, not shipped" in show.stdout, show.stdout
    if gpus and hook_log:
        new = Path(hook_log).read_text().splitlines()[before:]
        assert any(ln.endswith("NVIDIA_VISIBLE_DEVICES=0") for ln in new), new


# -- runner remote-gc -------------------------------------------------------------------------
def _on_host(command: str) -> None:
    r = subprocess.run(["ssh", "-F", SSH_CONFIG, LOOPBACK, command], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def _labelled_env_image(tag: str, env_name: str) -> None:
    """A cheap image carrying an env image's labels (the gc only reads labels and tags)."""
    labels = {dk.L_MANAGED: "1", dk.L_KIND: "env", dk.L_ENV_NAME: env_name, dk.L_ENV_KEY: tag}
    argv = ["docker", "build", "-q", "-t", tag]
    for k, v in labels.items():
        argv += ["--label", f"{k}={v}"]
    r = subprocess.run([*argv, "-"], input=f"FROM {BASE}\n", capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr


def test_remote_gc_lists_then_removes_strays_old_run_dirs_and_unused_images(
        project: Path, work: Path) -> None:
    _target(project, work, slots=2)
    (project / "job.py").write_text("import time\nprint('working', flush=True)\ntime.sleep(120)\n")
    r = run_cli("submit", "--detach", "target=box", "env=docker_python", "model=script",
                "model.path=job.py", cwd=project, timeout=300)
    assert r.returncode == 0, r.stderr
    in_flight = next((project / ".runner" / "runs").iterdir()).name
    b = RemoteDockerBackend(config(work, slots=2))
    spec = make_run(project, b, "import time; time.sleep(120)", env=ENV)
    stray = b.submit(spec, b.prepare(spec))  # started outside the ledger: nothing accounts for it
    runs = work / "runs"
    _on_host(f"mkdir -p {runs}/old-run/outputs {runs}/new-run && echo x > {runs}/old-run/log.txt "
             f"&& touch -d '10 days ago' {runs}/old-run {runs}/old-run/log.txt")
    env_name = f"gctest-{project.parent.name.lower()[-12:]}"
    older, newer = f"{dk.IMAGE_REPO}:{env_name}-a", f"{dk.IMAGE_REPO}:{env_name}-b"
    try:
        _labelled_env_image(older, env_name)
        _labelled_env_image(newer, env_name)

        dry = run_cli("remote-gc", "box", "--env", env_name, cwd=project, timeout=180)
        assert dry.returncode == 0, dry.stderr
        out = dry.stdout
        assert f"runner-{spec.run_id}" in out and f"runner-{in_flight}" not in out
        assert "runs/old-run" in out and "unknown to this project's ledger" in out
        assert "runs/new-run" not in out and f"runs/{in_flight}" not in out
        assert older in out and newer not in out
        assert f"`runner remote-gc box --env {env_name} --yes` removes what is listed" in out
        assert containers_of(spec.run_id) and (runs / "old-run").is_dir()  # nothing removed
        assert docker("image", "inspect", older).returncode == 0

        # with no age limit, fresh unknown dirs show too, but never an in-flight run's
        everything = run_cli("remote-gc", "box", "--env", env_name, "--older-than", "0",
                             cwd=project, timeout=180).stdout
        assert "runs/new-run" in everything and f"runs/{spec.run_id}" in everything
        assert f"runs/{in_flight}" not in everything

        done = run_cli("remote-gc", "box", "--env", env_name, "--yes", cwd=project, timeout=180)
        assert done.returncode == 0, done.stderr
        assert "removed 1 container(s)" in done.stdout
        assert "removed 1 run directory" in done.stdout
        assert "removed 1 env image(s)" in done.stdout
        assert containers_of(spec.run_id) == []
        assert not (runs / "old-run").exists() and (runs / "new-run").is_dir()
        assert docker("image", "inspect", older).returncode != 0
        assert docker("image", "inspect", newer).returncode == 0
        assert len(containers_of(in_flight)) == 1 and (runs / in_flight).is_dir()
        assert "RUNNING" in run_cli("runs", cwd=project).stdout  # the in-flight run goes on

        again = run_cli("remote-gc", "box", "--env", env_name, cwd=project, timeout=180).stdout
        assert "no stray containers" in again and "no unused env images" in again
    finally:
        run_cli("cancel", in_flight, cwd=project)
        stray.cancel()
        docker("image", "rm", "-f", older, newer)
    assert containers_of(in_flight) == [] and containers_of(spec.run_id) == []


def test_remote_gc_removes_data_trees_no_run_used_and_their_objects(project: Path,
                                                                    work: Path) -> None:
    _data_project(project, work, n=4)
    args = ("submit", "target=box", "env=docker_python", "model=script", "model.path=job.py")
    assert run_cli(*args, "data.path=reviews", cwd=project, timeout=300).returncode == 0
    old = _data_cost(project)["inputs"][0]["digest"]
    (project / "fresh").mkdir()
    (project / "fresh" / "x.txt").write_text("fresh data\n")
    assert run_cli(*args, "data.path=fresh", cwd=project, timeout=300).returncode == 0
    fresh = _data_cost(project)["inputs"][0]["digest"]
    _on_host(f"cd {work} && touch -d '10 days ago' data/{old} objects/*")
    dry = run_cli("remote-gc", "box", cwd=project, timeout=180)
    assert dry.returncode == 0, dry.stderr
    assert f"data/{old[:16]}" in dry.stdout and f"data/{fresh[:16]}" not in dry.stdout
    assert (work / "data" / old).is_dir()  # a dry run removes nothing
    done = run_cli("remote-gc", "box", "--yes", cwd=project, timeout=180)
    assert "removed 1 data tree(s)" in done.stdout, done.stdout + done.stderr
    assert not (work / "data" / old).exists() and (work / "data" / fresh).is_dir()
    kept = set(_verified_store(work))
    assert hashlib.sha256(b"fresh data\n").hexdigest() in kept  # still linked by a tree
    assert hashlib.sha256(b"review 0\n" * 50).hexdigest() not in kept  # only the old tree's
    r = run_cli(*args, "data.path=reviews", cwd=project, timeout=300)  # shipped again, whole
    assert r.returncode == 0 and "shipped 4 of 4 files" in r.stderr, r.stderr


def test_remote_gc_names_the_targets_it_can_clean(project: Path, work: Path) -> None:
    _target(project, work)
    (project / "conf" / "target" / "here.yaml").write_text("backend: local_docker\n")
    r = run_cli("remote-gc", "nope", cwd=project)
    assert r.returncode == 2
    assert "unknown target 'nope'" in r.stderr and "box, here" in r.stderr
    r = run_cli("remote-gc", "here", cwd=project)
    assert r.returncode == 2
    assert "uses backend 'local_docker'" in r.stderr and "remote_docker targets here: box" in r.stderr
    assert "runner docker-prune" in r.stderr
    r = run_cli("remote-gc", "box", "--older-than", "-1", cwd=project)
    assert r.returncode == 2 and "--older-than: must be 0 or more days" in r.stderr


# -- attach --install-key: a one-time password prompt that only installs the key -------------
PW_PORT = TB.get("RUNNER_TEST_PW_PORT", "")
PW_USER = TB.get("RUNNER_TEST_PW_USER", "")
PW_FILE = TB.get("RUNNER_TEST_PW_FILE", "")


def _password_host_problem() -> str | None:
    if not (PW_PORT and PW_USER and PW_FILE):
        return "no password SSH test host; start it with scripts/testbed.sh up"
    if not os.access(PW_FILE, os.R_OK):
        return f"the test user's password file {PW_FILE} is not readable here"
    try:
        socket.create_connection(("127.0.0.1", int(PW_PORT)), timeout=5).close()
    except OSError as e:
        return f"the password SSH test host (127.0.0.1:{PW_PORT}) does not answer ({e})"
    return None


needs_password_host = pytest.mark.skipif(_password_host_problem() is not None,
                                         reason=_password_host_problem() or "")


@pytest.fixture
def fresh_key(tmp_path: Path) -> Iterator[Path]:
    """A new key pair; afterwards its key is removed from the test user's authorized_keys."""
    import pwd

    key = tmp_path / "id_new"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "install-key-test",
                    "-f", str(key)], check=True)
    yield key
    blob = key.with_name("id_new.pub").read_text().split()[1]
    auth = Path(pwd.getpwnam(PW_USER).pw_dir) / ".ssh" / "authorized_keys"
    if auth.is_file():
        kept = [ln for ln in auth.read_text().splitlines(keepends=True) if blob not in ln]
        auth.write_text("".join(kept))  # in place: owner and mode stay


def _authorized(key: Path) -> list[str]:
    import pwd

    auth = Path(pwd.getpwnam(PW_USER).pw_dir) / ".ssh" / "authorized_keys"
    blob = key.with_name(key.name + ".pub").read_text().split()[1]
    return [ln for ln in auth.read_text().splitlines() if blob in ln] if auth.is_file() else []


def _attach_pw(project: Path, tmp_path: Path, key: Path, *extra: str,
               stdin: str | None) -> subprocess.CompletedProcess[str]:
    """``runner attach`` to the password host with no terminal (a new session has none, so
    getpass reads stdin; ``stdin=None`` gives it nothing to read)."""
    conf = tmp_path / "empty_ssh_config"
    conf.write_text("")
    args = ["attach", "pwbox", "--host", "127.0.0.1", "--port", PW_PORT, "--user", PW_USER,
            "--key", str(key), "--ssh-config", str(conf), "--known-hosts",
            str(tmp_path / "known_hosts"), "--work-dir", str(tmp_path / "remote-work"), *extra]
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=project, text=True,
                          capture_output=True, timeout=120, start_new_session=True,
                          input=stdin if stdin is not None else "")


def _tree_text(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


@needs_password_host
def test_attach_install_key_asks_once_installs_the_key_and_then_logs_in_with_it(
        project: Path, tmp_path: Path, fresh_key: Path) -> None:
    password = Path(PW_FILE).read_text().strip()
    fp = _fingerprint()
    r = _attach_pw(project, tmp_path, fresh_key, "--install-key", "--trust-host-key", fp,
                   stdin=password + "\n")
    assert "asked once, used only to install" in r.stderr  # the one prompt
    assert f"installed {fresh_key}.pub in ~/.ssh/authorized_keys" in r.stdout
    assert len(_authorized(fresh_key)) == 1
    # then attach goes on with the key, as always: this account may not use Docker, which is
    # what the user is told; nothing is written before that check passes
    assert r.returncode == 2 and "may not use the Docker engine" in r.stderr, r.stderr
    target = project / "conf" / "target" / "pwbox.yaml"
    assert not target.exists()
    # the key alone logs in now (ssh itself, keys only, no prompt possible)
    ok = subprocess.run(["ssh", "-F", "/dev/null", "-i", str(fresh_key), "-p", PW_PORT,
                         "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o",
                         f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
                         f"{PW_USER}@127.0.0.1", "echo in"], capture_output=True, text=True,
                        timeout=30)
    assert ok.stdout.strip() == "in", ok.stderr
    # a second attach asks for nothing (no password to read) and gets as far as Docker again;
    # installing again does not add the key twice
    r2 = _attach_pw(project, tmp_path, fresh_key, "--install-key", stdin=None)
    assert "password" not in r2.stderr.lower(), r2.stderr
    assert r2.returncode == 2 and "may not use the Docker engine" in r2.stderr
    assert len(_authorized(fresh_key)) == 1
    for out in (r.stdout, r.stderr, r2.stdout, r2.stderr):
        assert password not in out
    assert password.encode() not in _tree_text(project)  # the ledger, any target file


@needs_password_host
def test_attach_install_key_with_a_wrong_password_changes_nothing(
        project: Path, tmp_path: Path, fresh_key: Path) -> None:
    password = Path(PW_FILE).read_text().strip()
    r = _attach_pw(project, tmp_path, fresh_key, "--install-key", "--trust-host-key",
                   _fingerprint(), stdin="not-" + password + "\n")
    assert r.returncode == 2
    assert "the password was not accepted" in r.stderr and "nothing was installed" in r.stderr
    assert "Traceback" not in r.stderr
    assert _authorized(fresh_key) == []
    assert not (project / "conf" / "target" / "pwbox.yaml").exists()
    assert password not in r.stdout + r.stderr
    assert password.encode() not in _tree_text(project)
    # no password at all: refused before any login
    r = _attach_pw(project, tmp_path, fresh_key, "--install-key", stdin=None)
    assert r.returncode == 2 and "no password was given" in r.stderr
    # a key pair that does not exist is refused before anything is asked
    r = _attach_pw(project, tmp_path, tmp_path / "no_such_key", "--install-key",
                   stdin=password + "\n")
    assert r.returncode == 2 and "no key pair to install" in r.stderr
    assert "ssh-keygen -t ed25519 -f" in r.stderr and "password for" not in r.stderr
    assert _authorized(fresh_key) == []


def test_a_host_that_went_away_costs_one_attempt_a_command_and_comes_back(
        project: Path, work: Path, tmp_path: Path) -> None:
    # a host whose connections fail while a flag file exists: the "host gone" switch
    down = tmp_path / "host-down"
    key = next(ln.split(None, 1)[1] for ln in Path(KNOWN_HOSTS).read_text().splitlines()
               if ln.startswith(f"[127.0.0.1]:{PORT} "))
    known = tmp_path / "known_hosts"
    known.write_text(f"gonebox {key}\n")
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(
        "Host gonebox\n  HostName gonebox\n  User root\n"
        f"  IdentityFile {CLIENT_KEY}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n"
        f"  ProxyCommand sh -c 'test -e {down} && exit 1; exec socat STDIO TCP:127.0.0.1:{PORT}'\n")
    (project / "conf" / "target").mkdir(parents=True)
    (project / "conf" / "target" / "gonebox.yaml").write_text(
        f"backend: remote_docker\nhost: gonebox\nssh_config: {ssh_config}\nwork_dir: {work}\n"
        f"base_image: {BASE}\ncancel_grace: 3\nconnect_timeout: 5\nslots: 2\n")
    (project / "job.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(600)\n")
    ids = []
    for _ in range(2):
        r = run_cli("submit", "--detach", "target=gonebox", "env=docker_python", "model=script",
                    "model.path=job.py", cwd=project, timeout=300)
        assert r.returncode == 0, r.stderr
        ids.append(r.stderr.split("run ", 1)[1].split(":", 1)[0])
    try:
        deadline = time.monotonic() + 120
        while not all("started" in run_cli("logs", i, cwd=project).stdout for i in ids):
            assert time.monotonic() < deadline, "the runs never started"
            time.sleep(0.5)
        down.touch()  # the host goes away mid-run
        r = run_cli("runs", cwd=project)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.count("could not check run") == 1, r.stderr  # one attempt per command
        assert "1 more run(s) on target gonebox keep their last known state" in r.stderr
        assert r.stdout.count("RUNNING") == 2, r.stdout  # the last known state, not a guess
        r = run_cli("logs", ids[0], cwd=project)  # the copy here, with a note
        assert r.returncode == 0 and "started" in r.stdout, r.stdout + r.stderr
        assert "did not answer" in r.stderr and "Traceback" not in r.stderr
        r = run_cli("logs", ids[0], "-f", cwd=project)
        assert r.returncode == 1 and "cannot follow" in r.stderr and "Traceback" not in r.stderr
        down.unlink()  # it comes back: the runs are seen again as they are
        r = run_cli("runs", cwd=project)
        assert "could not check" not in r.stderr and r.stdout.count("RUNNING") == 2, r.stderr
        assert run_cli("logs", ids[0], cwd=project).stdout.count("started") == 1
    finally:
        down.unlink(missing_ok=True)
        r = run_cli("cancel", *ids, cwd=project, timeout=120)
    assert r.stderr.count("CANCELLED") == 2, r.stderr
    assert all(containers_of(i) == [] for i in ids)


def test_a_final_status_the_worker_wrote_is_never_replaced_by_a_late_verdict(
        tmp_path: Path, backend: RemoteDockerBackend) -> None:
    # the race: status.json read just before the worker wrote it, the container seen ended
    # just after; whoever settles must keep what the worker wrote, here and on the host
    spec = make_run(tmp_path, backend, "print('done')", env=ENV)
    handle = backend.submit(spec, backend.prepare(spec))
    assert handle.wait(90).state == RunState.SUCCEEDED
    assert isinstance(handle, RemoteHandle)
    late = RemoteHandle(backend, spec.run_id, spec.run_dir, handle.container, handle.remote_dir)
    final = late._settle(None, {"Status": "exited", "ExitCode": 0}, False)
    assert final.state == RunState.SUCCEEDED, final
    r = backend.session.run(f"cat {handle.remote_dir}/status.json", timeout=60)
    assert '"SUCCEEDED"' in r.stdout and "LOST" not in r.stdout
    assert RunDir(spec.run_dir).status().state == RunState.SUCCEEDED  # type: ignore[union-attr]


@pytest.mark.parametrize("host", [LOOPBACK, NETNS or LOOPBACK], ids=["loopback", "proxycommand"])
def test_a_connection_cut_while_a_command_waits_is_reopened_and_the_command_rerun(
        work: Path, host: str) -> None:
    """The SSH layer under a long command (an upload, an image build): the connection dies
    while the client waits for the answer. It must be seen as lost at once (a dead
    ProxyCommand reads as EOF) and the command run again on a new connection, not left
    waiting until the command's timeout."""
    b = RemoteDockerBackend(config(work, host=host))
    assert b.session.run("echo ready").stdout.strip() == "ready"
    sock = b.session.connect().transport.sock  # taken now: the command holds the session
    before = b.session.reconnects  # sessions are shared per host: count from here

    def cut() -> None:
        proc = getattr(sock, "process", None)
        if proc is not None:
            os.kill(proc.pid, signal.SIGKILL)
        else:
            sock.shutdown(socket.SHUT_RDWR)

    threading.Timer(1.0, cut).start()
    r = b.session.run("sleep 3; echo done", timeout=60)
    assert (r.returncode, r.stdout.strip()) == (0, "done"), r.stderr
    assert b.session.reconnects == before + 1
