"""The MLflow mirror through the CLI, read back with MLflow's own client: a finished run's
params, metric history, tags and artifacts; a sweep as parent and children; runs recorded
before, exported once; secrets never in the store; an unreachable server and a missing
mlflow package leave the run alone and say so once."""

from __future__ import annotations

import os
import queue
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from runner.store import Store

from .conftest import run_cli
from .test_client_without_framework import SITECUSTOMIZE

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")

SECRET = "tok-9f8e7d6c5b4a-never-stored"

TRAIN = """\
import sys
import runner
lr = float(sys.argv[1]) if len(sys.argv) > 1 else 0.1
for step in range(4):
    runner.log_metric("loss", lr / (step + 1), step=step * 10)
runner.log_metric("accuracy", 0.5 + lr)
(runner.outputs_dir() / "model.txt").write_text("weights")
(runner.outputs_dir() / "sub").mkdir()
(runner.outputs_dir() / "sub" / "notes.txt").write_text("notes")
"""


def _client(uri: str):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(uri: str, experiment: str):  # type: ignore[no-untyped-def]
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {uri}"
    return client.search_runs([exp.experiment_id])


def _git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                   cwd=project, check=True, capture_output=True)


def test_a_finished_run_is_mirrored_with_params_metrics_tags_and_artifacts(
        project: Path, tmp_path: Path) -> None:
    (project / "train.py").write_text(TRAIN)
    _git(project, "init", "-q")
    _git(project, "add", "train.py")
    _git(project, "commit", "-qm", "train")
    (project / "train.py").write_text(TRAIN + "# an uncommitted change\n")
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    # no GPU on this machine: an nvidia-smi that reports one, as a driver would
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(
        "#!/bin/sh\necho '0, NVIDIA H100 80GB HBM3, 81559 MiB, 550.54.15'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    res = run_cli("submit", "model=script", "model.path=train.py", "model.args=[0.2]",
                  "+api.token=${oc.env:API_TOKEN}", cwd=project,
                  env={"MLFLOW_TRACKING_URI": uri, "API_TOKEN": SECRET,
                       "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr, res.stderr
    rec = Store(project / ".runner").list(limit=1)[0]

    (run,) = _runs(uri, project.name)  # one experiment per project, named after its folder
    assert run.info.run_name == rec.id and run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.path"] == "train.py" and params["model.args"] == "[0.2]"
    assert params["seed"] == "0" and params["target.backend"] == "local"
    assert params["api.token"] == "${oc.env:API_TOKEN}"  # the reference, never the value
    history = _client(uri).get_metric_history(run.info.run_id, "loss")
    assert [(m.step, round(m.value, 4)) for m in history] == [
        (0, 0.2), (10, 0.1), (20, 0.0667), (30, 0.05)]
    assert run.data.metrics["accuracy"] == pytest.approx(0.7)
    tags = run.data.tags
    assert tags["runner.run_id"] == rec.id and tags["runner.target"] == "local"
    assert tags["runner.env"] == "current" and tags["runner.env_key"] == rec.env_key
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head and tags["runner.git_dirty"] == "true"
    assert tags["runner.gpus"] == "0: NVIDIA H100 80GB HBM3 (81559 MiB)"
    assert "runner.sweep_id" not in tags
    client = _client(uri)
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert top == {"config.yaml", "outputs"}
    outputs = {a.path for a in client.list_artifacts(run.info.run_id, "outputs")}
    assert outputs == {"outputs/model.txt", "outputs/sub"}
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")  # a driver that sees none
    other = run_cli("submit", "model=script", "model.path=train.py", cwd=project,
                    env={"MLFLOW_TRACKING_URI": uri,
                         "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert other.returncode == 0, other.stderr
    seen = {r.info.run_name: r.data.tags["runner.gpus"] for r in _runs(uri, project.name)}
    assert sorted(seen.values()) == ["0: NVIDIA H100 80GB HBM3 (81559 MiB)", "none"]
    local = Path(client.download_artifacts(run.info.run_id, "outputs/model.txt", str(tmp_path)))
    assert local.read_text() == "weights"
    # the secret's value is nowhere in the store: database, its WAL, artifacts
    for path in db.parent.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in res.stdout + res.stderr


JOB = """\
import os, sys
import runner
lr, width = int(os.environ["RUNNER_SEED"]) / 10, int(sys.argv[1])
for step in range(3):
    runner.log_metric("loss", 1 / (1 + lr * width * (step + 1)), step=step)
runner.log_metric("accuracy", 0.5 + lr * width / 20)
"""


def test_a_sweep_recorded_before_is_exported_once_as_a_parent_with_its_jobs(project: Path) -> None:
    (project / "job.py").write_text(JOB)
    res = run_cli("submit", "-m", "model=script", "model.path=job.py", "seed=1,2",
                  "model.args=[8],[16]", cwd=project)
    assert res.returncode == 0, res.stderr
    records = Store(project / ".runner").list()
    sweep_id = records[0].sweep_id
    assert sweep_id and len(records) == 4

    # named by the project's settings file, relative to the project
    (project / "conf").mkdir()
    (project / "conf" / "mlflow.yaml").write_text("tracking_uri: sqlite:///mlruns/db.sqlite\n"
                                                  "experiment: sentiment\n")
    (project / "mlruns").mkdir()
    uri = f"sqlite:///{project / 'mlruns' / 'db.sqlite'}"
    res = run_cli("export", "mlflow", "--sweep", sweep_id, cwd=project)
    assert res.returncode == 0, res.stderr
    assert "4 run(s) exported" in res.stderr and "experiment 'sentiment'" in res.stderr
    runs = _runs(uri, "sentiment")
    parents = [r for r in runs if r.data.tags.get("runner.sweep_parent") == sweep_id]
    assert len(parents) == 1 and parents[0].info.run_name == sweep_id
    assert parents[0].info.status == "FINISHED"
    children = [r for r in runs if r is not parents[0]]
    assert sorted(r.info.run_name for r in children) == sorted(r.id for r in records)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {(r.data.params["seed"], r.data.params["model.args"]) for r in children} == {
        ("1", "[8]"), ("1", "[16]"), ("2", "[8]"), ("2", "[16]")}
    assert {r.data.tags["runner.sweep_id"] for r in children} == {sweep_id}

    again = run_cli("export", "mlflow", "--all", cwd=project)
    assert again.returncode == 0, again.stderr
    assert "0 run(s) exported" in again.stderr and "4 already there" in again.stderr
    assert len(_runs(uri, "sentiment")) == 5

    (project / "conf" / "mlflow.yaml").write_text("tracking: sqlite:///x.db\n")
    bad = run_cli("export", "mlflow", "--all", cwd=project)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert f"{project / 'conf' / 'mlflow.yaml'}: unknown keys ['tracking']" in bad.stderr
    assert "valid keys: tracking_uri" in bad.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


GATED = """\
import os, sys, time
import runner
runner.log_metric("loss", 1.0, step=0)
runner.log_metric("loss", 0.5, step=1)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.1)
runner.log_metric("loss", 0.25, step=2)
"""


class _Lines:
    """The lines a child writes to a pipe, read in a thread, so a test can wait for one."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in {timeout}s: {self.seen}")

    def rest(self) -> list[str]:
        while True:
            try:
                self.seen.append(self.lines.get(timeout=1))
            except queue.Empty:
                return self.seen


def _submit(project: Path, uri: str, gate: Path) -> subprocess.Popen[str]:
    (project / "gated.py").write_text(GATED)
    return subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "submit", "model=script", "model.path=gated.py",
         f"model.args=[{gate}]"], cwd=project, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, "MLFLOW_TRACKING_URI": uri})


def _has_experiment(db: Path, name: str) -> bool:
    """The runner made the store and its experiment (MLflow's client must not open a store
    that another process is still creating: both would set its tables up)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return bool(con.execute("SELECT 1 FROM experiments WHERE name=?", (name,)).fetchall())
    except sqlite3.Error:
        return False


def test_metrics_reach_mlflow_while_the_run_goes_and_the_same_run_is_completed(
        project: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    gate = tmp_path / "gate"
    proc = _submit(project, uri, gate)
    try:
        deadline = time.monotonic() + 90
        while True:  # the run is going: its MLflow run is RUNNING with the points so far
            live = _runs(uri, project.name) if _has_experiment(tmp_path / "mlflow.db", project.name) \
                else []
            history = _client(uri).get_metric_history(live[0].info.run_id, "loss") if live else []
            if len(history) == 2:
                break
            assert time.monotonic() < deadline, "the run's metrics never reached MLflow"
            assert proc.poll() is None
            time.sleep(0.5)
        assert live[0].info.status == "RUNNING" and [m.step for m in history] == [0, 1]
        assert live[0].data.params["model.path"] == "gated.py"
    finally:
        gate.touch()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    (done,) = _runs(uri, project.name)
    assert done.info.run_id == live[0].info.run_id and done.info.status == "FINISHED"
    history = _client(uri).get_metric_history(done.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 0.5), (2, 0.25)]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_tracking_server_leaves_the_run_going_and_says_so_once(
        project: Path, tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    gate = tmp_path / "gate"
    proc = _submit(project, uri, gate)
    try:
        lines = _Lines(proc.stderr)
        first = lines.wait_for("mlflow", timeout=90)  # said while the run goes
        assert f"cannot reach {uri}" in first and "trying again when the run ends" in first
    finally:
        gate.touch()
    assert proc.wait(timeout=120) == 0
    stderr = "".join(lines.rest())
    rec = Store(project / ".runner").list(limit=1)[0]
    assert rec.state.value == "SUCCEEDED" and rec.summary["loss"] == 0.25
    warnings = [line for line in stderr.splitlines() if "mlflow" in line]
    assert len(warnings) == 2, stderr  # once while it went, once at its end: what to do
    assert uri in warnings[1] and f"runner export mlflow {rec.id}" in warnings[1]
    assert "Traceback" not in stderr

    res = run_cli("export", "mlflow", rec.id, "--tracking-uri", uri, cwd=project)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"error: cannot use the MLflow tracking store {uri} "
                                 "(named by --tracking-uri): cannot connect to 127.0.0.1:")


def test_without_mlflow_installed_runs_go_on_and_export_says_how_to_install(
        project: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.replace(
        "BLOCKED = (", "BLOCKED = ('mlflow', "))
    (project / "train.py").write_text(TRAIN)
    env = {"PYTHONPATH": str(site), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    res = run_cli("submit", "model=script", "model.path=train.py", cwd=project, env=env)
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if "mlflow" in line]
    assert len(warnings) == 1 and "pip install 'runner[mlflow]'" in warnings[0], res.stderr

    res = run_cli("export", "mlflow", "--all", cwd=project, env=env)
    assert res.returncode == 2
    assert res.stderr.strip() == "error: mlflow is not installed: pip install 'runner[mlflow]'"
    assert not (tmp_path / "m.db").exists()
