"""Training speed of the sentiment_cnn plugin against a plain-Keras port of the original script.

Part 1 (IMDB-shaped: N reviews x 400 tokens, vocabulary 5000, the faithful settings): the port
and the plugin train on the same data in this process; samples/s of the last epoch's training
(validation excluded), and their ratio.
Part 2 (real text, rt-polarity sentences): the port (every review padded to 400) against the
plugin with model.bucket_by_length=true, same split, same epochs: samples/s and test accuracy.

    .venv/bin/python bench/train_throughput.py --samples 25000 --epochs 2
    .venv/bin/python bench/train_throughput.py --samples 5000 --skip-real   # a quick look
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
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class BenchContext:
    """A RunContext for calling the plugin in-process: metrics and meta kept in memory."""

    def __init__(self, outputs: Path, data: dict[str, Any], seed: int = 0) -> None:
        self.run_id = "bench"
        self.run_dir = self.work_dir = outputs.parent
        self.outputs_dir = outputs
        self.checkpoint_dir = outputs.with_name(outputs.name + "-checkpoints")  # one per run
        self.stop_requested = False
        self.seed = seed
        self.data = data
        self.env: dict[str, Any] = {}
        self.gpus = None
        self.metrics: list[tuple[str, float, int | None]] = []
        self.meta: dict[str, Any] = {}

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        self.metrics.append((name, float(value), step))

    def set_meta(self, key: str, value: Any) -> None:
        self.meta[key] = value

    def on_stop(self, callback: Any) -> None:
        pass  # nothing stops a bench run

    def last(self, name: str) -> float:
        return [v for n, v, _ in self.metrics if n == name][-1]


def port_model(keras: Any, vocab: int, maxlen: int) -> Any:
    """The original script's network, layer by layer, in plain Keras."""
    from keras import layers

    model = keras.Sequential([
        keras.Input(shape=(maxlen,), dtype="int32"),
        layers.Embedding(vocab, 50),
        layers.Dropout(0.2),
        layers.Conv1D(250, 3, padding="valid", activation="relu", strides=1),
        layers.GlobalMaxPooling1D(),
        layers.Dense(250),
        layers.Dropout(0.2),
        layers.Activation("relu"),
        layers.Dense(1),
        layers.Activation("sigmoid"),
    ])
    model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model


def epoch_clock(keras: Any, samples: int) -> Any:
    """A callback that records each epoch's seconds (``.times``) and the samples/s of its
    training part, before validation (``.speeds``), as the plugin measures them."""

    class Clock(keras.callbacks.Callback):  # type: ignore[misc]
        times: list[float] = []  # noqa: RUF012 - replaced per instance below
        speeds: list[float] = []  # noqa: RUF012

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t0, self.train_s = time.perf_counter(), None

        def on_test_begin(self, logs: Any = None) -> None:
            if self.train_s is None:
                self.train_s = time.perf_counter() - self.t0

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.times.append(time.perf_counter() - self.t0)
            self.speeds.append(samples / (self.train_s or self.times[-1]))

    clock = Clock()
    clock.times, clock.speeds = [], []
    return clock


def port_fit(keras: Any, x: Any, y: Any, val: tuple[Any, Any], epochs: int, vocab: int) -> float:
    """Train the port; samples/s of the last epoch's training part (as the plugin measures it)."""
    clock = epoch_clock(keras, len(x))
    model = port_model(keras, vocab, x.shape[1])
    model.fit(x, y, batch_size=32, epochs=epochs, validation_data=val, callbacks=[clock], verbose=2)
    port_fit.model = model  # type: ignore[attr-defined]
    return float(clock.speeds[-1])


