"""The sentiment CNN model plugin: a Keras convolutional network that scores the sentiment of
movie reviews (``model=sentiment_cnn`` and ``model=sentiment_cnn_multiwidth``).

Only :mod:`.model` is imported with the plugin; the data loaders and everything that needs
NumPy, Keras or TensorFlow are imported inside :meth:`SentimentCNN.run` and
:meth:`SentimentCNN.predict`.
"""

from __future__ import annotations

from typing import Any

from runner import hookimpl
from runner.models.sentiment_cnn.model import SentimentCNN, SentimentCNNConfig

__all__ = ["SentimentCNN", "SentimentCNNConfig", "runner_register_models"]


@hookimpl
def runner_register_models(register: Any) -> None:
    register(SentimentCNN)
