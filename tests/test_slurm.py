"""The slurm backend against a real one-node Slurm cluster (started by scripts/testbed.sh,
its slurm.conf in RUNNER_TEST_SLURM_CONF): the backend contract suite, and what users type."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.backend import RunHandle, RunState
from runner.store import Store
from runner.testing import BackendContract, processes_with, wait_until_gone

from .conftest import read_testbed_env

pytestmark = pytest.mark.slurm

TB = read_testbed_env()
SLURM_CONF = TB.get("RUNNER_TEST_SLURM_CONF", "")


def _cluster_answers() -> bool:
    if not SLURM_CONF or not Path(SLURM_CONF).is_file() or shutil.which("scontrol") is None:
        return False
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10,
                             env=dict(os.environ, SLURM_CONF=SLURM_CONF))
    except (OSError, subprocess.SubprocessError):
        return False
    return "UP" in out.stdout


if not _cluster_answers():
    pytest.skip("no Slurm controller answers for RUNNER_TEST_SLURM_CONF "
                f"({SLURM_CONF or 'unset'}); `scripts/testbed.sh up` starts one",
                allow_module_level=True)

from runner.plugins.slurm.backend import SlurmBackend  # noqa: E402
from runner.plugins.slurm.config import SlurmConfig  # noqa: E402
from runner.plugins.slurm.handle import SlurmHandle  # noqa: E402


def _squeue(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                          text=True, env=dict(os.environ, SLURM_CONF=SLURM_CONF)).stdout.strip()


class TestSlurmContract(BackendContract):
    timeout = 90.0

    @pytest.fixture
    def backend(self) -> SlurmBackend:
        return SlurmBackend(SlurmConfig(slurm_conf=SLURM_CONF, cancel_grace=5))

    def assert_nothing_left(self, handle: RunHandle) -> None:
        assert isinstance(handle, SlurmHandle)
        super().assert_nothing_left(handle)  # the node is this machine: no process of the run
        assert _squeue(handle.job_id) == ""  # and the job left the queue


class TestSlurmWorkDirContract(TestSlurmContract):
    """The same contract when runs live in a work dir (a copy of the run directory)."""

    @pytest.fixture
    def backend(self, tmp_path: Path) -> SlurmBackend:
        return SlurmBackend(SlurmConfig(slurm_conf=SLURM_CONF, cancel_grace=5,
                                        work_dir=str(tmp_path / "shared")))


# -- what users type --------------------------------------------------------------------------
def _env() -> dict[str, str]:
    return {"SLURM_CONF": SLURM_CONF}


def _slurm(project: Path, body: str, **target: object) -> list[str]:
    """``job.py`` with ``body``, and the arguments that run it on the testbed's cluster."""
    (project / "job.py").write_text(body)
    return ["target=slurm", "model=script", "model.path=job.py",
            *(f"target.{k}={v}" for k, v in target.items())]


