"""The sentiment CNN checkpoints every epoch and stops on the signal; ``runner resume``
trains only the epochs that are left, and its learning curve goes on. Tiny generated data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.test_sentiment_data import write_pos_neg
from tests.test_sentiment_train import SMALL, metrics, runner

pytestmark = [pytest.mark.tf, pytest.mark.slow]

EPOCHS = 6


def test_cancel_after_epoch_two_then_resume_trains_the_rest_only(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    (proj / ".runner").mkdir(parents=True)
    cache = tmp_path / "cache"
    data = write_pos_neg(tmp_path / "data", n=3000)
    args = ["model=sentiment_cnn", "data=text_files", f"data.path={data}", *SMALL,
            f"model.epochs={EPOCHS}", "model.batch_size=8"]
    res = runner(["submit", "--detach", *args], proj, cache)
    assert res.returncode == 0, res.stderr
    first = res.stderr.split("run ", 1)[1].split(":", 1)[0]
    run_dir = proj / ".runner" / "runs" / first
    deadline = time.monotonic() + 300
    while not (run_dir / "metrics.jsonl").exists() or len(metrics(run_dir).get("val_loss", [])) < 2:
        assert time.monotonic() < deadline, (run_dir / "log.txt").read_text()
        time.sleep(0.1)
    res = runner(["cancel", first], proj, cache)
    assert res.returncode == 0 and f"run {first}: CANCELLED" in res.stderr, res.stderr
    done = [s for s, _ in metrics(run_dir)["val_loss"]]
    assert done[:2] == [1, 2] and len(done) < EPOCHS, "the run ended before the cancel"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "CANCELLED" and "checkpoint saved" in status["message"]
    meta = json.loads((run_dir / "checkpoints" / "fold0" / "training_metadata.json").read_text())
    assert meta["epoch"] == done[-1]  # the checkpoint holds every epoch that was recorded

    res = runner(["resume", first], proj, cache, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    second = res.stderr.split("run ", 1)[1].split(":", 1)[0]
    child = proj / ".runner" / "runs" / second
    steps = [s for s, _ in metrics(child)["val_loss"]]
    assert steps == list(range(1, EPOCHS + 1)), steps  # the curve goes on; no epoch twice
    own = [json.loads(x) for x in (child / "metrics.jsonl").read_text().splitlines()]
    trained = sorted({m["step"] for m in own if m["name"] == "epoch_seconds"
                      and m["time"] > status["time"]})
    assert trained == list(range(done[-1] + 1, EPOCHS + 1)), trained  # only what was left
    assert "test_accuracy" in metrics(child)
    assert (child / "outputs" / "model.keras").stat().st_size > 0
