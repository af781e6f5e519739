"""Long runs survive: a cancel lets the model save a checkpoint, ``runner resume`` goes on from
it, and a run whose worker is killed is retried from its checkpoint (``retries=N``). Driven
through the CLI against real local processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, run_cli

#: a training script: one checkpoint per epoch in $RUNNER_CHECKPOINT_DIR, and one on SIGTERM
EPOCHS = '''\
import json, os, signal, sys, time
import runner

epochs, secs = int(sys.argv[1]), float(sys.argv[2])
ckpt = os.path.join(runner.checkpoint_dir(), "state.json")  # $RUNNER_CHECKPOINT_DIR
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
done = json.load(open(ckpt))["epoch"] if os.path.exists(ckpt) else 0
print(f"starting after epoch {done}", flush=True)


def save(n):
    with open(ckpt + ".tmp", "w") as f:
        json.dump({"epoch": n}, f)
    os.replace(ckpt + ".tmp", ckpt)


for epoch in range(done + 1, epochs + 1):
    t = time.monotonic()
    while time.monotonic() - t < secs:
        if stop:
            save(epoch - 1)
            print(f"stopped on the signal; checkpoint at epoch {epoch - 1}", flush=True)
            sys.exit(0)
        time.sleep(0.02)
    runner.log_metric("loss", 1.0 / epoch, step=epoch)
    save(epoch)
    print(f"epoch {epoch} done", flush=True)
'''


def _epochs(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"^epoch (\d+) done$", log, re.M)]


def _run_id(stderr: str) -> str:
    return stderr.split("run ", 1)[1].split(":", 1)[0]


def _wait_for_line(project: Path, run_id: str, text: str, timeout: float = 60) -> None:
    log = project / ".runner" / "runs" / run_id / "log.txt"
    deadline = time.monotonic() + timeout
    while not (log.exists() and text in log.read_text()):
        assert time.monotonic() < deadline, f"never saw {text!r} in {log}"
        time.sleep(0.05)


def _ledger(project: Path, run_id: str) -> dict:
    return json.loads((project / ".runner" / "runs" / run_id / "ledger.json").read_text())


def test_cancel_saves_a_checkpoint_and_resume_runs_only_the_remaining_epochs(project: Path) -> None:
    (project / "epochs.py").write_text(EPOCHS)
    r = run_cli("submit", "--detach", "model=script", "model.path=epochs.py",
                "model.args=[5,0.6]", cwd=project)
    assert r.returncode == 0, r.stderr
    first = _run_id(r.stderr)
    _wait_for_line(project, first, "epoch 2 done")
    c = run_cli("cancel", first, cwd=project)
    assert c.returncode == 0 and f"run {first}: CANCELLED" in c.stderr, c.stderr
    log1 = run_cli("logs", first, cwd=project).stdout
    # the script got the signal, saved its checkpoint and stopped (it was not killed)
    assert "stopped on the signal; checkpoint at epoch" in log1, log1
    done1 = _epochs(log1)
    assert done1[:2] == [1, 2] and len(done1) < 5
    shown = run_cli("show", first, cwd=project).stdout
    assert "checkpoint saved" in shown and "checkpoint " in shown

    res = run_cli("resume", first, cwd=project)
    assert res.returncode == 0, res.stderr
    second = _run_id(res.stderr)
    assert f"resumes {first} from its checkpoint" in res.stderr
    log2 = run_cli("logs", second, cwd=project).stdout
    assert f"starting after epoch {done1[-1]}" in log2
    done2 = _epochs(log2)
    assert sorted(done1 + done2) == [1, 2, 3, 4, 5], (done1, done2)  # none repeated, none missed
    # the ledger links the runs, in the database and in the run directory (for a rebuild)
    assert _ledger(project, second)["parent"] == first
    shown = run_cli("show", second, cwd=project).stdout
    assert f"continues   {first} (resumed" in shown or f"{first} (resumed" in shown
    assert second in run_cli("show", first, cwd=project).stdout  # "continued by"
    assert "SUCCEEDED (resumed)" in run_cli("runs", cwd=project).stdout
    # the learning curve goes on: steps 1..5, each once
    metrics = [json.loads(x) for x in
               (project / ".runner" / "runs" / second / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["name"] == "loss"] == [1, 2, 3, 4, 5]
    # a rebuilt ledger keeps the link
    assert run_cli("ledger", "rebuild", cwd=project).returncode == 0
    assert f"{first} (resumed" in run_cli("show", second, cwd=project).stdout


def test_resume_with_an_override_moves_the_rest_elsewhere(project: Path) -> None:
    """Overrides replace the run's own: here the number of epochs grows from 2 to 3."""
    (project / "epochs.py").write_text(EPOCHS)
    r = run_cli("submit", "model=script", "model.path=epochs.py", "model.args=[2,0]",
                cwd=project)
    assert r.returncode == 0, r.stderr
    res = run_cli("resume", "last", "model.args=[3,0]", "seed=7", cwd=project)
    assert res.returncode == 0, res.stderr
    log = run_cli("logs", "last", cwd=project).stdout
    assert "starting after epoch 2" in log and _epochs(log) == [3], log
    meta = json.loads((project / ".runner" / "runs" / _run_id(res.stderr) / "meta.json").read_text())
    assert meta["overrides"] == ["model=script", "model.path=epochs.py", "model.args=[3,0]",
                                 "seed=7"]


