"""Build, train, evaluate and save the network; load it again to score text.

Imported only inside a run or ``predict``: Keras is imported in :func:`_keras`, after the
Keras backend has been chosen (it can be chosen only before the first import).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from runner.errors import UserError
from runner.model import ModelError, RunContext
from runner.models.sentiment_cnn import checkpoints, datasets
from runner.models.sentiment_cnn.model import SentimentCNNConfig, missing_framework
from runner.models.sentiment_cnn.vocab import FILE_NAME as VOCAB_FILE
from runner.models.sentiment_cnn.vocab import Vocabulary, fit_length

MODEL_FILE = "model.keras"
CURVE_FILE = "learning_curve.png"
PREDICTIONS_FILE = "test_predictions.tsv"
TENSORBOARD_DIR = "tensorboard"  # under outputs/: the logs `runner tensorboard RUN` shows
_EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def _keras(backend: str | None) -> Any:
    """Import Keras on ``backend`` (None: whatever KERAS_BACKEND says, else tensorflow).

    Keras reads KERAS_BACKEND once, at its first import, so nothing here (nor in the loaders)
    imports Keras or a framework before this runs."""
    if "keras" not in sys.modules:
        if backend:
            os.environ["KERAS_BACKEND"] = backend
        else:
            os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import keras
    except ModuleNotFoundError as e:  # Keras, or the backend it was asked for
        raise ModelError(missing_framework(e.name, "training")
                         + f" (KERAS_BACKEND={os.environ.get('KERAS_BACKEND')})") from None
    except Exception as e:  # a backend that is installed but broken fails inside Keras' import
        raise ModelError(f"cannot import Keras with backend {os.environ.get('KERAS_BACKEND')!r}: "
                         f"{e}; valid: tensorflow, jax, torch (whichever is installed)") from None
    if backend and keras.backend.backend() != backend:
        raise ModelError(f"model.keras_backend={backend}, but Keras was already loaded in this "
                         f"process with backend {keras.backend.backend()!r}")
    return keras


# -- device ------------------------------------------------------------------------------------

def device_info(keras: Any) -> dict[str, Any]:
    """The framework, its version and the GPUs it sees (name, memory); ``gpus`` is [] on CPU."""
    from runner.worker import gpu_info  # nvidia-smi's view: the only place that names total memory

    backend = keras.backend.backend()
    smi = gpu_info()
    info: dict[str, Any] = {"framework": backend, "version": "?", "keras": keras.__version__,
                            "keras_backend": backend, "gpus": []}
    if backend == "tensorflow":
        import tensorflow as tf

        info["version"] = tf.__version__
        for i, dev in enumerate(tf.config.list_physical_devices("GPU")):
            details = tf.config.experimental.get_device_details(dev)
            cc = details.get("compute_capability")
            info["gpus"].append({
                "device": dev.name,
                "name": details.get("device_name") or (smi[i]["name"] if i < len(smi) else "?"),
                "memory": smi[i]["memory"] if i < len(smi) else "?",
                "compute_capability": ".".join(map(str, cc)) if cc else None,
            })
    elif backend == "jax":
        import jax

        info["version"] = jax.__version__
        for d in jax.devices():
            if d.platform == "gpu":
                stats = d.memory_stats() or {}
                limit = stats.get("bytes_limit")
                info["gpus"].append({"device": str(d), "name": d.device_kind,
                                     "memory": f"{limit / 2**20:.0f} MiB" if limit else "?"})
    elif backend == "torch":
        import torch

        info["version"] = torch.__version__
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append({"device": f"cuda:{i}", "name": p.name,
                                 "memory": f"{p.total_memory / 2**20:.0f} MiB"})
    return info


def _device_line(info: dict[str, Any]) -> str:
    gpus = "; ".join(f"{g['device']}: {g['name']} ({g['memory']})" for g in info["gpus"])
    return (f"[sentiment_cnn] {info['framework']} {info['version']}, keras {info['keras']}: "
            + (f"found GPU {gpus}" if gpus else "no GPU visible, training on CPU"))


# -- the network -------------------------------------------------------------------------------

def build(keras: Any, c: SentimentCNNConfig, num_words: int, seq_len: int | None) -> Any:
    """The network of ``c`` over ids below ``num_words``; ``seq_len`` None takes any length."""
    from keras import layers

    inputs = keras.Input(shape=(seq_len,), dtype="int32", name="token_ids")
    x = layers.Embedding(num_words, c.embedding_dim, name="embedding")(inputs)
    if c.embedding_dropout:
        x = layers.Dropout(c.embedding_dropout)(x)
    pooled = [
        layers.GlobalMaxPooling1D(name=f"max_over_time_{k}")(
            layers.Conv1D(c.filters, k, padding="valid", activation="relu", name=f"conv_{k}")(x))
        for k in c.kernel_sizes
    ]
    x = pooled[0] if len(pooled) == 1 else layers.Concatenate(name="features")(pooled)
    if c.hidden_dims:
        x = layers.Dense(c.hidden_dims, name="hidden")(x)
        if c.dropout:
            x = layers.Dropout(c.dropout)(x)
        x = layers.Activation("relu")(x)
    elif c.dropout:
        x = layers.Dropout(c.dropout)(x)
    constraint = keras.constraints.MaxNorm(c.max_norm) if c.max_norm else None
    x = layers.Dense(1, kernel_constraint=constraint, name="score")(x)
    outputs = layers.Activation("sigmoid")(x)
    model = keras.Model(inputs, outputs, name="sentiment_cnn")
    optimizer = {"adam": keras.optimizers.Adam, "adadelta": keras.optimizers.Adadelta,
                 "rmsprop": keras.optimizers.RMSprop, "sgd": keras.optimizers.SGD}[c.optimizer]
    model.compile(optimizer=optimizer(learning_rate=c.learning_rate), loss="binary_crossentropy",
                  metrics=["accuracy"])
    return model


def _bucketed(keras: Any, x_ids: list[list[int]], y: np.ndarray, c: SentimentCNNConfig,
              seed: int) -> Any:
    """Training batches of reviews of similar length, each padded only to its longest review
    (at least the widest filter), reshuffled every epoch. Truncation is the same as
    :func:`fit_length` at ``maxlen``, so long reviews keep the same tokens as without buckets.

    TensorFlow gets a ``tf.data`` pipeline with a free length; JAX and PyTorch a Keras
    ``PyDataset``, its widths rounded up to a multiple of 16 (JAX compiles once per shape)."""
    keep = (lambda s: s[-c.maxlen:]) if c.truncating == "pre" else (lambda s: s[: c.maxlen])
    seqs = [keep(s) for s in x_ids]
    lengths = np.array([len(s) for s in seqs], dtype="float64")
    labels = y.astype("float32")
    rng = np.random.RandomState(seed % (2**32))
    floor = max(c.kernel_sizes)
    n_batches = math.ceil(len(seqs) / c.batch_size)
    backend = keras.backend.backend()
    step = 1 if backend == "tensorflow" else 16

    def epoch() -> list[np.ndarray]:
        # a little noise in the sort key: batches differ from epoch to epoch
        order = np.argsort(lengths + rng.uniform(0, 3, len(lengths)), kind="stable")
        chunks = [order[i:i + c.batch_size] for i in range(0, len(order), c.batch_size)]
        return [chunks[j] for j in rng.permutation(len(chunks))]

    def batch(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        width = max(floor, int(lengths[idx].max()))
        width = min(max(c.maxlen, floor), -(-width // step) * step)
        return fit_length([seqs[i] for i in idx], width, c.padding, c.truncating), labels[idx]

    if backend != "tensorflow":
        class Buckets(keras.utils.PyDataset):  # type: ignore[name-defined,misc]
            def __init__(self) -> None:
                super().__init__()
                self.chunks = epoch()

            def __len__(self) -> int:
                return n_batches

            def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
                return batch(self.chunks[i])

            def on_epoch_end(self) -> None:
                self.chunks = epoch()

        return Buckets()

    import tensorflow as tf  # tf.data carries batches whose length varies

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for idx in epoch():
            yield batch(idx)

    ds = tf.data.Dataset.from_generator(batches, output_signature=(
        tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((None,), tf.float32)))
    return ds.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(2)


def _recorder(keras: Any, ctx: RunContext, n_train: int, step0: int, history: dict[str, list[float]]
              ) -> Any:
    class Recorder(keras.callbacks.Callback):  # type: ignore[name-defined,misc]
        """Writes each epoch's metrics to the ledger as the epoch ends, with its speed."""

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t0 = time.perf_counter()
            self.train_s: float | None = None

        def on_test_begin(self, logs: Any = None) -> None:
            if self.train_s is None:  # validation starts: the training part of the epoch is over
                self.train_s = time.perf_counter() - self.t0

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            now = time.perf_counter()
            train_s = self.train_s if self.train_s is not None else now - self.t0
            step = step0 + epoch + 1
            for name in _EPOCH_METRICS:
                if logs and name in logs:
                    ctx.log_metric(name, float(logs[name]), step)
                    history.setdefault(name, []).append(float(logs[name]))
            ctx.log_metric("epoch_seconds", now - self.t0, step)
            ctx.log_metric("train_samples_per_s", n_train / train_s, step)

    return Recorder()


