"""TensorBoard through the CLI: the sentiment CNN writes its logs into its outputs, and
`runner tensorboard --sweep S` serves them on loopback under each run's id and swept value,
prints the URL, and stops when its process is signalled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from runner.store import Store

from .conftest import run_cli
from .test_sentiment_data import write_pos_neg
from .test_sentiment_train import SMALL


def _get(url: str, deadline: float) -> object:
    """The JSON at ``url``, once the server answers (until ``deadline``)."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.tf
def test_a_sweep_of_the_sentiment_cnn_is_served_by_tensorboard(project: Path, tmp_path: Path) -> None:
    pytest.importorskip("keras")
    pytest.importorskip("tensorboard")
    data = write_pos_neg(tmp_path / "data", n=200)
    small = [a for a in SMALL if not a.startswith(("model.epochs", "model.filters"))]
    res = run_cli("submit", "-m", "model=sentiment_cnn", "data=text_files", f"data.path={data}",
                  *small, "model.epochs=2", "model.filters=8,16", cwd=project, timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    records = Store(project / ".runner").list()
    sweep_id = records[0].sweep_id
    assert sweep_id and len(records) == 2
    for rec in records:
        logs = rec.run_dir / "outputs" / "tensorboard"
        assert list((logs / "train").glob("events.out.tfevents.*")), rec.id
        assert list((logs / "validation").glob("events.out.tfevents.*")), rec.id

    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "tensorboard", "--sweep", sweep_id],
                            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=dict(os.environ))
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("TensorBoard over 2 run(s) at http://127.0.0.1:"), line
        url = line.split(" at ", 1)[1].split()[0]
        assert f"(process {proc.pid};" in line  # the process to stop is the one started
        runs = _get(url + "data/runs", time.monotonic() + 120)
        by_id = {rec.id: rec for rec in records}
        filters = {rec.id: json.loads((rec.run_dir / "request.json").read_text())
                   ["model_config"]["filters"] for rec in records}
        assert sorted(runs) == sorted(  # type: ignore[arg-type]
            f"{rid}_(model.filters={filters[rid]})/{part}"
            for rid in by_id for part in ("train", "validation"))
        tags = _get(url + "data/plugin/scalars/tags", time.monotonic() + 30)
        assert isinstance(tags, dict)
        assert all("epoch_loss" in t for name, t in tags.items() if name.endswith("/train"))
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)


SCRIPT = "import runner\nrunner.log_metric('acc', 0.5)\n"


def test_runs_without_logs_are_an_error_that_says_where_logs_come_from(project: Path) -> None:
    (project / "fit.py").write_text(SCRIPT)
    res = run_cli("submit", "model=script", "model.path=fit.py", cwd=project)
    assert res.returncode == 0, res.stderr
    rec = Store(project / ".runner").list(limit=1)[0]
    res = run_cli("tensorboard", rec.id, cwd=project)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: this run wrote no TensorBoard logs")
    assert "outputs/tensorboard" in res.stderr and "runner fetch RUN" in res.stderr
    res = run_cli("tensorboard", cwd=project)
    assert res.returncode == 2 and "runner tensorboard needs run ids, --sweep SWEEP" in res.stderr
    res = run_cli("tensorboard", "--sweep", "s000000-000000-zzzz", cwd=project)
    assert res.returncode == 2 and "no sweep 's000000-000000-zzzz'" in res.stderr
