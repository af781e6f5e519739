"""The data a sentiment CNN trains on: IMDB (Keras' ``imdb.npz``, the aclImdb archive or tree,
or the Keras cache), or raw labelled reviews.

``ctx.data`` is a plain dict (the composed ``data`` config). :func:`parse_spec` (from
:mod:`.spec`) checks it against the keys each data source knows; :func:`folds` turns it into
the splits one or more trainings use, with token ids ready for the network. Splits depend only
on the seed.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runner.model import ModelError
from runner.models.sentiment_cnn import reviews
from runner.models.sentiment_cnn.spec import (
    COMMON,
    FORMATS,
    SOURCES,
    WORD_INDEX_FILE,
    DataError,
    DataSpec,
    parse_spec,
)
from runner.models.sentiment_cnn.vocab import Vocabulary, fit_length

__all__ = ["COMMON", "FORMATS", "SOURCES", "DataError", "DataSpec", "Fold", "Labelled", "Source",
           "fit_length", "folds", "load_imdb", "load_text_files", "parse_spec"]

_POS = {"1", "pos", "positive", "true", "yes", "+"}
_NEG = {"0", "neg", "negative", "false", "no", "-"}


# -- raw reviews -------------------------------------------------------------------------------

@dataclass
class Labelled:
    """Reviews with 0/1 labels, as text or (IMDB) as token ids."""

    labels: np.ndarray
    texts: list[str] | None = None
    ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> Labelled:
        return Labelled(
            labels=self.labels[idx],
            texts=None if self.texts is None else [self.texts[i] for i in idx],
            ids=None if self.ids is None else [self.ids[i] for i in idx],
        )


@dataclass
class Source:
    """What a loader found: a training set, maybe a fixed test set, maybe a fixed vocabulary."""

    train: Labelled
    test: Labelled | None
    describe: str
    vocabulary: Vocabulary | None = None  # IMDB: ids are already assigned
    facts: dict[str, Any] = field(default_factory=dict)


def _labelled(part: reviews.Texts) -> Labelled:
    return Labelled(labels=np.array(part.labels, dtype="int32"), texts=part.texts)


def _label(value: str, where: str) -> int:
    v = value.strip().lower()
    if v in _POS:
        return 1
    if v in _NEG:
        return 0
    raise ModelError(f"{where}: label {value!r} is neither positive "
                     f"({', '.join(sorted(_POS))}) nor negative ({', '.join(sorted(_NEG))})")


def _from_pos_neg(files: list[Path]) -> Labelled:
    part = reviews.Texts()
    for f in sorted(files):
        lines = reviews.lines(f.read_bytes())
        part.texts += lines
        part.labels += [1 if f.suffix == ".pos" else 0] * len(lines)
    return _labelled(part)


def _from_table(files: list[Path], spec: DataSpec) -> Labelled:
    texts: list[str] = []
    labels: list[int] = []
    for f in sorted(files):
        delim = "\t" if f.suffix.lower() == ".tsv" else ","
        with f.open(newline="", encoding="utf-8", errors="replace") as fh:
            reader = csv.DictReader(fh, delimiter=delim)
            cols = reader.fieldnames or []
            for want, key in ((spec.text_column, "text_column"), (spec.label_column, "label_column")):
                if want not in cols:
                    raise ModelError(f"{f}: no column {want!r} (data.{key}); columns: {', '.join(cols)}")
            for n, row in enumerate(reader, start=2):
                texts.append(row[spec.text_column] or "")
                labels.append(_label(row[spec.label_column] or "", f"{f}, line {n}"))
    return Labelled(labels=np.array(labels, dtype="int32"), texts=texts)


def _acl_splits(splits: dict[str, reviews.Texts]) -> tuple[Labelled, Labelled | None]:
    test = splits.get("test")
    return _labelled(splits["train"]), None if test is None or not len(test) else _labelled(test)


def _no_reviews(spec: DataSpec, fmt: str) -> ModelError:
    return ModelError(
        f"data.path={spec.path}: found no {'reviews' if fmt in ('', 'auto') else fmt + ' data'} "
        "there; expected *.pos/*.neg files (one review per line), an aclImdb-style tree "
        "(train/pos, train/neg, optional test/...) or a .tar.gz/.tar.xz archive of either, "
        f"or .csv/.tsv files with '{spec.text_column}' and '{spec.label_column}' columns"
    )


def _text_archive(path: Path, spec: DataSpec) -> tuple[str, Labelled, Labelled | None]:
    found = reviews.read_archive(path)
    fmt = spec.format
    if fmt == "auto":
        fmt = "aclimdb" if "train" in found.acl else "pos_neg" if len(found.pos_neg) else ""
    if fmt == "aclimdb" and "train" in found.acl:
        return fmt, *_acl_splits(found.acl)
    if fmt == "pos_neg" and len(found.pos_neg):
        return fmt, _labelled(found.pos_neg), None
    raise _no_reviews(spec, fmt)


def load_text_files(spec: DataSpec) -> Source:
    """``*.pos``/``*.neg`` files, an aclImdb-style tree, CSV/TSV files, or a tar archive of
    an aclImdb tree or of ``*.pos``/``*.neg`` files."""
    path = Path(str(spec.path)).expanduser()
    if path.is_file() and reviews.is_archive(path):
        fmt, train, test = _text_archive(path, spec)
    else:
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
        pos_neg = [f for f in files if f.suffix in (".pos", ".neg")]
        if path.is_file() and path.suffix in (".pos", ".neg"):  # one file given: take its twin too
            pos_neg = [f for f in (path.with_suffix(".pos"), path.with_suffix(".neg")) if f.is_file()]
        tables = [f for f in files if f.suffix.lower() in (".csv", ".tsv")]
        acl = reviews.acl_root(path) if path.is_dir() else None
        fmt = spec.format
        if fmt == "auto":
            fmt = "aclimdb" if acl else "pos_neg" if pos_neg else "csv" if tables else ""
        if fmt == "aclimdb" and acl:
            train, test = _acl_splits(reviews.read_acl_tree(acl))
        elif fmt == "pos_neg" and pos_neg:
            train, test = _from_pos_neg(pos_neg), None
        elif fmt == "csv" and tables:
            train, test = _from_table(tables, spec), None
        else:
            raise _no_reviews(spec, fmt)
    for part, what in ((train, "training"), (test, "test")):
        if part is not None and len(set(part.labels.tolist())) < 2:
            raise ModelError(f"data.path={spec.path}: the {what} reviews are all of one class; "
                             "both positive and negative reviews are needed")
    return Source(train=train, test=test, describe=f"text_files {fmt} {path}")


# -- IMDB --------------------------------------------------------------------------------------

def _imdb_from_file(path: Path, num_words: int) -> tuple[Labelled, Labelled]:
    """An IMDB-format ``.npz`` (x_train, y_train, x_test, y_test; word ranks from 1), turned
    into ids with Keras' conventions: shuffled with seed 113, 1 starts a review, ranks
    shifted by 3, ids at or above ``num_words`` become 2 (out of vocabulary)."""
    try:  # Keras' restricted unpickler: the ragged arrays are pickled objects
        from keras.src.datasets.npz_utils import load_npz

        f: Any = load_npz(str(path))
    except ImportError:
        f = np.load(path, allow_pickle=True)
    try:
        parts = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as e:
        raise ModelError(f"data.path={path}: not an IMDB-format .npz (no {e} array)") from None
    rng = np.random.RandomState(113)
    out = []
    for x_key, y_key in (("x_train", "y_train"), ("x_test", "y_test")):
        order = np.arange(len(parts[x_key]))
        rng.shuffle(order)
        ids = [[1] + [w + 3 if w + 3 < num_words else 2 for w in parts[x_key][i]] for i in order]
        out.append(Labelled(labels=np.asarray(parts[y_key], dtype="int32")[order], ids=ids))
    return out[0], out[1]


def _keras_home() -> str:
    return os.environ.get("KERAS_HOME", "~/.keras")


def _imdb_from_keras(num_words: int | None) -> tuple[Labelled, Labelled]:
    # keras.datasets.imdb downloads into the Keras cache when the file is not there yet
    from keras.datasets import imdb

    try:
        (xtr, ytr), (xte, yte) = imdb.load_data(num_words=num_words)
    except Exception as e:
        raise ModelError(
            f"data=imdb: imdb.npz is not in the Keras cache ({_keras_home()}/datasets) and "
            f"downloading it failed ({str(e).splitlines()[0][:160]}). Give the run local data: "
            "data.path=/path/to/imdb.npz, an aclImdb_v1.tar.gz / aclImdb.tar.xz archive or an "
            "aclImdb/ tree (the runner ships it to the target); data already on the target host: "
            "data.path=target:/path/on/host; or a target cache volume that holds the Keras cache "
            "(Docker targets: cache_volume, mounted at /runner/cache with "
            "KERAS_HOME=/runner/cache/keras). Raw reviews: data=text_files data.path=DIR"
        ) from None
    return (Labelled(labels=np.asarray(ytr, dtype="int32"), ids=[list(x) for x in xtr]),
            Labelled(labels=np.asarray(yte, dtype="int32"), ids=[list(x) for x in xte]))


def _imdb_word_index(spec: DataSpec, *, download: bool) -> dict[str, int] | None:
    """The word -> rank map of IMDB: ``data.word_index``, else the file next to
    ``data.path``, else the Keras cache (downloaded into it when ``download``); None when
    none is to be had."""
    candidates = [Path(spec.word_index).expanduser()] if spec.word_index else []
    if spec.path and not spec.word_index:
        candidates.append(Path(spec.path).expanduser().parent / WORD_INDEX_FILE)
    for c in candidates:
        if c.is_file():
            try:
                return {str(k): int(v) for k, v in json.loads(c.read_text()).items()}
            except (ValueError, AttributeError, TypeError) as e:
                raise ModelError(f"{c}: not an IMDB word index (a JSON object of word -> "
                                 f"rank): {e}") from None
    if spec.word_index:
        raise ModelError(f"data.word_index={spec.word_index}: no such file on the target")
    cached = Path(_keras_home()).expanduser() / "datasets" / WORD_INDEX_FILE
    if not download and not cached.is_file():
        return None
    try:
        # the Keras cache (a download when missing); predict needs it, training does not
        from keras.datasets import imdb

        return {str(k): int(v) for k, v in imdb.get_word_index().items()}
    except Exception:
        return None


def _imdb_text(path: Path) -> tuple[str, Labelled, Labelled | None]:
    """The reviews of an aclImdb archive or tree, as text."""
    if path.is_dir():
        root = reviews.acl_root(path)
        if root is None:
            raise ModelError(f"data.path={path}: not an aclImdb tree (no train/pos and train/neg "
                             "folders in it, nor in an aclImdb/ folder in it)")
        return "aclImdb tree", *_acl_splits(reviews.read_acl_tree(root))
    found = reviews.read_archive(path)
    if "train" not in found.acl:
        raise ModelError(f"data.path={path}: no aclImdb reviews in this archive "
                         f"({found.members} files, none named [aclImdb/]train/{{pos,neg}}/*.txt)")
    return "aclImdb archive", *_acl_splits(found.acl)


def _is_npz(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04"  # a zip file, as every .npz is


def load_imdb(spec: DataSpec, num_words: int | None, maxlen: int, padding: str,
              truncating: str) -> Source:
    """IMDB from ``data.path`` (Keras' ``imdb.npz``, an aclImdb archive or an aclImdb tree),
    else from the Keras cache. Text is encoded with the IMDB word index when there is one,
    exactly as ``imdb.npz`` encodes it; without one, a vocabulary is built from the training
    reviews."""
    path = Path(spec.path).expanduser() if spec.path else None
    if path is not None and (path.is_dir() or not _is_npz(path)):
        kind, train_text, test_text = _imdb_text(path)
        index = _imdb_word_index(spec, download=False)
        describe = f"imdb ({kind} {path})"
        if index is None:  # text without the index: a vocabulary from the training reviews
            return Source(train=train_text, test=test_text, describe=describe,
                          facts={"encoding": "vocabulary built from the training reviews"})
        if num_words is None:
            num_words = max(index.values(), default=0) + 4
        vocab = Vocabulary.from_imdb_index(index, num_words=num_words, maxlen=maxlen,
                                           padding=padding, truncating=truncating)
        for part in (train_text, test_text):
            if part is not None:
                part.ids = [vocab.ids(t) for t in part.texts or []]
        return Source(train=train_text, test=test_text, describe=describe, vocabulary=vocab,
                      facts={"encoding": "IMDB word index"})
    if path is not None:
        train, test = _imdb_from_file(path, num_words or 2**31)
        where = str(spec.path)
    else:
        train, test = _imdb_from_keras(num_words)
        where = "Keras cache"
    if num_words is None:  # every word: the largest id sets the embedding's size
        num_words = 1 + max(max(s, default=0) for part in (train, test) for s in part.ids or [])
    index = _imdb_word_index(spec, download=True)
    vocab = Vocabulary.from_imdb_index(index, num_words=num_words, maxlen=maxlen, padding=padding,
                                       truncating=truncating)
    facts = {} if index is not None else {"warning": "no IMDB word index: predict will not work"}
    return Source(train=train, test=test, describe=f"imdb ({where})", vocabulary=vocab, facts=facts)


# -- splits ------------------------------------------------------------------------------------

@dataclass
class Fold:
    """One training: arrays for train/validation/test and the vocabulary that made them."""

    number: int  # 0 for a single split; 1..K in cross-validation
    vocabulary: Vocabulary
    x_train: list[list[int]]  # token ids, not yet padded (bucketing pads per batch)
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_texts: list[str] | None  # raw text of the test reviews, when the data has it

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def _vocab_and_ids(source: Source, train: Labelled, num_words: int | None, maxlen: int, padding: str,
                   truncating: str) -> tuple[Vocabulary, list[list[int]]]:
    if source.vocabulary is not None:
        assert train.ids is not None
        return source.vocabulary, train.ids
    assert train.texts is not None
    vocab = Vocabulary.build(train.texts, num_words=num_words, maxlen=maxlen, padding=padding,
                             truncating=truncating)
    return vocab, [vocab.ids(t) for t in train.texts]


def _encode(vocab: Vocabulary, part: Labelled) -> np.ndarray:
    if part.ids is not None:
        return fit_length(part.ids, vocab.maxlen, vocab.padding, vocab.truncating)
    assert part.texts is not None
    return vocab.encode(part.texts)


def _make_fold(number: int, source: Source, train: Labelled, test: Labelled, spec: DataSpec,
               rng: np.random.RandomState, num_words: int | None, maxlen: int, padding: str,
               truncating: str) -> Fold:
    val = test
    if spec.val_split > 0:
        order = rng.permutation(len(train))
        n_val = max(1, int(round(len(train) * spec.val_split)))
        val, train = train.take(order[:n_val]), train.take(order[n_val:])
    vocab, train_ids = _vocab_and_ids(source, train, num_words, maxlen, padding, truncating)
    return Fold(number=number, vocabulary=vocab, x_train=train_ids, y_train=train.labels,
                x_val=_encode(vocab, val), y_val=val.labels, x_test=_encode(vocab, test),
                y_test=test.labels, test_texts=test.texts)


def folds(source: Source, spec: DataSpec, seed: int, *, num_words: int | None, maxlen: int,
          padding: str = "pre", truncating: str = "pre") -> Iterator[Fold]:
    """The trainings to run: one (train/test) or ``cv_folds`` (K-fold cross-validation over
    train and test together). Vocabularies are built on each training part only."""
    rng = np.random.RandomState(seed % (2**32))
    train, test = source.train, source.test
    if spec.max_samples and len(train) > spec.max_samples:
        train = train.take(np.sort(rng.permutation(len(train))[: spec.max_samples]))
    kw = dict(num_words=num_words, maxlen=maxlen, padding=padding, truncating=truncating)
    if spec.cv_folds:
        whole = train if test is None else _concat(train, test)
        if len(whole) < spec.cv_folds * 2:
            raise ModelError(f"data.cv_folds={spec.cv_folds}: only {len(whole)} reviews")
        parts = np.array_split(rng.permutation(len(whole)), spec.cv_folds)
        for k in range(spec.cv_folds):
            rest = np.sort(np.concatenate([p for j, p in enumerate(parts) if j != k]))
            yield _make_fold(k + 1, source, whole.take(rest), whole.take(np.sort(parts[k])), spec,
                             rng, **kw)  # type: ignore[arg-type]
        return
    if test is None:
        order = rng.permutation(len(train))
        n_test = max(1, int(round(len(train) * spec.test_split)))
        test, train = train.take(np.sort(order[:n_test])), train.take(np.sort(order[n_test:]))
    yield _make_fold(0, source, train, test, spec, rng, **kw)  # type: ignore[arg-type]


def _concat(a: Labelled, b: Labelled) -> Labelled:
    return Labelled(
        labels=np.concatenate([a.labels, b.labels]),
        texts=None if a.texts is None or b.texts is None else a.texts + b.texts,
        ids=None if a.ids is None or b.ids is None else a.ids + b.ids,
    )