def _tensorboard(keras: Any, out: Path, fold: int) -> list[Any]:
    """Keras's TensorBoard callback writing into ``outputs/tensorboard`` (one folder per
    cross-validation fold); none where it cannot write: it needs TensorFlow's summaries, which
    need the tensorboard package (TensorFlow 2.21 no longer installs it; an env that lacks it
    still trains, with one line saying why there are no TensorBoard logs)."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        return []
    if importlib.util.find_spec("tensorboard") is None:
        if fold <= 1:
            print("[sentiment_cnn] no TensorBoard logs: the env lacks the tensorboard package "
                  "(add it to env.requirements for `runner tensorboard`)", flush=True)
        return []
    log_dir = out / TENSORBOARD_DIR / (f"fold{fold}" if fold else "")
    return [keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False, profile_batch=0)]


# -- a run ---------------------------------------------------------------------------------------

def _load(c: SentimentCNNConfig, spec: datasets.DataSpec) -> datasets.Source:
    if spec.name == "imdb":
        return datasets.load_imdb(spec, c.num_words, c.maxlen, c.padding, c.truncating)
    return datasets.load_text_files(spec)


def train(c: SentimentCNNConfig, spec: datasets.DataSpec, ctx: RunContext) -> int:
    keras = _keras(c.keras_backend)
    device = device_info(keras)
    ctx.set_meta("device", device)
    print(_device_line(device), flush=True)
    if ctx.env.get("require_gpu") and not device["gpus"]:
        raise ModelError(f"env.require_gpu is true but {device['framework']} {device['version']} "
                         "sees no GPU (is the CUDA build of the framework installed?)")
    keras.utils.set_random_seed(ctx.seed)
    source = _load(c, spec)
    out = Path(ctx.outputs_dir)
    out.mkdir(parents=True, exist_ok=True)
    histories: list[tuple[int, dict[str, list[float]]]] = []
    results: list[tuple[float, float]] = []
    model: Any = None
    fold: datasets.Fold | None = None
    for fold in datasets.folds(source, spec, ctx.seed, num_words=c.num_words, maxlen=c.maxlen,
                               padding=c.padding, truncating=c.truncating):
        tag = f"fold {fold.number}/{spec.cv_folds}: " if fold.number else ""
        sizes = fold.sizes
        ctx.set_meta("dataset", {"source": source.describe, **sizes, "vocabulary": fold.vocabulary.num_words,
                              "cv_folds": spec.cv_folds, **source.facts})
        print(f"[sentiment_cnn] {tag}{source.describe}: {sizes['train']} train, {sizes['val']} "
              f"validation, {sizes['test']} test reviews; vocabulary {fold.vocabulary.num_words}",
              flush=True)
        if fold.number:
            keras.utils.set_random_seed(ctx.seed + fold.number)
        model = build(keras, c, fold.vocabulary.num_words, None if c.bucket_by_length else c.maxlen)
        step0 = (fold.number - 1) * c.epochs if fold.number else 0
        # a resumed run's curve starts with the epochs its checkpoint holds
        history = checkpoints.history_so_far(ctx, fold.number, step0, _EPOCH_METRICS)
        recorder = _recorder(keras, ctx, sizes["train"], step0, history)
        board = _tensorboard(keras, out, fold.number)
        saving = checkpoints.callbacks(keras, ctx, fold.number)  # after the others
        if c.bucket_by_length:
            model.fit(_bucketed(keras, fold.x_train, fold.y_train, c, ctx.seed + fold.number),
                      epochs=c.epochs, validation_data=(fold.x_val, fold.y_val), shuffle=False,
                      callbacks=[recorder, *board, *saving], verbose=c.verbose)  # the batches come shuffled
        else:
            x_train = fit_length(fold.x_train, c.maxlen, c.padding, c.truncating)
            model.fit(x_train, fold.y_train, batch_size=c.batch_size, epochs=c.epochs,
                      validation_data=(fold.x_val, fold.y_val), callbacks=[recorder, *board, *saving],
                      verbose=c.verbose)
        loss, acc = model.evaluate(fold.x_test, fold.y_test, batch_size=256, verbose=0)[:2]
        results.append((float(loss), float(acc)))
        histories.append((fold.number, history))
        if fold.number:
            ctx.log_metric("fold_test_accuracy", acc, fold.number)
            print(f"[sentiment_cnn] fold {fold.number}: test accuracy {acc:.4f}", flush=True)
    assert model is not None and fold is not None
    accs = np.array([a for _, a in results])
    if spec.cv_folds:
        ctx.log_metric("cv_mean_accuracy", float(accs.mean()))
        ctx.log_metric("cv_std_accuracy", float(accs.std(ddof=1)))
        print(f"[sentiment_cnn] {spec.cv_folds}-fold cross-validation: accuracy "
              f"{accs.mean():.4f} ± {accs.std(ddof=1):.4f}", flush=True)
    ctx.log_metric("test_loss", float(np.mean([lo for lo, _ in results])))
    ctx.log_metric("test_accuracy", float(accs.mean()))
    # the last model (in cross-validation: the last fold's) is the one predict uses
    model.save(out / MODEL_FILE)
    fold.vocabulary.save(out)
    if fold.test_texts is not None:
        scores = model.predict(fold.x_test, batch_size=256, verbose=0)[:, 0]
        _write_predictions(out / PREDICTIONS_FILE, fold.test_texts, fold.y_test, scores)
    _plot(out / CURVE_FILE, histories, c.epochs)
    print(f"[sentiment_cnn] saved {MODEL_FILE}, {VOCAB_FILE}, {CURVE_FILE} in {out}", flush=True)
    return 0


def _write_predictions(path: Path, texts: list[str], labels: np.ndarray, scores: np.ndarray) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write("score\tlabel\ttext\n")
        for t, y, s in zip(texts, labels, scores, strict=True):
            f.write(f"{float(s):.7g}\t{int(y)}\t{' '.join(t.split())}\n")


def _plot(path: Path, histories: list[tuple[int, dict[str, list[float]]]], epochs: int) -> None:
    try:
        import matplotlib
    except ImportError:
        print("[sentiment_cnn] warning: matplotlib is not installed; no learning curve "
              "(pip install 'runner[tf]')", flush=True)
        return
    matplotlib.use("Agg")  # files only: a run has no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for number, h in histories:
        suffix = f" (fold {number})" if number else ""
        alpha = 1.0 if len(histories) == 1 else 0.6
        for ax, name in zip(axes, ("loss", "accuracy"), strict=True):
            for key, style in ((name, "-"), (f"val_{name}", "--")):
                if key in h:
                    ax.plot(range(1, len(h[key]) + 1), h[key], style, alpha=alpha,
                            label=("validation " if key.startswith("val_") else "training ")
                            + name + suffix)
    for ax, name in zip(axes, ("loss", "accuracy"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_xticks(range(1, epochs + 1))
        ax.grid(alpha=0.3)
        if len(histories) <= 3:
            ax.legend(fontsize="small")
    fig.suptitle("sentiment_cnn learning curve")
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- predict -----------------------------------------------------------------------------------

def predict(outputs_dir: Path, inputs: list[str]) -> list[float]:
    missing = [n for n in (MODEL_FILE, VOCAB_FILE) if not (outputs_dir / n).is_file()]
    if missing:
        raise UserError(f"{outputs_dir} has no {' or '.join(missing)}.",
                        "predict needs the outputs of a finished sentiment_cnn run "
                        "(fetched to this machine).")
    vocab = Vocabulary.load(outputs_dir)
    if vocab.source == "imdb" and not vocab.words:
        raise UserError(f"the run in {outputs_dir.parent} trained on IMDB without its word index, "
                        "so raw text cannot be mapped to its ids.",
                        "train again with data.word_index=/path/to/imdb_word_index.json "
                        "(or that file next to data.path).")
    if not inputs:
        return []
    try:
        keras = _keras(None)
    except ModelError as e:  # on the client, where a missing framework is the user's to fix
        raise UserError(str(e)) from None
    model = keras.saving.load_model(outputs_dir / MODEL_FILE)
    scores = model.predict(vocab.encode(inputs), batch_size=256, verbose=0)
    return [float(s) for s in np.asarray(scores)[:, 0]]