def test_submit_streams_the_log_and_succeeds_with_the_job_id_in_the_ledger(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    args = _slurm(project, "import os, runner\nprint('hello from', os.environ['SLURM_JOB_ID'])\n"
                           "runner.log_metric('score', 0.5)\n")
    res = cli("submit", *args, env=_env())
    assert res.returncode == 0, res.stderr
    (run,) = Store(project / ".runner").list()
    assert run.state == RunState.SUCCEEDED and run.summary == {"score": 0.5}
    assert run.locator is not None
    assert f"hello from {run.locator['job_id']}" in res.stdout, res.stdout
    # the job ran the run directory's batch script and wrote into the run directory's log
    log = (project / ".runner" / "runs" / run.id / "log.txt").read_text()
    assert f"hello from {run.locator['job_id']}" in log
    show = cli("show", run.id, env=_env())
    assert f"job_id {run.locator['job_id']}" in show.stdout, show.stdout


def test_detach_then_follow_the_log_then_cancel(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    args = _slurm(project, "import time\nfor i in range(600):\n"
                           "    print('tick', i, flush=True)\n    time.sleep(0.2)\n")
    res = cli("submit", "--detach", *args, env=_env())
    assert res.returncode == 0, res.stderr
    (run,) = Store(project / ".runner").list()
    job_id = run.locator["job_id"]  # type: ignore[index]
    assert _squeue(job_id) in ("PENDING", "RUNNING")  # submit returned while the job goes
    follower = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "logs", "-f", run.id], cwd=project, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, **_env()))
    try:
        assert follower.stdout is not None
        seen = [follower.stdout.readline() for _ in range(4)]
        assert seen[-1] == "tick 2\n", seen
        cancel = cli("cancel", run.id, env=_env())
        assert cancel.returncode == 0, cancel.stderr
        out, _ = follower.communicate(timeout=60)  # logs -f ends with the run
    finally:
        follower.kill()
        subprocess.run(["scancel", job_id], env=dict(os.environ, **_env()), check=False)
    (run,) = Store(project / ".runner").list()
    assert run.state == RunState.CANCELLED, run
    assert _squeue(job_id) == ""  # the job left the queue
    assert wait_until_gone(f"RUNNER_RUN_DIR={project / '.runner' / 'runs' / run.id}",
                           source="environ") == []


def test_a_gpu_request_is_a_gres_and_the_run_sees_its_device(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    if int(TB.get("RUNNER_TEST_SLURM_GPUS", "0")) < 1:
        pytest.skip("the testbed's Slurm node offers no GPU gres")
    body = "import os\nprint('cvd', os.environ.get('CUDA_VISIBLE_DEVICES'))\n"
    res = cli("submit", *_slurm(project, body, gpus=1), env=_env())
    assert res.returncode == 0, res.stderr
    assert "cvd 0" in res.stdout, res.stdout
    # without a request the run sees no device, even when the submitting shell names one
    res = cli("submit", *_slurm(project, body), env=dict(_env(), CUDA_VISIBLE_DEVICES="1"))
    assert res.returncode == 0, res.stderr
    assert "cvd None" in res.stdout, res.stdout


def _refused_before_running(project: Path, cli, target: dict[str, str], says: list[str]) -> None:  # type: ignore[no-untyped-def]
    """A submit with these target keys is one clear error (exit 2) saying each of ``says``,
    and nothing ran."""
    res = cli("submit", *_slurm(project, "print('never')\n", **target), env=_env())
    assert res.returncode == 2, res.stdout + res.stderr
    assert "error:" in res.stderr and "Traceback" not in res.stderr, res.stderr
    for text in says:
        assert text in res.stderr, res.stderr
    assert "never" not in res.stdout


@pytest.mark.parametrize(("target", "says"), [
    ({"partition": "nope"}, ["target.partition", "no partition 'nope'", "available: debug, short"]),
    ({"gres": "tpu:1"}, ["target.gres", "offer no 'tpu'", "they offer: gpu"]),
    ({"partition": "short", "time_limit": "20"}, ["target.time_limit", "over partition 'short'",
                                                  "10 minutes"]),
    ({"time_limit": "soon"}, ["target.time_limit", "not a Slurm time"]),
    ({"gpus": "all"}, ["target.gpus", "a number of GPUs"]),
])
def test_bad_target_values_are_clear_errors(project: Path, cli, target: dict[str, str],  # type: ignore[no-untyped-def]
                                            says: list[str]) -> None:
    _refused_before_running(project, cli, target, says)


def _accounting_enforced() -> bool:
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                             timeout=10, env=dict(os.environ, SLURM_CONF=SLURM_CONF)).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return ("accounting_storage/slurmdbd" in out
            and "associations" in out.split("AccountingStorageEnforce", 1)[-1].split("\n", 1)[0])


needs_accounting = pytest.mark.skipif(
    not _accounting_enforced(),
    reason="the testbed's Slurm keeps no enforced accounting (RUNNER_TESTBED_SLURM_ACCT=0): "
           "sbatch alone decides accounts and QOS there")


