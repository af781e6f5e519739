"""The ``sentiment_cnn`` model class and its configuration schema (imported with the plugin,
so nothing heavy here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from runner.errors import UserError
from runner.model import Model, RunContext
from runner.models.sentiment_cnn import spec as data_spec

BACKENDS = ("tensorflow", "jax", "torch")
OPTIMIZERS = ("adam", "adadelta", "rmsprop", "sgd")
#: how a machine without the frameworks gets them (the extra ``predict`` and training need)
INSTALL = "pip install 'runner[tf]' (from a checkout: pip install -e '.[tf]')"


@dataclass
class SentimentCNNConfig:
    """Schema of ``conf/model/sentiment_cnn*.yaml``; the defaults are the original network."""

    name: str = "sentiment_cnn"  # the registered model
    num_words: int | None = 5000  # vocabulary: the most frequent words kept; null = all (raw text)
    maxlen: int = 400  # reviews are padded/truncated to this many tokens
    padding: str = "pre"  # where short reviews get zeros: pre | post
    truncating: str = "pre"  # which end of a long review is cut: pre (keeps the last tokens) | post
    embedding_dim: int = 50  # size of each word vector
    embedding_dropout: float = 0.2  # dropout on the word vectors; 0 = none
    filters: int = 250  # feature maps per filter width
    kernel_sizes: list[int] = field(default_factory=lambda: [3])  # filter widths, one Conv1D each
    hidden_dims: int = 250  # Dense layer after max-pooling; 0 = straight to the output
    dropout: float = 0.2  # dropout before the output (after the hidden layer when there is one)
    max_norm: float = 0.0  # L2 bound on the output layer's weight vectors; 0 = none
    optimizer: str = "adam"  # adam | adadelta | rmsprop | sgd
    learning_rate: float = 0.001  # the optimizer's step size
    batch_size: int = 32  # reviews per gradient step
    epochs: int = 2  # passes over the training split
    bucket_by_length: bool = False  # batches of similar-length reviews, padded only as needed
    keras_backend: str = "tensorflow"  # tensorflow | jax | torch (where installed)
    verbose: int = 2  # Keras' fit output: 0 silent, 1 progress bar, 2 one line per epoch


class SentimentCNN(Model):
    """A 1-D convolutional network over word embeddings with max-over-time pooling.

    Defaults: the Keras IMDB example (one filter width, a hidden layer); with several
    ``kernel_sizes`` and no hidden layer it is the CNN-rand of Kim (2014).
    """

    name = "sentiment_cnn"
    Config = SentimentCNNConfig
    requires = ("tensorflow", "keras>=3", "matplotlib")
    graceful_stop = True  # stops at the next batch, its last epoch checkpointed (checkpoints.py)
    #: data.path: imdb.npz, an aclImdb archive or tree, or text_files' file/folder/archive
    data_paths: ClassVar[Mapping[str, str]] = {"path": "any", "word_index": "file"}

    config: SentimentCNNConfig

    def describe(self) -> str:
        c = self.config
        widths = ",".join(str(k) for k in c.kernel_sizes)
        return f"sentiment_cnn {c.filters}x[{widths}] emb {c.embedding_dim}, {c.epochs} epochs"

    def validate(self, project_root: Path, data: dict[str, Any]) -> None:
        _validate_data(data)
        c = self.config
        where = f"model={c.name}"

        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise UserError(f"{where}: model.{key}={getattr(c, key)!r} {what}.")

        for key in ("maxlen", "embedding_dim", "filters", "batch_size", "epochs"):
            need(isinstance(getattr(c, key), int) and getattr(c, key) > 0, key,
                 "must be a positive integer")
        need(c.num_words is None or c.num_words >= 3, "num_words", "must be null (all) or >= 3")
        need(c.hidden_dims >= 0, "hidden_dims", "must be >= 0 (0 = no hidden layer)")
        need(bool(c.kernel_sizes) and all(isinstance(k, int) and 0 < k <= c.maxlen
                                          for k in c.kernel_sizes),
             "kernel_sizes", f"must be a non-empty list of widths between 1 and maxlen ({c.maxlen})")
        for key in ("embedding_dropout", "dropout"):
            need(0 <= getattr(c, key) < 1, key, "must be in [0, 1)")
        need(c.max_norm >= 0, "max_norm", "must be >= 0 (0 = no bound)")
        need(c.learning_rate > 0, "learning_rate", "must be > 0")
        need(c.padding in ("pre", "post"), "padding", "is not valid; valid: pre, post")
        need(c.truncating in ("pre", "post"), "truncating", "is not valid; valid: pre, post")
        need(c.optimizer in OPTIMIZERS, "optimizer", f"is not valid; valid: {', '.join(OPTIMIZERS)}")
        need(c.keras_backend in BACKENDS, "keras_backend",
             f"is not valid; valid: {', '.join(BACKENDS)}")

    def run(self, ctx: RunContext) -> int:
        # the data paths here are the worker's in-target paths: their existence is checked now
        spec = data_spec.parse_spec(ctx.data)  # a bad data key fails here, before NumPy loads
        # Keras and the backend (and NumPy): only a run that trains pays for importing them
        from runner.models.sentiment_cnn import training

        return training.train(self.config, spec, ctx)

    @classmethod
    def format_prediction(cls, value: Any) -> str:
        """``0.9731  positive``: the score and what it means (1 = positive)."""
        return f"{float(value):.4f}  {'positive' if float(value) >= 0.5 else 'negative':8}"

    @classmethod
    def predict(cls, outputs_dir: Path, inputs: list[str]) -> list[float]:
        """A score in [0, 1] per review (1 = positive), encoded exactly as in training."""
        try:  # NumPy, Keras and its backend: only when scoring, and maybe not on this client
            import numpy  # noqa: F401

            from runner.models.sentiment_cnn import training
        except ModuleNotFoundError as e:
            raise UserError(missing_framework(e.name, "predict")) from None
        return training.predict(Path(outputs_dir), list(inputs))


def missing_framework(module: str | None, what: str) -> str:
    """One line: which module is missing for ``what``, and the install command."""
    return (f"sentiment_cnn {what} needs NumPy, Keras and a Keras backend (TensorFlow, JAX or "
            f"PyTorch), and '{module or '?'}' is not installed here: {INSTALL}")


def _validate_data(data: dict[str, Any]) -> None:
    """Check the data config on the client, without NumPy (a client may have no framework).
    Paths are the core's: it resolves, checks and ships each key of ``data_paths``; whether
    the data is readable is checked on the target. One addition: the IMDB word index lying
    next to ``data.path`` here becomes ``data.word_index``, so that it travels too."""
    try:
        spec = data_spec.parse_spec(data, on_target=False)
    except data_spec.DataError as e:
        raise UserError(e.message + ".", e.hint) from None
    path = spec.path
    if spec.name != "imdb" or spec.word_index or not isinstance(path, str) or not path:
        return
    if path.startswith("target:"):  # on the target host already: the loader looks there
        return
    beside = Path(path).expanduser().parent / data_spec.WORD_INDEX_FILE
    if (Path.cwd() / beside).is_file():
        data["word_index"] = str(beside)
