"""The seed network on the full IMDB reviews, through ``runner submit``, against a plain-Keras
port of the same network trained on the same arrays in a fresh process (same machine, same run).

Data: the 25k/25k aclImdb archive, encoded with the Keras IMDB word index the way Keras'
``imdb.npz`` is (num_words 5000, maxlen 400). The seed's settings throughout: embedding 50,
250 filters of width 3, hidden 250, dropout 0.2, adam, batch 32, 2 epochs. Printed: test
accuracy against the lab's 87.79 % and the Keras example's 0.89, seconds per epoch and
training samples/s, for the runner (padded to 400), the runner with
``model.bucket_by_length=true``, and the port.

    .venv/bin/python bench/imdb_seed.py              # the seed's 2 epochs (many minutes on CPU)
    .venv/bin/python bench/imdb_seed.py --quick      # 2,000 reviews, maxlen 100, 1 epoch
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import submit

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data" / "imdb"
LAB_ACCURACY = 0.8779  # the lab's figure for the seed script
KERAS_ACCURACY = 0.89  # what the Keras IMDB CNN example says it reaches after 2 epochs
SEED = 0


def _data(args: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "imdb", "path": str(args.data), "val_split": 0.0}
    if args.word_index:
        data["word_index"] = str(args.word_index)
    if args.max_samples:
        data["max_samples"] = args.max_samples
    return data


def through_runner(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """One ``runner submit`` in a throw-away project; its metrics from the run directory."""
    data = _data(args)
    run = submit("model=sentiment_cnn", "data=imdb",
                 *[f"data.{k}={v}" for k, v in data.items() if k != "name"],
                 f"model.epochs={args.epochs}", f"model.maxlen={args.maxlen}", f"seed={SEED}",
                 *extra, prefix="bench-imdb-")
    if run.code != 0:
        raise SystemExit(f"runner submit failed with exit code {run.code}")
    return {"test_accuracy": run.values("test_accuracy")[-1],
            "epoch_seconds": run.values("epoch_seconds"),
            "train_samples_per_s": run.values("train_samples_per_s")[-1],
            "wall_seconds": run.wall, "dataset": run.meta.get("dataset"),
            "device": run.meta.get("device")}


def port_in_fresh_process(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one-port", "--data", str(args.data),
           "--epochs", str(args.epochs), "--maxlen", str(args.maxlen)]
    if args.word_index:
        cmd += ["--word-index", str(args.word_index)]
    if args.max_samples:
        cmd += ["--max-samples", str(args.max_samples)]
    print("$ plain-Keras port, fresh process", flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    sys.stderr.write(out.stderr[-4000:])
    if out.returncode != 0:
        raise SystemExit(f"the port failed with exit code {out.returncode}")
    return dict(json.loads(out.stdout[out.stdout.index("{"):]))


def one_port(args: argparse.Namespace) -> dict[str, Any]:
    """The port on the arrays the plugin trains on: the same loader, split and seed."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    sys.path.insert(0, str(HERE))
    from train_throughput import epoch_clock, port_model  # the seed's network, layer by layer

    from runner.models.sentiment_cnn import datasets

    t0 = time.perf_counter()
    spec = datasets.parse_spec(_data(args))
    source = datasets.load_imdb(spec, 5000, args.maxlen, "pre", "pre")
    fold = next(datasets.folds(source, spec, SEED, num_words=5000, maxlen=args.maxlen))
    x = datasets.fit_length(fold.x_train, args.maxlen)
    load_s = time.perf_counter() - t0
    print(f"loaded {len(x)} train / {len(fold.y_test)} test reviews in {load_s:.1f} s",
          file=sys.stderr, flush=True)
    keras.utils.set_random_seed(SEED)
    clock = epoch_clock(keras, len(x))
    model = port_model(keras, 5000, args.maxlen)
    # the seed validates on the test split every epoch, as the plugin does with val_split 0
    model.fit(x, fold.y_train, batch_size=32, epochs=args.epochs,
              validation_data=(fold.x_test, fold.y_test), callbacks=[clock], verbose=2)
    acc = float(model.evaluate(fold.x_test, fold.y_test, batch_size=256, verbose=0)[1])
    return {"test_accuracy": acc, "epoch_seconds": clock.times,
            "train_samples_per_s": clock.speeds[-1],
            "load_seconds": load_s}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=SHARED / "aclImdb.tar.xz",
                   help="imdb.npz, an aclImdb archive or tree")
    p.add_argument("--word-index", type=Path, default=None,
                   help="imdb_word_index.json (default: the one next to --data)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--maxlen", type=int, default=400)
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 2,000 training reviews, maxlen 100, 1 epoch")
    p.add_argument("--skip-bucket", action="store_true")
    p.add_argument("--one-port", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.epochs, args.maxlen, args.max_samples = 1, 100, args.max_samples or 2000
    if args.word_index is None and (args.data.parent / "imdb_word_index.json").is_file():
        args.word_index = args.data.parent / "imdb_word_index.json"
    if not args.data.exists():
        print(f"no data at {args.data} (aclImdb.tar.xz with imdb_word_index.json beside it)",
              file=sys.stderr)
        return 2
    if args.one_port:
        print(json.dumps(one_port(args)))
        return 0
    rows: dict[str, dict[str, Any]] = {}
    rows["runner"] = through_runner(args, [])
    if not args.skip_bucket:
        rows["runner, bucket_by_length"] = through_runner(args, ["model.bucket_by_length=true"])
    rows["plain Keras port"] = port_in_fresh_process(args)
    device = rows["runner"].get("device") or {}
    dataset = rows["runner"].get("dataset") or {}
    print(f"\nIMDB {dataset.get('train')} train / {dataset.get('test')} test reviews "
          f"({dataset.get('source')}, {dataset.get('encoding')}), {args.epochs} epochs, maxlen "
          f"{args.maxlen}; {device.get('framework')} {device.get('version')}, "
          f"{'GPU ' + device['gpus'][0]['name'] if device.get('gpus') else 'CPU'}")
    print(f"{'':28} {'test acc':>9} {'vs 87.79 %':>11} {'vs 0.89':>8} {'s/epoch':>8} "
          f"{'samples/s':>10}")
    for name, r in rows.items():
        acc = r["test_accuracy"]
        print(f"{name:28} {acc:9.4f} {100 * (acc - LAB_ACCURACY):+10.2f}pt "
              f"{acc - KERAS_ACCURACY:+8.4f} {statistics.mean(r['epoch_seconds']):8.1f} "
              f"{r['train_samples_per_s']:10.1f}")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk not in ("device", "dataset")}
                      for k, v in rows.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