def test_a_killed_worker_is_retried_from_its_checkpoint(project: Path) -> None:
    (project / "epochs.py").write_text(EPOCHS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "submit", "model=script", "model.path=epochs.py",
         "model.args=[4,0.5]", "retries=1", "target.retry_backoff=0.2"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    runs = project / ".runner" / "runs"
    deadline = time.monotonic() + 60
    while not list(runs.glob("*/log.txt")) or "epoch 2 done" not in next(
            runs.glob("*/log.txt")).read_text():
        assert time.monotonic() < deadline and proc.poll() is None, "epoch 2 never ended"
        time.sleep(0.05)
    first = next(runs.glob("*/log.txt")).parent.name
    worker = json.loads((runs / first / "worker.json").read_text())["pid"]
    os.killpg(worker, signal.SIGKILL)  # the worker and its script: as a host would lose them
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"run {first} ended LOST" in err and "attempt 2 of 2" in err and "from its checkpoint" in err
    second = [d.name for d in runs.iterdir() if d.name != first]
    assert len(second) == 1
    assert f"run {second[0]} SUCCEEDED" in err
    done1 = _epochs((runs / first / "log.txt").read_text())
    done2 = _epochs((runs / second[0] / "log.txt").read_text())
    assert sorted(done1 + done2) == [1, 2, 3, 4], (done1, done2)
    assert _ledger(project, second[0])["attempt"] == 2
    listing = run_cli("runs", cwd=project).stdout
    assert "LOST" in listing and "SUCCEEDED (attempt 2)" in listing
    shown = run_cli("show", second[0], cwd=project).stdout
    assert f"{first} (retry, attempt 2" in shown


def test_without_retries_a_killed_run_stays_lost(project: Path) -> None:
    (project / "epochs.py").write_text(EPOCHS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "submit", "model=script", "model.path=epochs.py",
         "model.args=[3,0.5]"], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    runs = project / ".runner" / "runs"
    deadline = time.monotonic() + 60
    while not list(runs.glob("*/worker.json")) or "epoch 1 done" not in next(
            runs.glob("*/log.txt")).read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    run = next(runs.glob("*/worker.json")).parent.name
    os.killpg(json.loads((runs / run / "worker.json").read_text())["pid"], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and f"run {run} LOST" in err and "attempt" not in err, err
    assert len(list(runs.iterdir())) == 1


def test_resume_refuses_runs_it_cannot_continue(project: Path) -> None:
    (project / "quick.py").write_text("print('no checkpoint here')\n")
    (project / "slow.py").write_text("import time\ntime.sleep(60)\n")
    assert run_cli("submit", "model=script", "model.path=quick.py", cwd=project).returncode == 0
    res = run_cli("resume", "last", cwd=project)
    assert res.returncode == 2 and res.stderr.startswith("error: run ")
    assert "left no checkpoint" in res.stderr and "Traceback" not in res.stderr
    assert "runner submit model=script model.path=quick.py" in res.stderr

    (project / "epochs.py").write_text(EPOCHS)
    assert run_cli("submit", "model=script", "model.path=epochs.py", "model.args=[1,0]",
                   cwd=project).returncode == 0
    code = next(d for d in (project / ".runner" / "runs").iterdir()
                if (d / "checkpoints" / "state.json").exists()) / "code"
    shutil.rmtree(code)
    res = run_cli("resume", code.parent.name, cwd=project)
    assert res.returncode == 2 and "code snapshot is gone" in res.stderr, res.stderr

    r = run_cli("submit", "--detach", "model=script", "model.path=slow.py", cwd=project)
    running = _run_id(r.stderr)
    try:
        res = run_cli("resume", running, cwd=project)
        assert res.returncode == 2 and "is still" in res.stderr and "runner cancel" in res.stderr
        assert "Traceback" not in res.stderr
    finally:
        run_cli("cancel", running, cwd=project)


def test_overrides_given_to_resume_replace_those_of_the_same_key() -> None:
    from runner.resume import merged_overrides

    before = ["model=script", "model.args=[5,1]", "+extra.flag=1", "target=local_docker"]
    assert merged_overrides(before, ["target=local", "extra.flag=2"]) == [
        "model=script", "model.args=[5,1]", "target=local", "extra.flag=2"]
    assert merged_overrides(before, []) == before


def test_retry_policy_retries_lost_runs_and_oom_only_when_asked() -> None:
    from runner.backend import RunState, RunStatus
    from runner.resume import MAX_BACKOFF_S, RetryPolicy

    lost, oom = RunStatus(RunState.LOST), RunStatus(RunState.FAILED, oom=True)
    failed, cancelled = RunStatus(RunState.FAILED, exit_code=1), RunStatus(RunState.CANCELLED)
    p = RetryPolicy(retries=2, backoff=1.5)
    assert p.wants(lost, 1) and p.wants(lost, 2) and not p.wants(lost, 3)
    assert not p.wants(oom, 1) and not p.wants(failed, 1) and not p.wants(cancelled, 1)
    assert RetryPolicy(retries=1, retry_oom=True).wants(oom, 1)
    assert [p.delay(n) for n in (1, 2, 3)] == [1.5, 3.0, 6.0]
    assert p.delay(40) == MAX_BACKOFF_S
    assert not RetryPolicy().wants(lost, 1)  # retries default to none


def test_a_negative_retries_is_a_clear_error(project: Path) -> None:
    (project / "ok.py").write_text("pass\n")
    res = run_cli("submit", "model=script", "model.path=ok.py", "retries=-1", cwd=project)
    assert res.returncode == 2 and res.stderr.startswith("error: retries: must be 0 or more")


def test_resume_says_which_values_changed_in_the_config_files_since(project: Path) -> None:
    (project / "epochs.py").write_text(EPOCHS)
    (project / "conf" / "target").mkdir(parents=True)
    mine = project / "conf" / "target" / "mine.yaml"
    mine.write_text("backend: local\ncancel_grace: 5\n")
    r = run_cli("submit", "target=mine", "model=script", "model.path=epochs.py",
                "model.args=[1,0]", cwd=project)
    assert r.returncode == 0, r.stderr
    res = run_cli("resume", "last", "model.args=[2,0]", cwd=project)
    assert res.returncode == 0 and "config files changed" not in res.stderr, res.stderr
    mine.write_text("backend: local\ncancel_grace: 7\n")
    res = run_cli("resume", "last", "model.args=[3,0]", cwd=project)
    assert res.returncode == 0, res.stderr
    assert "note: the config files changed since run" in res.stderr
    assert "target.cancel_grace: 5 -> 7" in res.stderr and "model.args" not in res.stderr


def test_a_resumed_cnn_curve_starts_with_the_epochs_its_checkpoint_holds(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from runner.models.sentiment_cnn.checkpoints import history_so_far

    ctx = SimpleNamespace(run_dir=tmp_path, checkpoint_dir=tmp_path / "checkpoints")
    names = ("loss", "val_loss")
    assert history_so_far(ctx, 0, 0, names) == {}  # a fresh run: nothing before it
    (tmp_path / "checkpoints" / "fold0").mkdir(parents=True)
    (tmp_path / "checkpoints" / "fold0" / "training_metadata.json").write_text(
        '{"epoch": 2, "batch": 0}')
    recs = [("loss", 1, 0.9), ("val_loss", 1, 0.8), ("loss", 2, 0.7), ("val_loss", 2, 0.6),
            ("loss", 3, 0.5), ("epoch_seconds", 1, 3.0)]  # epoch 3 is not in the checkpoint
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"name": n, "step": s, "value": v}) + "\n" for n, s, v in recs) + "{half")
    assert history_so_far(ctx, 0, 0, names) == {"loss": [0.9, 0.7], "val_loss": [0.8, 0.6]}


