"""Cross-validated accuracy of model=sentiment_cnn_multiwidth (Kim 2014's CNN-rand) on the
rt-polarity movie-review sentences, through the real CLI, in a throw-away project.

    .venv/bin/python bench/accuracy_mr.py --folds 10 --epochs 4
    .venv/bin/python bench/accuracy_mr.py --folds 3 --epochs 2 -- model.bucket_by_length=true

Kim (2014) reports 76.1% for CNN-rand with 10-fold cross-validation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from _common import submit


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
    run = submit("model=sentiment_cnn_multiwidth", "data=text_files", f"data.path={args.data}",
                 f"data.cv_folds={args.folds}", "data.val_split=0.0",
                 f"model.epochs={args.epochs}", *args.overrides, prefix="bench-mr-")
    code, wall, device = run.code, run.wall, run.meta.get("device")
    folds = run.values("fold_test_accuracy")
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