def imdb_shaped(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Port and plugin, each fit in a fresh process, alternating A-B-B-A: fits run back to
    back in one process drift by tens of percent (allocator, caches), which would swamp the
    few percent being measured. Medians are compared."""
    if args.one:
        return _one_fit(args, tmp)
    speeds: dict[str, list[float]] = {"port": [], "plugin": []}
    device = None
    order = ["port", "plugin", "plugin", "port"] * max(1, args.rounds // 2)
    for i, who in enumerate(order):
        print(f"== {who} ({i + 1}/{len(order)}): {args.samples} x {args.maxlen} tokens, "
              f"{args.epochs} epochs, fresh process", flush=True)
        out = subprocess.run(
            [sys.executable, __file__, "--one", who, "--samples", str(args.samples),
             "--maxlen", str(args.maxlen), "--epochs", str(args.epochs), "--skip-real"],
            capture_output=True, text=True, check=True).stdout
        result = json.loads(out[out.index("{"):])["imdb_shaped"]
        speeds[who].append(result["speed"])
        device = result.get("device") or device
    port, plugin = statistics.median(speeds["port"]), statistics.median(speeds["plugin"])
    return {"samples": args.samples, "maxlen": args.maxlen, "epochs": args.epochs,
            "port_samples_per_s": round(port, 1), "plugin_samples_per_s": round(plugin, 1),
            "port_each": [round(v, 1) for v in speeds["port"]],
            "plugin_each": [round(v, 1) for v in speeds["plugin"]],
            "ratio": round(plugin / port, 3), "device": device}


def _one_fit(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import numpy as np

    from runner.models.sentiment_cnn import SentimentCNN, SentimentCNNConfig

    rng = np.random.RandomState(0)

    def ragged(n: int) -> Any:
        out = np.empty(n, dtype=object)
        for i in range(n):  # 399 ranks + the start id = 400 tokens, ids below 5000 after the shift
            out[i] = rng.randint(1, 4997, size=args.maxlen - 1).tolist()
        return out

    n_val = max(500, args.samples // 10)
    npz = tmp / "imdb.npz"
    np.savez(npz, x_train=ragged(args.samples), y_train=rng.randint(0, 2, args.samples),
             x_test=ragged(n_val), y_test=rng.randint(0, 2, n_val))
    (tmp / "imdb_word_index.json").write_text("{}")
    data = {"name": "imdb", "path": str(npz), "val_split": 0.0}

    import keras

    from runner.models.sentiment_cnn import datasets

    spec = datasets.parse_spec(data)
    fold = next(datasets.folds(datasets.load_imdb(spec, 5000, args.maxlen, "pre", "pre"), spec, 0,
                               num_words=5000, maxlen=args.maxlen))
    x = datasets.fit_length(fold.x_train, args.maxlen)
    keras.utils.set_random_seed(0)
    if args.one == "port":
        return {"speed": port_fit(keras, x, fold.y_train, (fold.x_val, fold.y_val), args.epochs, 5000)}
    ctx = BenchContext(tmp / "out1", data)
    SentimentCNN(replace(SentimentCNNConfig(), epochs=args.epochs, maxlen=args.maxlen)).run(ctx)
    return {"speed": ctx.last("train_samples_per_s"), "device": ctx.meta.get("device")}


def real_text(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import keras

    from runner.models.sentiment_cnn import SentimentCNN, SentimentCNNConfig, datasets

    data = {"name": "text_files", "path": args.data, "val_split": 0.0, "test_split": 0.1}
    spec = datasets.parse_spec(data)
    fold = next(datasets.folds(datasets.load_text_files(spec), spec, 0, num_words=5000,
                               maxlen=400))
    x = datasets.fit_length(fold.x_train, 400)
    keras.utils.set_random_seed(0)
    print(f"== port on {args.data}: {len(x)} reviews padded to 400, {args.real_epochs} epochs",
          flush=True)
    port = port_fit(keras, x, fold.y_train, (fold.x_val, fold.y_val), args.real_epochs, 5000)
    port_acc = float(port_fit.model.evaluate(fold.x_test, fold.y_test, verbose=0)[1])  # type: ignore[attr-defined]
    print("== plugin, model.bucket_by_length=true", flush=True)
    ctx = BenchContext(tmp / "out2", data)
    SentimentCNN(replace(SentimentCNNConfig(), epochs=args.real_epochs, bucket_by_length=True)).run(ctx)
    plugin = ctx.last("train_samples_per_s")
    return {"data": args.data, "train_reviews": len(x), "epochs": args.real_epochs,
            "port_samples_per_s": round(port, 1), "port_test_accuracy": round(port_acc, 4),
            "bucketed_samples_per_s": round(plugin, 1),
            "bucketed_test_accuracy": round(ctx.last("test_accuracy"), 4),
            "speedup": round(plugin / port, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=25000, help="IMDB-shaped training reviews")
    p.add_argument("--maxlen", type=int, default=400)
    p.add_argument("--epochs", type=int, default=2, help="the last epoch is measured")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"
                                         / "rt-polarity"), help="real reviews for part 2")
    p.add_argument("--real-epochs", type=int, default=3)
    p.add_argument("--one", choices=("port", "plugin"), help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=2,
                   help="A-B-B-A rounds of port and plugin on IMDB-shaped data (medians compared)")
    p.add_argument("--skip-real", action="store_true")
    p.add_argument("--skip-shaped", action="store_true")
    args = p.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as t:
        if not args.skip_shaped:
            results["imdb_shaped"] = imdb_shaped(args, Path(t))
        if not args.skip_real:
            if Path(args.data).is_dir():
                results["real_text"] = real_text(args, Path(t))
            else:
                print(f"skipping part 2: no {args.data}")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
