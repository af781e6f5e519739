"""The MLflow mirror through the CLI, read back with MLflow's own client: a finished run's
params, metric history, tags and artifacts; a sweep as parent and children; runs recorded
before, exported once; secrets never in the store; an unreachable server and a missing
mlflow package leave the run alone and say so once."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

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
    res = run_cli("submit", "model=script", "model.path=train.py", "model.args=[0.2]",
                  "+api.token=${oc.env:API_TOKEN}", cwd=project,
                  env={"MLFLOW_TRACKING_URI": uri, "API_TOKEN": SECRET})
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
    assert tags["runner.gpus"] == "none" and "runner.sweep_id" not in tags
    client = _client(uri)
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert top == {"config.yaml", "outputs"}
    outputs = {a.path for a in client.list_artifacts(run.info.run_id, "outputs")}
    assert outputs == {"outputs/model.txt", "outputs/sub"}
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
    assert "0 run(s) exported" in again.stderr and "4 were already there" in again.stderr
    assert len(_runs(uri, "sentiment")) == 5


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_tracking_server_leaves_the_run_going_and_says_so_once(
        project: Path) -> None:
    (project / "train.py").write_text(TRAIN)
    uri = f"http://127.0.0.1:{_closed_port()}"
    res = run_cli("submit", "model=script", "model.path=train.py", cwd=project,
                  env={"MLFLOW_TRACKING_URI": uri})
    assert res.returncode == 0, res.stderr
    rec = Store(project / ".runner").list(limit=1)[0]
    assert rec.state.value == "SUCCEEDED" and rec.summary["accuracy"] == pytest.approx(0.6)
    warnings = [line for line in res.stderr.splitlines() if "mlflow" in line]
    assert len(warnings) == 1, res.stderr
    assert uri in warnings[0] and f"runner export mlflow {rec.id}" in warnings[0]
    assert "Traceback" not in res.stderr


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
