"""Sweeps through the CLI, as a user runs them: `runner submit -m` on the local target fans the
jobs out in parallel (each on its own GPU slot), isolates failures, resumes, skips what is done,
cancels everything, and compares the swept keys."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runner.backend import RunState
from runner.plugins.local import group_members
from runner.store import RunRecord, Store

from .conftest import as_at_a_terminal

JOB = """\
import os, sys, time
import runner

value = float(os.environ["RUNNER_SEED"] if sys.argv[1] == "seed" else sys.argv[1])
seconds = float(sys.argv[2])
gate = sys.argv[3] if len(sys.argv) > 3 else None
runner.log_metric("started", time.time())
runner.log_metric("gpu", float(os.environ.get("CUDA_VISIBLE_DEVICES", "-1")))
print(f"job value={value} gpu={os.environ.get('CUDA_VISIBLE_DEVICES')}", flush=True)
time.sleep(seconds)
if value < 0 and not (gate and os.path.exists(gate)):
    print("negative value: failing", flush=True)
    sys.exit(3)
runner.log_metric("score", value * 2)
runner.log_metric("ended", time.time())
"""


@pytest.fixture
def sweep_project(project: Path) -> Path:
    (project / "job.py").write_text(JOB)
    target = project / "conf" / "target"
    target.mkdir(parents=True)
    (target / "gpu2.yaml").write_text('backend: local\nslots: 2\ngpus: "0,1"\ncancel_grace: 2\n')
    (target / "one.yaml").write_text("backend: local\nslots: 1\ncancel_grace: 2\n")
    return project


def _args(*values: str, seconds: float = 0.0, gate: str | None = None) -> str:
    tail = f",{gate}" if gate else ""
    return "model.args=" + ",".join(f"[{v},{seconds}{tail}]" for v in values)


def _submit(cli, *extra: str, **kw):  # type: ignore[no-untyped-def]
    return cli("submit", "-m", "model=script", "model.path=job.py", *extra, **kw)


def _sweep_runs(project: Path) -> tuple[str, list[RunRecord]]:
    store = Store(project / ".runner")
    (sweep_id,) = {r.sweep_id for r in store.list() if r.sweep_id}
    return sweep_id, sorted(store.list(sweep_id=sweep_id), key=lambda r: r.created)


def test_jobs_run_in_parallel_each_on_its_own_gpu(sweep_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    res = _submit(cli, "target=gpu2", _args("1", "2", "3", "4", seconds=1.5))
    assert res.returncode == 0, res.stderr
    _, runs = _sweep_runs(sweep_project)
    assert [r.state for r in runs] == [RunState.SUCCEEDED] * 4
    spans = [(r.summary["started"], r.summary["ended"], int(r.summary["gpu"])) for r in runs]
    for i, (s1, e1, g1) in enumerate(spans):
        overlapping = [(s2, e2, g2) for j, (s2, e2, g2) in enumerate(spans) if j != i and s2 < e1 and s1 < e2]
        assert len(overlapping) <= 1, "more jobs ran at once than the target's 2 slots"
        assert all(g2 != g1 for _, _, g2 in overlapping), "two jobs at once on the same GPU"
    assert any(s2 < e1 and s1 < e2 for (s1, e1, _), (s2, e2, _) in zip(spans, spans[1:], strict=False))
    assert {g for _, _, g in spans} == {0, 1}
    # one snapshot for the sweep, logs prefixed by job, a final table with the metrics
    assert res.stderr.count("code snapshot of") == 1
    assert "[job 3] job value=4.0" in res.stdout
    assert "score=8" in res.stderr and res.stderr.count("SUCCEEDED") >= 8


def test_a_failure_stays_in_its_job_and_resume_reruns_only_it(sweep_project: Path, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gate = tmp_path / "fixed"
    res = _submit(cli, "target=gpu2", _args("1", "-1", "3", gate=str(gate)))
    assert res.returncode == 1
    sweep_id, runs = _sweep_runs(sweep_project)
    assert sorted(r.state.value for r in runs) == ["FAILED", "SUCCEEDED", "SUCCEEDED"]
    assert "exited with code 3" in res.stderr
    first_ids = {r.id for r in runs}

    shown = cli("sweep", sweep_id)
    assert "--resume" in shown.stderr and "FAILED" in shown.stdout

    gate.touch()  # what the user fixed outside the frozen snapshot
    res = cli("sweep", sweep_id, "--resume")
    assert res.returncode == 0, res.stderr
    assert "resuming 1 of 3 jobs" in res.stderr
    _, runs = _sweep_runs(sweep_project)
    new = [r for r in runs if r.id not in first_ids]
    assert len(new) == 1 and new[0].state == RunState.SUCCEEDED and new[0].summary["score"] == -2
    assert cli("sweep", sweep_id, "--resume").stderr.count("nothing to resume") == 1

    cmp = cli("compare", "--sweep", sweep_id)
    assert cmp.returncode == 0, cmp.stderr
    rows = {line.split()[0]: line.split()[1:] for line in cmp.stdout.splitlines() if line.strip()}
    assert rows["model.args"][0].startswith("[")  # the swept key, one column per job
    assert "model.path" not in rows and "target.slots" not in rows and "seed" not in rows
    assert rows["state"] == ["SUCCEEDED"] * 3  # the newest run of each job
    assert sorted(float(v) for v in rows["score"]) == [-2.0, 2.0, 6.0]


def test_fail_fast_cancels_the_rest(sweep_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    res = _submit(cli, "--fail-fast", "target=one", _args("-1", "2", "3"))
    assert res.returncode == 1
    _, runs = _sweep_runs(sweep_project)
    assert [r.state.value for r in runs] == ["FAILED", "CANCELLED", "CANCELLED"]
    assert all(r.locator is None for r in runs[1:])  # never started
    assert "--fail-fast" in res.stderr


def test_skip_done_skips_jobs_whose_key_succeeded(sweep_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    assert _submit(cli, "target=gpu2", _args("1", "2")).returncode == 0
    res = _submit(cli, "--skip-done", "target=gpu2", _args("1", "2", "5"))
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("skipped: the same job succeeded") == 2
    store = Store(sweep_project / ".runner")
    assert len(store.list()) == 3  # only the new job ran
    assert "score=10" in res.stderr and "SKIPPED" in res.stderr


def _wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def _start_long_sweep(project: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "submit", "-m", "model=script", "model.path=job.py",
         "target=gpu2", _args("1", "2", "3", seconds=120)],
        cwd=project, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=as_at_a_terminal,
    )


def _assert_all_stopped(project: Path) -> None:
    _, runs = _sweep_runs(project)
    assert [r.state for r in runs] == [RunState.CANCELLED] * 3
    for r in runs:
        if r.locator:
            assert group_members(int(r.locator["pgid"])) == []


def _two_running(project: Path) -> bool:
    store = Store(project / ".runner")
    if not store.db_path.exists():
        return False
    logs = [r.run_dir / "log.txt" for r in store.list(states=(RunState.RUNNING,))]
    return len(logs) == 2 and all(p.exists() and "job value" in p.read_text() for p in logs)


def test_runner_cancel_sweep_stops_every_job(sweep_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    proc = _start_long_sweep(sweep_project)
    try:
        _wait_for(lambda: _two_running(sweep_project))
        sweep_id, _ = _sweep_runs(sweep_project)
        res = cli("cancel", sweep_id)
        assert res.returncode == 0, res.stderr
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    _assert_all_stopped(sweep_project)


def test_ctrl_c_cancels_the_sweep_and_leaves_nothing_running(sweep_project: Path) -> None:
    proc = _start_long_sweep(sweep_project)
    try:
        _wait_for(lambda: _two_running(sweep_project))
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    # how many jobs were still queued depends on how far the launcher got on a busy machine
    import re

    said = re.search(r"cancelling (\d+) running and (\d+) queued jobs", out)
    assert said is not None, out
    assert int(said.group(1)) == 2 and int(said.group(2)) <= 1, out
    _assert_all_stopped(sweep_project)


def test_optuna_sweeper_gets_the_objective_from_each_job(sweep_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    res = cli("submit", "-m", "model=script", "model.path=job.py", "target=gpu2",
              "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
              "hydra.sweeper.direction=maximize", "hydra.launcher.objective=score",
              "seed=choice(1,2,3)", "model.args=[seed,0]")
    assert res.returncode == 0, res.stderr
    _, runs = _sweep_runs(sweep_project)
    assert len(runs) == 4 and all(r.state == RunState.SUCCEEDED for r in runs)
    import yaml

    results = yaml.safe_load((sweep_project / ".runner" / "hydra" / "optimization_results.yaml").read_text())
    assert results["best_value"] == max(r.summary["score"] for r in runs)


def test_without_an_objective_an_optimizing_sweeper_says_what_to_set(sweep_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    res = cli("submit", "-m", "model=script", "model.path=job.py", "target=gpu2",
              "hydra/sweeper=optuna", "hydra.sweeper.n_trials=1", "seed=choice(1,2)",
              "model.args=[seed,0]")
    assert res.returncode == 2
    assert "hydra.launcher.objective=" in res.stderr


def test_sweep_and_detach_is_refused_clearly(sweep_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    res = cli("submit", "--detach", "-m", "model=script", "model.path=job.py", _args("1", "2"))
    assert res.returncode == 2 and "--detach does not apply to a sweep on target local" in res.stderr
    assert "slurm" in res.stderr  # where it does apply
    assert "no runs yet" in cli("runs").stderr  # nothing was started
    res = cli("sweep", "s000000-000000-0000")
    assert res.returncode == 2 and "no sweep 's000000-000000-0000'" in res.stderr


def test_the_local_target_runs_one_job_at_a_time_by_default(sweep_project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    (sweep_project / "conf" / "target" / "local.yaml").write_text(textwrap.dedent("""\
        backend: local
        slots: 1
    """))
    res = _submit(cli, _args("1", "2", seconds=0.5), "hydra.launcher.max_parallel=4")
    assert res.returncode == 0, res.stderr
    _, runs = _sweep_runs(sweep_project)
    (a, b) = runs
    assert b.summary["started"] >= a.summary["ended"]  # max_parallel never exceeds the slots


# -- a GPU sweep on a Docker target (the testbed's engine, with its stand-in NVIDIA hook) --------
DOCKER_JOB = """\
import os, socket, sys, time
import runner

