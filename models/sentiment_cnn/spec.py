"""The ``data`` config of the sentiment CNN: which keys each data source takes, and their checks.

Pure Python (no NumPy): the client validates a submit with it, where no framework need be
installed; the target checks it again with :func:`parse_spec` before loading anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.model import ModelError

__all__ = ["COMMON", "SOURCES", "FORMATS", "DataSpec", "DataError", "check_keys", "parse_spec"]

# The keys each data source accepts; every source also takes the COMMON ones.
COMMON = {"name", "path", "val_split", "cv_folds", "max_samples"}
SOURCES: dict[str, set[str]] = {
    "imdb": {"word_index"},
    "text_files": {"format", "test_split", "text_column", "label_column"},
}
FORMATS = ("auto", "pos_neg", "aclimdb", "csv")
#: the IMDB word index a loader looks for next to ``data.path`` when ``data.word_index`` is unset
WORD_INDEX_FILE = "imdb_word_index.json"


class DataError(ModelError):
    """A bad ``data`` config: ``message`` says what is wrong, ``hint`` what is valid."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(f"{message}; {hint}" if hint else message)
        self.message = message
        self.hint = hint


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
    word_index: str | None = None  # imdb: imdb_word_index.json; None = next to path, else Keras cache


def check_keys(data: Mapping[str, Any]) -> str:
    """The data source's name, once ``data`` names a known source and only its keys."""
    name = data.get("name")
    if name not in SOURCES:
        raise DataError(f"data.name={name!r} is not a data source of sentiment_cnn",
                        f"valid: {', '.join(sorted(SOURCES))} "
                        "(data=imdb, or data=text_files data.path=DIR)")
    valid = COMMON | SOURCES[name]
    unknown = sorted(set(data) - valid)
    if unknown:
        raise DataError(f"data.{unknown[0]} is not a key of data={name} for sentiment_cnn",
                        f"valid keys: {', '.join(sorted(valid))}")
    return str(name)


def parse_spec(data: Mapping[str, Any], *, on_target: bool = True) -> DataSpec:
    """Check the ``data`` config; raise :class:`DataError` naming the bad key and the valid ones.

    ``on_target`` also checks that ``data.path`` exists: on the target, where the worker has
    put the in-target path into ``data`` (the client's copy may not exist there, or at all).
    """
    name = check_keys(data)
    spec = DataSpec(**{k: v for k, v in data.items() if v is not None or k == "path"})

    def bad(key: str, why: str) -> DataError:
        return DataError(f"data.{key}={getattr(spec, key)!r}: {why}")

    if not isinstance(spec.val_split, int | float) or not 0 <= spec.val_split < 1:
        raise bad("val_split", "must be a fraction in [0, 1)")
    if not isinstance(spec.test_split, int | float) or not 0 < spec.test_split < 1:
        raise bad("test_split", "must be a fraction in (0, 1)")
    if not isinstance(spec.cv_folds, int) or spec.cv_folds < 0 or spec.cv_folds == 1:
        raise bad("cv_folds", "must be 0 (off) or an integer >= 2")
    if spec.max_samples is not None and (not isinstance(spec.max_samples, int) or spec.max_samples < 2):
        raise bad("max_samples", "must be null or an integer >= 2")
    if spec.format not in FORMATS:
        raise DataError(f"data.format={spec.format!r} is not a format", f"valid: {', '.join(FORMATS)}")
    if name == "text_files" and not spec.path:
        raise DataError("data=text_files needs data.path: a folder, file or archive of labelled "
                        "reviews (*.pos/*.neg, an aclImdb tree or archive, or CSV/TSV)")
    if not on_target:
        return spec
    if spec.path and not Path(spec.path).expanduser().exists():
        what = ("file or folder" if name == "text_files" else
                "file or folder (imdb.npz, aclImdb_v1.tar.gz / aclImdb.tar.xz, or an aclImdb/ tree)")
        raise bad("path", f"no such {what} on the target")
    if spec.word_index and not Path(spec.word_index).expanduser().is_file():
        raise bad("word_index", "no such file on the target")
    return spec
