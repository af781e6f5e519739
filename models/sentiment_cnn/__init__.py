"""The sentiment CNN model plugin: a Keras convolutional network that scores the sentiment of
movie reviews (``model=sentiment_cnn`` and ``model=sentiment_cnn_multiwidth``).

Only :mod:`.model` and :mod:`.spec` (the data config's checks, pure Python) are imported with
the plugin, so a client without any framework can compose and validate runs; the data loaders
(:mod:`.datasets`, :mod:`.reviews`) and everything that needs NumPy, Keras or a backend are
imported inside :meth:`SentimentCNN.run` and :meth:`SentimentCNN.predict`.
"""

from __future__ import annotations

from typing import Any

from runner import hookimpl
from runner.models.sentiment_cnn.model import SentimentCNN, SentimentCNNConfig

__all__ = ["SentimentCNN", "SentimentCNNConfig", "runner_register_models"]


@hookimpl
def runner_register_models(register: Any) -> None:
    register(SentimentCNN)