runner.log_metric("started", time.time())
runner.log_metric("gpu", float(os.environ["NVIDIA_VISIBLE_DEVICES"]))
print(f"job {sys.argv[1]} host={socket.gethostname()} "
      f"nvidia={os.environ.get('NVIDIA_VISIBLE_DEVICES')} cuda={os.environ.get('CUDA_VISIBLE_DEVICES')}",
      flush=True)
time.sleep(float(sys.argv[2]))
runner.log_metric("ended", time.time())
"""


def _docker_gpu_problem() -> str | None:
    """Why the Docker GPU sweep cannot run here (None when it can)."""
    from .conftest import read_testbed_env

    testbed = read_testbed_env()
    base = testbed.get("RUNNER_BASE_IMAGE", "runner-base:bookworm")
    try:
        r = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                           capture_output=True, timeout=20)
        if r.returncode != 0:
            return "no Docker engine answers; start one with scripts/testbed.sh up"
        r = subprocess.run(["docker", "image", "inspect", base], capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"no docker CLI ({e}); scripts/testbed.sh up installs and starts the engine"
    if r.returncode != 0:
        return f"base image {base} missing; scripts/testbed.sh up builds it"
    if testbed.get("RUNNER_DOCKER_HOST_GPUS") != "fake" or not testbed.get("RUNNER_FAKE_GPU_HOOK_LOG"):
        return "the engine has no stand-in NVIDIA hook: scripts/testbed.sh up adds one"
    return None


@pytest.mark.docker
def test_a_docker_gpu_sweep_gives_each_running_job_its_own_device(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    problem = _docker_gpu_problem()
    if problem:
        pytest.skip(problem)
    import json

    from .conftest import read_testbed_env

    testbed = read_testbed_env()
    hook_log = Path(testbed["RUNNER_FAKE_GPU_HOOK_LOG"])
    base = testbed.get("RUNNER_BASE_IMAGE", "runner-base:bookworm")
    (project / "job.py").write_text(DOCKER_JOB)
    (project / "conf" / "target").mkdir(parents=True)
    # no real driver behind the stand-in hook: the preflight would (rightly) refuse the runs
    (project / "conf" / "target" / "gpubox.yaml").write_text(textwrap.dedent(f"""\
        backend: local_docker
        slots: 2
        gpus: "0,1"
        base_image: {base}
        gpu_preflight: false
        cancel_grace: 2
    """))
    before = hook_log.stat().st_size if hook_log.exists() else 0
    res = cli("submit", "-m", "target=gpubox", "env=docker_python", f"env.base_image={base}",
              "model=script", "model.path=job.py", "model.args=[1,3],[2,3],[3,3],[4,3]", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    _, runs = _sweep_runs(project)
    assert [r.state for r in runs] == [RunState.SUCCEEDED] * 4

    # what the engine was asked for, container by container (the hook sees every container)
    with hook_log.open() as f:
        f.seek(before)
        asked = {parts[2]: parts[3].split("=", 1)[1]
                 for parts in (line.split() for line in f) if len(parts) == 4}
    spans = []
    for r in runs:
        rd = r.run_dir
        given = json.loads((rd / "request.json").read_text())["gpus"]
        host = json.loads((rd / "worker.json").read_text())["host"]  # the container's hostname
        (container,) = [c for c in asked if c.startswith(host)]
        assert asked[container] == given, (r.id, asked[container], given)
        assert int(r.summary["gpu"]) == int(given)  # what the job saw inside its container
        assert f"host={host} nvidia={given} cuda=0" in (rd / "log.txt").read_text()  # renumbered
        spans.append((r.summary["started"], r.summary["ended"], given))
        assert f"{r.id} RUNNING on GPU {given}" in res.stderr
    assert {g for _, _, g in spans} == {"0", "1"}
    overlaps = 0
    for i, (s1, e1, g1) in enumerate(spans):
        at_once = [g2 for j, (s2, e2, g2) in enumerate(spans) if j != i and s2 < e1 and s1 < e2]
        assert len(at_once) <= 1, "more containers ran at once than the target's 2 slots"
        assert g1 not in at_once, "two containers at once on the same GPU"
        overlaps += len(at_once)
    assert overlaps, "the two slots never ran jobs side by side\n" + res.stderr
