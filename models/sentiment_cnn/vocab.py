"""Text to token ids, the same way in training and in ``predict``.

A :class:`Vocabulary` is built on the training split only, saved as JSON next to the model,
and reloaded to score new text. :func:`fit_length` is the single place where sequences are
padded and truncated, so training, evaluation and prediction cannot disagree about which
end of a long review is kept.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "runner.sentiment_cnn.vocabulary/1"
FILE_NAME = "vocabulary.json"
PAD = 0
_TAG = re.compile(r"<[^>]{0,40}>")  # IMDB reviews carry <br /> tags
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# Keras' text_to_word_sequence: these characters become spaces, then the text splits on spaces.
# The IMDB word index was made this way: "<br />" became the word "br" (rank 7), "isn't" and
# "'the" are words of their own. A word is a run of any other characters (findall is the
# fastest way to it in Python).
_KERAS_WORD = re.compile("[^" + re.escape('!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n') + " ]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and numbers; HTML tags and punctuation dropped."""
    return _TOKEN.findall(_TAG.sub(" ", text.lower()))


def keras_tokenize(text: str) -> list[str]:
    """Words as Keras' IMDB data has them: lower-cased, Keras' punctuation filters replaced
    by spaces, split on spaces (the encoding behind ``imdb.npz`` and its word index)."""
    return _KERAS_WORD.findall(text.lower())


@dataclass
class Vocabulary:
    """Word -> id, and how ids become fixed-length model inputs.

    Ids below ``first_word_id`` are reserved: 0 pads, ``oov_id`` marks a word outside the
    vocabulary, ``start_id`` (IMDB's convention; ``None`` for raw text) starts a review.
    """

    words: dict[str, int]  # word -> id, only ids < num_words
    num_words: int  # the embedding's input size: every id is below it
    maxlen: int  # sequences are padded/truncated to this many ids
    padding: str = "pre"  # where zeros go: pre | post
    truncating: str = "pre"  # which end of a long sequence is cut: pre | post
    oov_id: int = 1
    start_id: int | None = None
    source: str = "text"  # "text" (built here) or "imdb" (Keras' IMDB word index)
    info: dict[str, Any] = field(default_factory=dict)  # what built it (sizes, data)

    @classmethod
    def build(cls, texts: Iterable[str], *, num_words: int | None, maxlen: int,
              padding: str = "pre", truncating: str = "pre") -> Vocabulary:
        """The ``num_words`` most frequent tokens of ``texts`` (ties broken alphabetically,
        so the result does not depend on the order of the texts); None keeps all."""
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(tokenize(t))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        first = 2  # 0 = padding, 1 = out of vocabulary
        keep = ranked if num_words is None else ranked[: max(0, num_words - first)]
        words = {w: i + first for i, (w, _) in enumerate(keep)}
        size = first + len(words)
        return cls(words=words, num_words=size, maxlen=maxlen, padding=padding,
                   truncating=truncating, oov_id=1, start_id=None, source="text",
                   info={"distinct_tokens": len(counts)})

    @classmethod
    def from_imdb_index(cls, word_index: dict[str, int] | None, *, num_words: int, maxlen: int,
                        padding: str, truncating: str) -> Vocabulary:
        """Keras' IMDB convention: id = rank + 3; 1 starts a review, 2 is out of vocabulary.
        Without the word index the vocabulary can encode nothing (predict says so)."""
        words = {} if word_index is None else {
            w: r + 3 for w, r in word_index.items() if r + 3 < num_words}
        return cls(words=words, num_words=num_words, maxlen=maxlen, padding=padding,
                   truncating=truncating, oov_id=2, start_id=1, source="imdb",
                   info={"word_index": word_index is not None})

    def ids(self, text: str) -> list[int]:
        """The ids of one text, before padding/truncation. IMDB vocabularies split text the
        way Keras' IMDB data was split, so raw text gets the ids ``imdb.npz`` would hold."""
        head = [] if self.start_id is None else [self.start_id]
        words = keras_tokenize(text) if self.source == "imdb" else tokenize(text)
        get, oov = self.words.get, self.oov_id
        return head + [get(w, oov) for w in words]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> an int32 array of shape (len(texts), maxlen), as the model was trained."""
        return fit_length([self.ids(t) for t in texts], self.maxlen, self.padding, self.truncating)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / FILE_NAME
        path.write_text(json.dumps({"format": FORMAT, **asdict(self)}, ensure_ascii=False))
        return path

    @classmethod
    def load(cls, directory: Path) -> Vocabulary:
        data = json.loads((Path(directory) / FILE_NAME).read_text())
        if data.pop("format", None) != FORMAT:
            raise ValueError(f"{Path(directory) / FILE_NAME} is not a {FORMAT} file")
        return cls(**data)


def fit_length(seqs: Sequence[Sequence[int]], length: int, padding: str = "pre",
               truncating: str = "pre") -> np.ndarray:
    """Pad with 0 / truncate every sequence to exactly ``length`` ids.

    ``truncating="pre"`` keeps the *last* ``length`` ids (Keras' ``pad_sequences`` default,
    which the original script used); ``"post"`` keeps the first ones.
    """
    out = np.zeros((len(seqs), length), dtype="int32")
    for i, s in enumerate(seqs):
        if not len(s):
            continue
        s = s[-length:] if truncating == "pre" else s[:length]
        if padding == "pre":
            out[i, length - len(s):] = s
        else:
            out[i, : len(s)] = s
    return out