def test_a_detached_run_is_retried_by_its_watcher(project: Path) -> None:
    """Nobody watches a detached run, so submit starts a watcher of its own in the background:
    it retries the run when it is lost, and ends with it."""
    from runner.proc import proc_stat

    (project / "epochs.py").write_text(EPOCHS)
    r = run_cli("submit", "--detach", "model=script", "model.path=epochs.py",
                "model.args=[4,0.5]", "retries=1", "target.retry_backoff=0.2", cwd=project)
    assert r.returncode == 0, r.stderr
    first = _run_id(r.stderr)
    watcher = int(re.search(r"watcher in the background \(pid (\d+)", r.stderr).group(1))
    _wait_for_line(project, first, "epoch 2 done")
    worker = json.loads((project / ".runner" / "runs" / first / "worker.json").read_text())["pid"]
    os.killpg(worker, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while "SUCCEEDED (attempt 2)" not in run_cli("runs", cwd=project).stdout:
        assert time.monotonic() < deadline, (project / ".runner" / "runs" / first / "watch.txt").read_text()
        time.sleep(0.5)
    (second,) = [d.name for d in (project / ".runner" / "runs").iterdir() if d.name != first]
    done = _epochs(run_cli("logs", first, cwd=project).stdout) + _epochs(
        run_cli("logs", second, cwd=project).stdout)
    assert sorted(done) == [1, 2, 3, 4], done
    notes = (project / ".runner" / "runs" / first / "watch.txt").read_text()
    assert f"run {first} ended LOST" in notes and f"run {second} SUCCEEDED" in notes, notes
    deadline = time.monotonic() + 30
    while (st := proc_stat(watcher)) is not None and st.state not in ("Z", "X"):
        assert time.monotonic() < deadline, "the watcher outlived its run"
        time.sleep(0.2)


def test_a_sweep_job_whose_worker_is_killed_is_retried_and_the_others_run_on(project: Path) -> None:
    (project / "epochs.py").write_text(EPOCHS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "submit", "-m", "model=script", "model.path=epochs.py",
         "model.args=[3,0.5]", "seed=1,2", "retries=1", "target.retry_backoff=0.2"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    runs = project / ".runner" / "runs"
    deadline = time.monotonic() + 90

    def seed_of(d: Path) -> int:
        return json.loads((d / "request.json").read_text())["seed"]

    victim = None
    while victim is None:
        assert time.monotonic() < deadline and proc.poll() is None, "epoch 1 never ended"
        for d in runs.glob("*"):
            log = d / "log.txt"
            if (d / "request.json").exists() and seed_of(d) == 1 and log.exists() \
                    and "epoch 1 done" in log.read_text():
                victim = d.name
        time.sleep(0.05)
    os.killpg(json.loads((runs / victim / "worker.json").read_text())["pid"], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"run {victim} ended LOST" in err and "attempt 2 of 2" in err and "from its checkpoint" in err
    by_seed: dict[int, list[str]] = {}
    for d in runs.iterdir():
        by_seed.setdefault(seed_of(d), []).append(d.name)
    assert len(by_seed[1]) == 2 and len(by_seed[2]) == 1, by_seed  # only the lost job went again
    retry = next(r for r in by_seed[1] if r != victim)
    assert _ledger(project, retry)["attempt"] == 2 and _ledger(project, retry)["parent"] == victim
    done = [_epochs((runs / r / "log.txt").read_text()) for r in (victim, retry)]
    assert sorted(done[0] + done[1]) == [1, 2, 3], done  # no epoch repeated, none missing
    sweep_id = _ledger(project, retry)["sweep_id"]
    table = run_cli("sweep", sweep_id, cwd=project)
    assert table.returncode == 0, table.stderr
    assert f"{retry} (attempt 2)" in table.stdout and "LOST" not in table.stdout
    assert table.stdout.count("SUCCEEDED") == 2 and "--resume" not in table.stderr


def test_sweep_resume_continues_a_cancelled_job_from_its_checkpoint(project: Path) -> None:
    (project / "epochs.py").write_text(EPOCHS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "submit", "-m", "model=script", "model.path=epochs.py",
         "model.args=[10,0.5]", "seed=1,2"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    runs = project / ".runner" / "runs"
    deadline = time.monotonic() + 90
    victim = None
    while victim is None:
        assert time.monotonic() < deadline and proc.poll() is None, "epoch 2 never ended"
        for d in runs.glob("*"):
            if (d / "log.txt").exists() and "epoch 2 done" in (d / "log.txt").read_text():
                victim = d.name
                break
        time.sleep(0.05)
    assert run_cli("cancel", victim, cwd=project).returncode == 0
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and f"{victim} CANCELLED" in err, err
    sweep_id = _ledger(project, victim)["sweep_id"]
    saved = json.loads((runs / victim / "checkpoints" / "state.json").read_text())["epoch"]
    again = run_cli("sweep", sweep_id, "--resume", cwd=project)
    assert again.returncode == 0, again.stderr
    assert "resuming 1 of 2 jobs" in again.stderr
    assert f"continues {victim} from its checkpoint" in again.stderr
    new = [d.name for d in runs.iterdir() if _ledger(project, d.name).get("parent") == victim]
    assert len(new) == 1
    assert json.loads((runs / new[0] / "status.json").read_text())["state"] == "SUCCEEDED"
    log = (runs / new[0] / "log.txt").read_text()
    assert f"starting after epoch {saved}" in log
    assert _epochs(log) == list(range(saved + 1, 11))
    shown = run_cli("show", new[0], cwd=project).stdout
    assert f"{victim} (resumed" in shown
