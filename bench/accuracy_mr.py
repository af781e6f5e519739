"""Cross-validated accuracy of model=sentiment_cnn_multiwidth (Kim 2014's CNN-rand) on the
rt-polarity movie-review sentences, through the real CLI, in a throw-away project.

    .venv/bin/python bench/accuracy_mr.py --folds 10 --epochs 4
    .venv/bin/python bench/accuracy_mr.py --folds 3 --epochs 2 -- model.bucket_by_length=true

Kim (2014) reports 76.1% for CNN-rand with 10-fold cross-validation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"
                                         / "rt-polarity"))
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("overrides", nargs="*", help="more overrides for runner submit")
    args = p.parse_args()
    if not Path(args.data).is_dir():
        print(f"no data at {args.data} (rt-polarity.pos / rt-polarity.neg)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-mr-") as t:
        proj = Path(t)
        (proj / ".runner").mkdir()
        cmd = [sys.executable, "-m", "runner.cli", "submit", "model=sentiment_cnn_multiwidth",
               "data=text_files", f"data.path={args.data}", f"data.cv_folds={args.folds}",
               "data.val_split=0.0", f"model.epochs={args.epochs}", *args.overrides]
        print("$ runner " + " ".join(cmd[3:]), flush=True)
        t0 = time.perf_counter()
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        code = subprocess.call(cmd, cwd=proj, env=env)
        wall = time.perf_counter() - t0
        (run_dir,) = (proj / ".runner" / "runs").iterdir()
        records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
        device = json.loads((run_dir / "worker.json").read_text()).get("meta", {}).get("device")
    folds = [r["value"] for r in records if r["name"] == "fold_test_accuracy"]
    summary = {
        "exit_code": code, "folds": len(folds), "epochs": args.epochs,
        "fold_accuracies": [round(a, 4) for a in folds],
        "mean_accuracy": round(statistics.mean(folds), 4) if folds else None,
        "std_accuracy": round(statistics.stdev(folds), 4) if len(folds) > 1 else None,
        "wall_seconds": round(wall, 1), "device": device,
    }
    print(json.dumps(summary, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
