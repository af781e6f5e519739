"""The ``sentiment_cnn`` model class and its configuration schema (imported with the plugin,
so nothing heavy here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import UserError
from runner.model import Model, RunContext

BACKENDS = ("tensorflow", "jax", "torch")
OPTIMIZERS = ("adam", "adadelta", "rmsprop", "sgd")


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
        # NumPy-based loaders: imported on the target, inside a run, never with the plugin
        from runner.models.sentiment_cnn import datasets

        spec = datasets.parse_spec(ctx.data)  # a bad data key fails here, before Keras loads
        # Keras and TensorFlow: only a run that trains pays for importing them
        from runner.models.sentiment_cnn import training

        return training.train(self.config, spec, ctx)

    @classmethod
    def predict(cls, outputs_dir: Path, inputs: list[str]) -> list[float]:
        """A score in [0, 1] per review (1 = positive), encoded exactly as in training."""
        # Keras and TensorFlow: only when scoring
        from runner.models.sentiment_cnn import training

        return training.predict(Path(outputs_dir), list(inputs))


def _validate_data(data: dict[str, Any]) -> None:
    """Check the data keys on the client and make a relative ``data.path`` absolute (the run
    works in a snapshot of the project, not in the user's directory). Whether the path exists
    is checked on the target, where the data must be."""
    # the key tables live with the loaders; importing them costs NumPy (~0.1 s), not Keras
    from runner.models.sentiment_cnn import datasets

    name = data.get("name")
    if name not in datasets.SOURCES:
        raise UserError(f"data.name={name!r} is not a data source of sentiment_cnn.",
                        f"valid: {', '.join(sorted(datasets.SOURCES))} "
                        "(data=imdb, or data=text_files data.path=DIR)")
    valid = datasets.COMMON | datasets.SOURCES[name]
    unknown = sorted(set(data) - valid)
    if unknown:
        raise UserError(f"data.{unknown[0]} is not a key of data={name} for sentiment_cnn.",
                        f"valid keys: {', '.join(sorted(valid))}")
    path = data.get("path")
    if isinstance(path, str) and path and not Path(path).expanduser().is_absolute():
        local = Path.cwd() / path
        if local.exists():
            data["path"] = str(local.resolve())
