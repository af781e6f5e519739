"""The data a sentiment CNN trains on: IMDB through Keras, or raw labelled reviews.

``ctx.data`` is a plain dict (the composed ``data`` config). :func:`parse_spec` checks it
against the keys each data source knows; :func:`folds` turns it into the splits one or more
trainings use, with token ids ready for the network. Splits depend only on the seed.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runner.model import ModelError
from runner.models.sentiment_cnn.vocab import Vocabulary, fit_length

# The keys each data source accepts; every source also takes the COMMON ones.
COMMON = {"name", "path", "val_split", "cv_folds", "max_samples"}
SOURCES: dict[str, set[str]] = {
    "imdb": {"word_index"},
    "text_files": {"format", "test_split", "text_column", "label_column"},
}
FORMATS = ("auto", "pos_neg", "aclimdb", "csv")
_POS = {"1", "pos", "positive", "true", "yes", "+"}
_NEG = {"0", "neg", "negative", "false", "no", "-"}


@dataclass(frozen=True)
class DataSpec:
    """The validated data config."""

    name: str
    path: str | None = None  # a file or folder; None = the source's default (IMDB: Keras cache)
    val_split: float = 0.0  # fraction of the training split held out; 0 = validate on the test split
    cv_folds: int = 0  # K > 1: K-fold cross-validation instead of one train/test split
    max_samples: int | None = None  # use at most this many training reviews (quick runs)
    test_split: float = 0.1  # text_files without a test split: fraction held out for test
    format: str = "auto"  # text_files: auto | pos_neg | aclimdb | csv
    text_column: str = "text"  # text_files CSV/TSV: the column with the review
    label_column: str = "label"  # text_files CSV/TSV: the column with 1/0, pos/neg, ...
    word_index: str | None = None  # imdb: imdb_word_index.json (for predict); None = next to path, else Keras cache


def parse_spec(data: Mapping[str, Any]) -> DataSpec:
    """Check the ``data`` config; raise :class:`ModelError` naming the bad key and the valid ones."""
    name = data.get("name")
    if name not in SOURCES:
        raise ModelError(
            f"data.name={name!r} is not a data source of sentiment_cnn; "
            f"valid: {', '.join(sorted(SOURCES))} (data=imdb or data=text_files data.path=DIR)"
        )
    valid = COMMON | SOURCES[name]
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ModelError(
            f"data.{unknown[0]} is not a key of data={name} for sentiment_cnn; "
            f"valid keys: {', '.join(sorted(valid))}"
        )
    spec = DataSpec(**{k: v for k, v in data.items() if v is not None or k == "path"})

    def bad(key: str, why: str) -> ModelError:
        return ModelError(f"data.{key}={getattr(spec, key)!r}: {why}")

    if not isinstance(spec.val_split, int | float) or not 0 <= spec.val_split < 1:
        raise bad("val_split", "must be a fraction in [0, 1)")
    if not isinstance(spec.test_split, int | float) or not 0 < spec.test_split < 1:
        raise bad("test_split", "must be a fraction in (0, 1)")
    if not isinstance(spec.cv_folds, int) or spec.cv_folds < 0 or spec.cv_folds == 1:
        raise bad("cv_folds", "must be 0 (off) or an integer >= 2")
    if spec.max_samples is not None and (not isinstance(spec.max_samples, int) or spec.max_samples < 2):
        raise bad("max_samples", "must be null or an integer >= 2")
    if spec.format not in FORMATS:
        raise bad("format", f"valid: {', '.join(FORMATS)}")
    if name == "text_files":
        if not spec.path:
            raise ModelError("data=text_files needs data.path: a folder or file of labelled reviews "
                             "(*.pos/*.neg, an aclImdb tree, or CSV/TSV)")
        if not Path(spec.path).expanduser().exists():
            raise bad("path", "no such file or folder on the target")
    elif spec.path and not Path(spec.path).expanduser().is_file():
        raise bad("path", "no such file on the target (an IMDB-format imdb.npz is expected)")
    return spec


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


def _read_lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # rt-polarity and other older corpora are Latin-1
        text = raw.decode("latin-1")
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _label(value: str, where: str) -> int:
    v = value.strip().lower()
    if v in _POS:
        return 1
    if v in _NEG:
        return 0
    raise ModelError(f"{where}: label {value!r} is neither positive "
                     f"({', '.join(sorted(_POS))}) nor negative ({', '.join(sorted(_NEG))})")


def _from_pos_neg(files: list[Path]) -> Labelled:
    texts: list[str] = []
    labels: list[int] = []
    for f in sorted(files):
        lines = _read_lines(f)
        texts += lines
        labels += [1 if f.suffix == ".pos" else 0] * len(lines)
    return Labelled(labels=np.array(labels, dtype="int32"), texts=texts)


def _from_acl_dir(root: Path) -> Labelled:
    texts: list[str] = []
    labels: list[int] = []
    for label, sub in ((1, "pos"), (0, "neg")):
        for f in sorted((root / sub).glob("*.txt")):
            texts.append(f.read_text(encoding="utf-8", errors="replace").strip())
            labels.append(label)
    return Labelled(labels=np.array(labels, dtype="int32"), texts=texts)


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


def load_text_files(spec: DataSpec) -> Source:
    """``*.pos``/``*.neg`` files, an aclImdb-style tree, or CSV/TSV files."""
    path = Path(str(spec.path)).expanduser()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    pos_neg = [f for f in files if f.suffix in (".pos", ".neg")]
    if path.is_file() and path.suffix in (".pos", ".neg"):  # one file given: take its twin too
        pos_neg = [f for f in (path.with_suffix(".pos"), path.with_suffix(".neg")) if f.is_file()]
    tables = [f for f in files if f.suffix.lower() in (".csv", ".tsv")]
    acl = path.is_dir() and (path / "train" / "pos").is_dir() and (path / "train" / "neg").is_dir()
    fmt = spec.format
    if fmt == "auto":
        fmt = "aclimdb" if acl else "pos_neg" if pos_neg else "csv" if tables else ""
    if fmt == "aclimdb" and acl:
        train = _from_acl_dir(path / "train")
        test = _from_acl_dir(path / "test") if (path / "test" / "pos").is_dir() else None
    elif fmt == "pos_neg" and pos_neg:
        train, test = _from_pos_neg(pos_neg), None
    elif fmt == "csv" and tables:
        train, test = _from_table(tables, spec), None
    else:
        raise ModelError(
            f"data.path={spec.path}: found no {'reviews' if fmt in ('', 'auto') else fmt + ' data'} "
            "there; expected *.pos/*.neg files (one review per line), an aclImdb-style tree "
            "(train/pos, train/neg, optional test/...), or .csv/.tsv files with "
            f"'{spec.text_column}' and '{spec.label_column}' columns"
        )
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


def _imdb_from_keras(num_words: int | None) -> tuple[Labelled, Labelled]:
    # keras.datasets.imdb downloads into the Keras cache when the file is not there yet
    from keras.datasets import imdb

    try:
        (xtr, ytr), (xte, yte) = imdb.load_data(num_words=num_words)
    except Exception as e:
        home = os.environ.get("KERAS_HOME", "~/.keras")
        raise ModelError(
            f"data=imdb: imdb.npz is not in the Keras cache ({home}/datasets) and downloading "
            f"it failed ({str(e).splitlines()[0][:160]}); point at local data: "
            "data.path=/path/to/imdb.npz, or raw reviews: data=text_files data.path=DIR"
        ) from None
    return (Labelled(labels=np.asarray(ytr, dtype="int32"), ids=[list(x) for x in xtr]),
            Labelled(labels=np.asarray(yte, dtype="int32"), ids=[list(x) for x in xte]))


def _imdb_word_index(spec: DataSpec) -> dict[str, int] | None:
    """The word -> rank map of IMDB, needed to score raw text later; None when unavailable."""
    candidates = [Path(spec.word_index).expanduser()] if spec.word_index else []
    if spec.path and not spec.word_index:
        candidates.append(Path(spec.path).expanduser().parent / "imdb_word_index.json")
    for c in candidates:
        if c.is_file():
            return {str(k): int(v) for k, v in json.loads(c.read_text()).items()}
    if spec.word_index:
        raise ModelError(f"data.word_index={spec.word_index}: no such file on the target")
    try:
        # the Keras cache (a download when missing); predict needs it, training does not
        from keras.datasets import imdb

        return {str(k): int(v) for k, v in imdb.get_word_index().items()}
    except Exception:
        return None


def load_imdb(spec: DataSpec, num_words: int | None, maxlen: int, padding: str,
              truncating: str) -> Source:
    if spec.path:
        train, test = _imdb_from_file(Path(spec.path).expanduser(), num_words or 2**31)
        where = str(spec.path)
    else:
        train, test = _imdb_from_keras(num_words)
        where = "Keras cache"
    if num_words is None:  # every word: the largest id sets the embedding's size
        num_words = 1 + max(max(s, default=0) for part in (train, test) for s in part.ids or [])
    index = _imdb_word_index(spec)
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
