"""The slurm backend reaching the cluster's login node over SSH (``target.host``), against the
testbed's real Slurm and its SSH test host, which is a login node of that cluster.

The login node is this same machine, so a client that read or wrote the cluster's work dir
directly would pass by accident. The CLI tests rule that out: the client runs in its own mount
namespace where the work dir is an empty tmpfs (the SSH server still sees the real one), with
no Slurm command on its PATH and no SLURM_CONF. Whatever reaches the project's run directory
came through the SSH session."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.backend import RunHandle, RunState
from runner.store import Store
from runner.testing import BackendContract, make_run, wait_until_gone

from .conftest import read_testbed_env

pytestmark = [pytest.mark.slurm, pytest.mark.ssh]

TB = read_testbed_env()
SLURM_CONF = TB.get("RUNNER_TEST_SLURM_CONF", "")
SSH_CONFIG = TB.get("RUNNER_TEST_SSH_CONFIG", "")
KNOWN_HOSTS = TB.get("RUNNER_TEST_KNOWN_HOSTS", "")
HOSTS = TB.get("RUNNER_TEST_SSH_HOSTS", "").split()
LOGIN = HOSTS[0] if HOSTS else "runner-remote"
NETNS = HOSTS[1] if len(HOSTS) > 1 else None
UNSHARE = shutil.which("unshare") or "unshare"
MOUNT = shutil.which("mount") or "mount"


def _problem() -> str | None:
    if not (SSH_CONFIG and Path(SSH_CONFIG).is_file() and HOSTS):
        return "no SSH test host; scripts/testbed.sh up starts one"
    if not SLURM_CONF or not Path(SLURM_CONF).is_file():
        return "no Slurm in the testbed (RUNNER_TEST_SLURM_CONF); scripts/testbed.sh up starts one"
    try:
        r = subprocess.run(["ssh", "-F", SSH_CONFIG, LOGIN,
                            f"SLURM_CONF={SLURM_CONF} scontrol ping"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"no ssh client ({e})"
    if "UP" not in r.stdout:
        return f"the SSH test host {LOGIN} reaches no Slurm controller: {r.stderr.strip()[:200]}"
    if shutil.which("unshare") is None or subprocess.run(
            [UNSHARE, "--mount", "true"], capture_output=True).returncode != 0:
        return "cannot make a mount namespace here (unshare --mount) to hide the work dir"
    return None


_PROBLEM = _problem()
if _PROBLEM is not None:
    pytest.skip(_PROBLEM, allow_module_level=True)

from runner.plugins.slurm.backend import SlurmBackend  # noqa: E402
from runner.plugins.slurm.config import SlurmConfig  # noqa: E402
from runner.plugins.slurm.handle import SlurmHandle  # noqa: E402


def _config(work: Path, **kw: object) -> SlurmConfig:
    return SlurmConfig(host=LOGIN, ssh_config=SSH_CONFIG, work_dir=str(work),  # type: ignore[arg-type]
                       slurm_conf=SLURM_CONF, cancel_grace=5, **kw)


def _squeue(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                          text=True, env=dict(os.environ, SLURM_CONF=SLURM_CONF)).stdout.strip()


class TestSlurmOverSSHContract(BackendContract):
    timeout = 90.0

    @pytest.fixture
    def backend(self, tmp_path: Path) -> SlurmBackend:
        return SlurmBackend(_config(tmp_path / "cluster-work"))

    def assert_nothing_left(self, handle: RunHandle) -> None:
        assert isinstance(handle, SlurmHandle)
        super().assert_nothing_left(handle)
        assert _squeue(handle.job_id) == ""


# -- what users type ---------------------------------------------------------------------------
@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The work dir on the cluster: hidden from the client (see the module's docstring)."""
    return tmp_path / "cluster" / "work"


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """The client's environment: no Slurm command on PATH, no SLURM_CONF."""
    bare = tmp_path / "client-bin"
    bare.mkdir()
    (bare / "git").symlink_to(shutil.which("git") or "/usr/bin/git")
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    env["PATH"] = str(bare)
    return env