@needs_accounting
@pytest.mark.parametrize(("target", "says"), [
    ({"account": "nope"}, ["target.account", "no account 'nope'", "valid: ml, root"]),
    ({"qos": "nope"}, ["target.qos", "no QOS 'nope'", "valid for account 'ml': normal, short"]),
    ({"account": "root", "qos": "short"},
     ["target.qos", "account 'root' may not use QOS 'short'", "valid for account 'root': normal"]),
])
def test_an_unknown_account_or_qos_is_refused_before_submitting_with_the_valid_ones(  # type: ignore[no-untyped-def]
        project: Path, cli, target: dict[str, str], says: list[str]) -> None:
    _refused_before_running(project, cli, target, says)


@needs_accounting
def test_an_account_sbatch_refuses_names_the_key(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # passed around the check (as a raw sbatch option): sbatch itself refuses it
    res = cli("submit", *_slurm(project, "print('never')\n"), "target.sbatch_args=['--account=nope']",
              env=_env())
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert "error: target.account: Slurm refused the job: " in res.stderr, res.stderr
    assert "Invalid account" in res.stderr and "sacctmgr show assoc" in res.stderr, res.stderr


@needs_accounting
def test_a_run_under_a_valid_account_and_qos_succeeds_and_sacct_records_it(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    res = cli("submit", *_slurm(project, "print('accounted')\n", account="ml", qos="short"),
              env=_env())
    assert res.returncode == 0, res.stderr
    assert "accounted" in res.stdout, res.stdout
    (run,) = Store(project / ".runner").list()
    assert run.state == RunState.SUCCEEDED and run.locator is not None
    seen = ""
    for _ in range(100):  # slurmctld hands the job to slurmdbd within moments (QOS last)
        seen = subprocess.run(
            ["sacct", "-j", str(run.locator["job_id"]), "-X", "-n", "-P", "-o", "Account,QOS,State"],
            capture_output=True, text=True, env=dict(os.environ, **_env())).stdout.strip()
        if seen == "ml|short|COMPLETED":
            break
        time.sleep(0.2)
    assert seen == "ml|short|COMPLETED", seen


def test_no_slurm_on_path_is_a_clear_error(project: Path, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "git").symlink_to(shutil.which("git") or "/usr/bin/git")
    res = cli("submit", *_slurm(project, "print('never')\n"), env=dict(_env(), PATH=str(bare)))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "error:" in res.stderr and "not on PATH" in res.stderr and "login node" in res.stderr
    assert "Traceback" not in res.stderr


def test_doctor_checks_sinfo_the_partition_and_the_work_dir_from_a_node(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    res = cli("doctor", "slurm", env=_env(), timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("sinfo", "partition", "sacct", "work dir"):
        assert name in res.stdout, res.stdout
    assert "gres gpu" in res.stdout and "a compute node reads" in res.stdout, res.stdout
    if _accounting_enforced():
        assert "enforces accounting" in res.stdout, res.stdout
    bad = cli("doctor", "slurm", env=dict(_env(), SLURM_CONF="/nonexistent/slurm.conf"))
    assert bad.returncode != 0 and "FAIL" in bad.stdout, bad.stdout + bad.stderr


def test_a_venv_is_built_once_per_env_key_in_the_work_dir_and_reused(project: Path, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    (project / "conf" / "env").mkdir(parents=True)
    (project / "conf" / "env" / "own.yaml").write_text(f"name: own\npython: '{py}'\n")
    shared = tmp_path / "shared"
    args = [*_slurm(project, "import sys, runner\nprint('prefix', sys.prefix)\n"
                             "runner.log_metric('score', 1.5)\n", work_dir=shared),
            "env=own"]
    first = cli("submit", *args, env=_env(), timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "building virtualenv" in first.stdout + first.stderr
    (venv,) = [p for p in (shared / "envs").iterdir() if (p / ".complete").exists()]
    assert f"prefix {venv}" in first.stdout, first.stdout
    second = cli("submit", *args, env=_env(), timeout=300)
    assert second.returncode == 0, second.stderr
    assert "building virtualenv" not in second.stdout + second.stderr
    assert f"prefix {venv}" in second.stdout
    # each run lived in the work dir, and its results came home to the project
    for run in Store(project / ".runner").list():
        assert (shared / "runs" / run.id / "log.txt").is_file()
        assert (project / ".runner" / "runs" / run.id / "status.json").is_file()
        assert run.state == RunState.SUCCEEDED and run.summary == {"score": 1.5}


@pytest.mark.slow
def test_a_run_that_ignores_the_warning_is_killed_at_its_time_limit_as_timeout(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    """Slurm counts time limits in minutes and checks them about every 30 s: this takes 1-2
    minutes. The warning (--signal) may come up to 60 s early, as Slurm allows."""
    args = _slurm(project, "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                  "print('working', flush=True)\ntime.sleep(600)\n", time_limit=1, warn_before_s=30)
    res = cli("submit", *args, env=_env(), timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    (run,) = Store(project / ".runner").list()
    assert run.state == RunState.FAILED and "TIMEOUT" in run.message, run
    assert "time limit" in res.stderr
    assert "the job reaches its time limit in about 30 s" in res.stdout, res.stdout


def test_the_time_limit_warning_stops_the_run_with_a_checkpoint_and_resume_finishes_it(project: Path, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The warning comes ``warn_before_s`` before the limit (or up to 60 s earlier): the model
    saves a checkpoint and stops; the run is FAILED with the reason, and a resume with a
    longer limit trains only the epochs that are left. Runs live in a work dir, so the
    checkpoint comes home from there and goes back up with the resumed run."""
    import json
    import re

    from tests.test_resume import EPOCHS

    args = _slurm(project, EPOCHS, time_limit=1, warn_before_s=45, work_dir=tmp_path / "shared")
    res = cli("submit", *args, "model.args=[30,1.0]", env=_env(), timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    (run,) = Store(project / ".runner").list()
    assert run.state == RunState.FAILED, run
    assert run.message.startswith("stopped at the time limit of its Slurm job "
                                  "(target.time_limit=1"), run.message
    assert f"checkpoint saved: runner resume {run.id} continues it" in run.message
    assert "the model saves a checkpoint and stops" in res.stdout, res.stdout
    rd = Path(run.run_dir)
    saved = json.loads((rd / "checkpoints" / "state.json").read_text())["epoch"]
    done = [int(n) for n in re.findall(r"^epoch (\d+) done$", rd.joinpath("log.txt").read_text(), re.M)]
    assert done == list(range(1, saved + 1)) and saved < 30
    again = cli("resume", run.id, "target.time_limit=5", env=_env(), timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    second = [r for r in Store(project / ".runner").list() if r.id != run.id][0]
    assert second.state == RunState.SUCCEEDED and second.parent == run.id
    log = Path(second.run_dir, "log.txt").read_text()
    assert [int(n) for n in re.findall(r"^epoch (\d+) done$", log, re.M)] == list(range(saved + 1, 31))


# -- a sweep: one job array ---------------------------------------------------------------------
SWEEP_JOB = """\
import os, sys, time, runner
x = int(sys.argv[1])
runner.log_metric("started", time.time())
time.sleep(1)
runner.log_metric("ended", time.time())
print("task", os.environ.get("SLURM_ARRAY_TASK_ID"), "x", x, flush=True)
if x == 3 and os.environ.get("FLAKY") == "1":
    sys.exit(1)
runner.log_metric("score", 2.0 * x)
"""


def test_a_sweep_is_one_job_array_and_resume_resubmits_only_the_failed_index(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    args = [*_slurm(project, SWEEP_JOB), "model.args=[1],[2],[3],[4]",
            "hydra.launcher.max_parallel=2"]
    res = cli("submit", "-m", *args, env=dict(_env(), FLAKY="1"), timeout=300)
    assert res.returncode != 0, res.stderr  # one job failed
    store = Store(project / ".runner")
    (sweep_id,) = {r.sweep_id for r in store.list() if r.sweep_id}
    runs = store.list(sweep_id=sweep_id)
    by_x = {r.summary.get("score", 6.0) / 2: r for r in runs}
    assert sorted(by_x) == [1, 2, 3, 4] and by_x[3].state == RunState.FAILED
    assert all(r.state == RunState.SUCCEEDED for x, r in by_x.items() if x != 3)
    # one sbatch: every run is a task of the same array, addressed ARRAY_TASK
    ids = [str(r.locator["job_id"]) for r in runs]  # type: ignore[index]
    assert len({i.split("_")[0] for i in ids}) == 1 and all("_" in i for i in ids), ids
    # %2: never more than two tasks at once
    spans = [(r.summary["started"], r.summary["ended"]) for r in runs]
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2, spans
    # each task ran its own run, its log in its own run directory
    for r in runs:
        log = (project / ".runner" / "runs" / r.id / "log.txt").read_text()
        assert f"task {r.locator['job_id'].split('_')[1]} x" in log, log  # type: ignore[index]

    again = cli("sweep", sweep_id, "--resume", env=_env(), timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resuming 1 of 4 jobs" in again.stderr
    rerun = [r for r in store.list(sweep_id=sweep_id) if r.id not in {x.id for x in runs}]
    assert len(rerun) == 1 and rerun[0].state == RunState.SUCCEEDED
    assert rerun[0].summary["score"] == 6.0
    new_id = str(rerun[0].locator["job_id"])  # type: ignore[index]
    assert new_id.endswith("_0") and new_id.split("_")[0] != ids[0].split("_")[0]


def test_a_detached_sweep_returns_once_the_array_is_queued(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    """`runner submit -m --detach` on Slurm: the shell is free as soon as the array is queued
    (the scheduler holds the queue); `runner sweep` then follows the jobs to their end."""
    body = "import sys, time, runner\ntime.sleep(3)\nrunner.log_metric('x', float(sys.argv[1]))\n"
    args = [*_slurm(project, body), "model.args=[1],[2],[3]", "retries=1"]
    res = cli("submit", "-m", "--detach", *args, env=_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    assert "this shell is free" in res.stderr
    # nothing follows a detached sweep, so nothing retries its jobs: said once, with the way
    assert res.stderr.count("note: retries=1 applies while a process follows the sweep") == 1
    assert "runner sweep SWEEP --resume" in res.stderr
    store = Store(project / ".runner")
    runs = store.list()
    assert len(runs) == 3 and all(not r.state.terminal for r in runs)  # queued, not waited for
    (sweep_id,) = {r.sweep_id for r in runs}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        shown = cli("sweep", str(sweep_id), env=_env())
        if shown.stdout.count("SUCCEEDED") == 3:
            break
        time.sleep(2)
    assert shown.stdout.count("SUCCEEDED") == 3, shown.stdout + shown.stderr
    assert sorted(r.summary["x"] for r in store.list()) == [1.0, 2.0, 3.0]


def test_a_detached_optimizing_sweep_is_refused(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    args = [*_slurm(project, "print('never')\n"), "model.args=[1],[2]",
            "hydra.launcher.objective=loss"]
    res = cli("submit", "-m", "--detach", *args, env=_env())
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "does not apply to an optimizing sweep" in res.stderr


def test_runner_cancel_sweep_cancels_the_whole_array(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    body = "import sys, time\nprint('job value', sys.argv[1], flush=True)\ntime.sleep(300)\n"
    args = [*_slurm(project, body), "model.args=[1],[2],[3]", "hydra.launcher.max_parallel=2"]
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "submit", "-m", *args],
                            cwd=project, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, **_env()))
    store = Store(project / ".runner")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            logs = [r.run_dir / "log.txt" for r in store.list()] if store.db_path.exists() else []
            if sum(1 for p in logs if p.exists() and "job value" in p.read_text()) == 2:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("two array tasks never ran")
        runs = store.list()
        array_id = str(runs[0].locator["job_id"]).split("_")[0]  # type: ignore[index]
        assert _squeue(array_id)  # two running, one pending (%2)
        assert sum(1 for r in runs if processes_with(f"RUNNER_RUN_DIR={r.run_dir}",
                                                     source="environ")) == 2
        (sweep_id,) = {r.sweep_id for r in runs}
        res = cli("cancel", sweep_id, env=_env())
        assert res.returncode == 0, res.stderr
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert [r.state for r in store.list()] == [RunState.CANCELLED] * 3
    assert _squeue(array_id) == ""  # the running tasks and the pending one
    for r in store.list():  # nothing of any run is left on the node
        assert wait_until_gone(f"RUNNER_RUN_DIR={r.run_dir}", source="environ") == []


def test_a_hydra_apps_sweep_runs_as_a_job_array(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    from tests.test_hydra_users import APP, HELPERS

    (project / "app" / "conf").mkdir(parents=True)
    (project / "app" / "train.py").write_text(APP)
    (project / "app" / "helpers.py").write_text(HELPERS)
    (project / "app" / "conf" / "config.yaml").write_text("lr: 0.1\nlayers: 1\n")
    r = subprocess.run([sys.executable, "app/train.py", "-m", "hydra/launcher=runner",
                        "hydra.launcher.target=slurm", "lr=0.1,0.5", "layers=2"], cwd=project,
                       text=True, capture_output=True, timeout=300, env=dict(os.environ, **_env()))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[job 0] training lr=0.1 layers=2" in r.stdout
    assert "[job 1] training lr=0.5 layers=2" in r.stdout
    runs = Store(project / ".runner").list()
    assert len(runs) == 2 and all(run.state == RunState.SUCCEEDED for run in runs)
    ids = {str(run.locator["job_id"]).split("_")[0] for run in runs}  # type: ignore[index]
    assert len(ids) == 1, ids  # one array


@pytest.mark.slow
def test_a_node_failure_requeues_the_run_and_it_starts_again(project: Path, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The node goes down under a running job: Slurm requeues it (its default), the run shows
    QUEUED with why, then runs again from the beginning. Slurm holds a requeued job back for
    about two minutes."""
    marker = tmp_path / "attempts"
    body = (f"import time\nfrom pathlib import Path\np = Path({str(marker)!r})\n"
            "n = len(p.read_text()) if p.exists() else 0\np.write_text('x' * (n + 1))\n"
            "print('attempt', n + 1, flush=True)\ntime.sleep(300 if n == 0 else 0)\n")
    res = cli("submit", "--detach", *_slurm(project, body), env=_env())
    assert res.returncode == 0, res.stderr
    (run,) = Store(project / ".runner").list()
    log = project / ".runner" / "runs" / run.id / "log.txt"
    deadline = time.monotonic() + 60
    while not (log.exists() and "attempt 1" in log.read_text()):
        assert time.monotonic() < deadline, "the first attempt never started"
        time.sleep(0.2)
    env = dict(os.environ, **_env())
    subprocess.run(["scontrol", "update", "nodename=localhost", "state=down", "reason=runner-drill"],
                   env=env, check=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            runs = cli("runs", env=_env())
            if "QUEUED" in runs.stdout:
                break
            assert time.monotonic() < deadline, runs.stdout + runs.stderr
            time.sleep(0.5)
    finally:  # the node comes back by itself (ReturnToService=2); make sure
        subprocess.run(["scontrol", "update", "nodename=localhost", "state=resume"], env=env,
                       capture_output=True)
    follow = cli("logs", run.id, "-f", env=_env(), timeout=400)
    assert "attempt 2" in follow.stdout and "NODE FAILURE" in follow.stdout, follow.stdout
    (run,) = Store(project / ".runner").list()
    assert run.state == RunState.SUCCEEDED, run