def _argv(work: Path, *args: str) -> list[str]:
    """``runner ARGS`` with the cluster's folder hidden behind an empty tmpfs."""
    hide = str(work.parent)
    return [UNSHARE, "--mount", "--propagation", "private", "/bin/sh", "-c",
            f'{MOUNT} -t tmpfs tmpfs "$0" && exec "$@"', hide,
            sys.executable, "-m", "runner.cli", *args]


def _target(project: Path, work: Path, name: str = "cluster", **extra: object) -> None:
    work.parent.mkdir(parents=True, exist_ok=True)
    (project / "conf" / "target").mkdir(parents=True, exist_ok=True)
    keys = {"backend": "slurm", "host": LOGIN, "ssh_config": SSH_CONFIG, "work_dir": str(work),
            "slurm_conf": SLURM_CONF, "cancel_grace": 5} | extra
    (project / "conf" / "target" / f"{name}.yaml").write_text(
        "".join(f"{k}: {v}\n" for k, v in keys.items() if v is not None))


@pytest.fixture
def runner_cli(project: Path, work: Path, client_env: dict[str, str]):  # type: ignore[no-untyped-def]
    def call(*args: str, timeout: float = 300, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(_argv(work, *args), cwd=project, text=True, capture_output=True,
                              timeout=timeout, env=dict(client_env, **(env or {})))
    return call


def _script(project: Path, body: str, *extra: str) -> list[str]:
    (project / "job.py").write_text(body)
    return ["target=cluster", "model=script", "model.path=job.py", *extra]


def test_a_run_over_ssh_succeeds_with_its_log_metrics_and_outputs_home(
        project: Path, work: Path, runner_cli) -> None:  # type: ignore[no-untyped-def]
    _target(project, work)
    args = _script(project, "import os, runner\nprint('hello from', os.environ['SLURM_JOB_ID'])\n"
                            "runner.log_metric('score', 0.5)\n"
                            "(runner.outputs_dir() / 'result.txt').write_text('made on the node')\n")
    res = runner_cli("submit", *args)
    assert res.returncode == 0, res.stdout + res.stderr
    (run,) = Store(project / ".runner").list()
    assert run.state == RunState.SUCCEEDED and run.summary == {"score": 0.5}, run
    assert run.locator is not None and LOGIN in str(run.locator["host"])
    job_id = run.locator["job_id"]
    assert f"hello from {job_id}" in res.stdout, res.stdout
    home = project / ".runner" / "runs" / run.id
    assert (home / "outputs" / "result.txt").read_text() == "made on the node"
    assert f"hello from {job_id}" in (home / "log.txt").read_text()
    assert '"score"' in (home / "metrics.jsonl").read_text()
    # the run lived in the work dir on the cluster, its env built there too
    assert (work / "runs" / run.id / "outputs" / "result.txt").is_file()
    assert [p for p in (work / "envs").iterdir() if (p / ".complete").exists()]
    show = runner_cli("show", run.id)
    assert f"job_id {job_id}" in show.stdout, show.stdout + show.stderr


SWEEP_JOB = """\
import os, sys, time, runner
x = int(sys.argv[1])
time.sleep(1)
print("task", os.environ.get("SLURM_ARRAY_TASK_ID"), "x", x, flush=True)
if x == 3 and os.path.exists({flag!r}):
    sys.exit(1)
runner.log_metric("score", 2.0 * x)
"""


def test_a_sweep_over_ssh_is_one_job_array_and_resume_reruns_the_failed_one(
        project: Path, work: Path, tmp_path: Path, runner_cli) -> None:  # type: ignore[no-untyped-def]
    _target(project, work)
    flag = tmp_path / "cluster" / "fail-x3"  # on the cluster side: the job reads it there
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.touch()
    args = _script(project, SWEEP_JOB.format(flag=str(flag)), "model.args=[1],[2],[3]",
                   "hydra.launcher.max_parallel=2")
    res = runner_cli("submit", "-m", *args)
    assert res.returncode != 0, res.stdout + res.stderr  # x=3 failed
    store = Store(project / ".runner")
    runs = store.list()
    (sweep_id,) = {r.sweep_id for r in runs}
    ids = [str(r.locator["job_id"]) for r in runs]  # type: ignore[index]
    assert len(ids) == 3 and len({i.split("_")[0] for i in ids}) == 1, ids  # one array
    assert all("_" in i for i in ids), ids
    states = sorted((r.summary.get("score"), r.state) for r in runs if r.summary)
    assert states == [(2.0, RunState.SUCCEEDED), (4.0, RunState.SUCCEEDED)], states
    for r in runs:  # each task's log came home into its own run directory
        log = (project / ".runner" / "runs" / r.id / "log.txt").read_text()
        assert f"task {str(r.locator['job_id']).split('_')[1]} x" in log, log  # type: ignore[index]

    flag.unlink()
    again = runner_cli("sweep", str(sweep_id), "--resume")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming 1 of 3 jobs" in again.stderr, again.stderr
    rerun = [r for r in store.list(sweep_id=sweep_id) if r.id not in {x.id for x in runs}]
    assert len(rerun) == 1 and rerun[0].state == RunState.SUCCEEDED
    assert rerun[0].summary["score"] == 6.0


def test_a_detached_sweep_over_ssh_returns_once_queued_and_runner_sweep_follows_it(
        project: Path, work: Path, runner_cli) -> None:  # type: ignore[no-untyped-def]
    _target(project, work)
    body = "import sys, time, runner\ntime.sleep(3)\nrunner.log_metric('x', float(sys.argv[1]))\n"
    res = runner_cli("submit", "-m", "--detach", *_script(project, body, "model.args=[1],[2],[3]"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "this shell is free" in res.stderr
    store = Store(project / ".runner")
    runs = store.list()
    assert len(runs) == 3 and all(not r.state.terminal for r in runs)
    (sweep_id,) = {r.sweep_id for r in runs}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        shown = runner_cli("sweep", str(sweep_id))
        if shown.stdout.count("SUCCEEDED") == 3:
            break
        time.sleep(2)
    assert shown.stdout.count("SUCCEEDED") == 3, shown.stdout + shown.stderr
    assert sorted(r.summary["x"] for r in store.list()) == [1.0, 2.0, 3.0]


def test_detach_then_follow_the_log_then_cancel_over_ssh(
        project: Path, work: Path, client_env: dict[str, str], runner_cli) -> None:  # type: ignore[no-untyped-def]
    _target(project, work)
    args = _script(project, "import time\nfor i in range(600):\n"
                            "    print('tick', i, flush=True)\n    time.sleep(0.2)\n")
    res = runner_cli("submit", "--detach", *args)
    assert res.returncode == 0, res.stdout + res.stderr
    (run,) = Store(project / ".runner").list()
    job_id = str(run.locator["job_id"])  # type: ignore[index]
    assert _squeue(job_id) in ("PENDING", "RUNNING")  # submit returned while the job goes
    follower = subprocess.Popen(_argv(work, "logs", "-f", run.id), cwd=project, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=client_env)
    try:
        assert follower.stdout is not None
        seen = [follower.stdout.readline() for _ in range(4)]
        assert seen[-1] == "tick 2\n", seen
        cancel = runner_cli("cancel", run.id)
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        follower.communicate(timeout=60)  # logs -f ends with the run
    finally:
        if follower.poll() is None:
            follower.kill()
        subprocess.run(["scancel", job_id], env=dict(os.environ, SLURM_CONF=SLURM_CONF),
                       check=False)
    (run,) = Store(project / ".runner").list()
    assert run.state == RunState.CANCELLED, run
    assert _squeue(job_id) == ""
    assert wait_until_gone(f"RUNNER_RUN_DIR={work / 'runs' / run.id}", source="environ") == []
    # what the run printed before the cancel came home
    assert "tick 2" in (project / ".runner" / "runs" / run.id / "log.txt").read_text()


def test_a_killed_client_leaves_a_run_that_runs_and_logs_f_reattaches(
        project: Path, work: Path, client_env: dict[str, str], runner_cli) -> None:  # type: ignore[no-untyped-def]
    _target(project, work)
    args = _script(project, "import time, runner\nfor i in range(30):\n"
                            "    print(f'step {i}', flush=True)\n    time.sleep(0.1)\n"
                            "(runner.outputs_dir() / 'result.txt').write_text('ok')\n")
    proc = subprocess.Popen(_argv(work, "submit", *args), cwd=project, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=client_env,
                            start_new_session=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "step 3" in line:
            break
    os.killpg(proc.pid, signal.SIGKILL)  # the client and its namespace helper
    proc.wait()
    (run,) = Store(project / ".runner").list()
    follow = runner_cli("logs", run.id, "-f", timeout=120)
    steps = [ln for ln in follow.stdout.splitlines() if ln.startswith("step")]
    assert steps == [f"step {i}" for i in range(30)], follow.stdout + follow.stderr
    (run,) = Store(project / ".runner").list()
    assert run.state == RunState.SUCCEEDED, run
    assert (project / ".runner" / "runs" / run.id / "outputs" / "result.txt").read_text() == "ok"


def test_doctor_over_ssh_checks_the_login_node_slurm_and_the_work_dir_from_a_node(
        project: Path, work: Path, runner_cli) -> None:  # type: ignore[no-untyped-def]
    _target(project, work)
    res = runner_cli("doctor", "cluster", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("ssh", "sinfo", "partition", "sacct", "work dir"):
        assert name in res.stdout, res.stdout
    assert "a compute node reads what the client wrote" in res.stdout, res.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("case", ["no_work_dir", "unreachable", "key_refused", "no_slurm"])
def test_bad_input_over_ssh_is_one_clear_error(project: Path, work: Path, tmp_path: Path,
                                               runner_cli, case: str) -> None:  # type: ignore[no-untyped-def]
    if case == "no_work_dir":
        _target(project, work, work_dir=None)
        says = ["target.work_dir is unset", "shared file system"]
    elif case == "unreachable":
        _target(project, work, host="127.0.0.1", port=_free_port(), ssh_config=None,
                known_hosts=KNOWN_HOSTS, key=TB.get("RUNNER_TEST_SSH_KEY"), connect_timeout=5)
        says = ["cannot reach", "check the host name"]
    elif case == "key_refused":
        key = tmp_path / "stranger"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        conf = tmp_path / "ssh_config"
        conf.write_text(Path(SSH_CONFIG).read_text().replace(
            TB.get("RUNNER_TEST_SSH_KEY", "client_ed25519"), str(key)))
        _target(project, work, ssh_config=conf)
        says = ["cannot log in", "refused the key"]
    else:
        if NETNS is None:
            pytest.skip("no second SSH test host (one without a reachable Slurm)")
        _target(project, work, host=NETNS)
        for tool in ("ip", "socat"):  # its ProxyCommand's
            found = shutil.which(tool)
            if found:
                (tmp_path / "client-bin" / tool).symlink_to(found)
        says = ["Slurm does not answer", "sinfo"]
    res = runner_cli("submit", *_script(project, "print('never')\n"), timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "error:" in res.stderr and "Traceback" not in res.stderr, res.stderr
    for text in says:
        assert text in res.stderr, res.stderr
    assert "never" not in res.stdout


def test_a_dropped_connection_while_following_loses_and_repeats_no_line(tmp_path: Path) -> None:
    b = SlurmBackend(_config(tmp_path / "cluster-work"))
    spec = make_run(tmp_path, b, "import time\nfor i in range(60):\n"
                                 "    print(f'tick {i}', flush=True)\n    time.sleep(0.05)\n")
    handle = b.submit(spec, b.prepare(spec))
    session = b.dirs.session  # type: ignore[attr-defined]
    seen: list[str] = []
    offset, cuts = 0, 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ended = handle.status().terminal
        for nxt, line in list(handle.logs(offset)):
            seen.append(line)
            offset = nxt
        if cuts < 2 and len(seen) > 5 + 20 * cuts:
            session.connect().transport.sock.shutdown(socket.SHUT_RDWR)  # the link dies
            cuts += 1
        if ended:
            break
        time.sleep(0.1)
    assert handle.status().state == RunState.SUCCEEDED
    ticks = [ln.strip() for ln in seen if ln.startswith("tick")]
    assert ticks == [f"tick {i}" for i in range(60)]
    assert cuts == 2 and session.reconnects >= 2
