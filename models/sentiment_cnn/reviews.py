"""Labelled reviews as users hold them on disk: an aclImdb tree, a tar archive of one (read as a
stream, never unpacked), or ``*.pos``/``*.neg`` files, loose or in an archive.

Plain lists, no NumPy. Reviews come out in one fixed order (split, then positive before
negative, then by file name), so a tree and its archive give the same reviews in the same order.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from runner.model import ModelError

__all__ = ["Texts", "ArchiveContent", "acl_root", "decode", "is_archive", "read_acl_tree",
           "read_archive"]

SPLITS = ("train", "test")
_LABELS = {"pos": 1, "neg": 0}
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tbz")
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"\xfd7zXZ\x00", b"BZh")


@dataclass
class Texts:
    """Reviews and their 0/1 labels (1 = positive)."""

    texts: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ArchiveContent:
    """The reviews found in an archive: aclImdb splits and/or ``*.pos``/``*.neg`` lines."""

    acl: dict[str, Texts]  # "train" / "test" -> reviews; only splits the archive has
    pos_neg: Texts  # one review per line of every *.pos / *.neg member
    members: int  # regular files in the archive, reviews or not


def decode(raw: bytes) -> str:
    """UTF-8, else Latin-1 (rt-polarity and some IMDB reviews carry Windows-1252 bytes)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def lines(raw: bytes) -> list[str]:
    """The non-empty lines of a ``*.pos``/``*.neg`` file, stripped."""
    return [ln.strip() for ln in decode(raw).splitlines() if ln.strip()]


def is_archive(path: Path) -> bool:
    """A tar archive by its name, or a compressed/tar file by its first bytes."""
    if path.name.lower().endswith(_ARCHIVE_SUFFIXES):
        return True
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return head.startswith(_COMPRESSED_MAGIC) or head[257:262] == b"ustar"


def acl_root(path: Path) -> Path | None:
    """``path`` or ``path/aclImdb`` when it holds ``train/pos`` and ``train/neg``."""
    for root in (path, path / "aclImdb"):
        if (root / "train" / "pos").is_dir() and (root / "train" / "neg").is_dir():
            return root
    return None


def read_acl_tree(root: Path) -> dict[str, Texts]:
    """The splits of an unpacked aclImdb tree (``train`` always, ``test`` when present)."""
    out: dict[str, Texts] = {}
    for split in SPLITS:
        if not (root / split / "pos").is_dir():
            continue
        part = out[split] = Texts()
        for sub, label in _LABELS.items():
            for f in sorted((root / split / sub).glob("*.txt")):
                part.texts.append(decode(f.read_bytes()).strip())
                part.labels.append(label)
    return out


def _acl_member(name: str) -> tuple[str, int, str] | None:
    """(split, label, file name) of ``[prefix/]{train,test}/{pos,neg}/NAME.txt``, else None."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if len(parts) < 3 or not parts[-1].endswith(".txt"):
        return None
    split, sub = parts[-3], parts[-2]
    if split not in SPLITS or sub not in _LABELS:
        return None
    return split, _LABELS[sub], parts[-1]


def _open(path: Path) -> io.BufferedReader:
    """The archive's tar stream, decompressed as it is read. A large read buffer over the
    decompressor reads the IMDB archive in half the time of ``tarfile.open(path, "r:*")``."""
    with path.open("rb") as f:
        head = f.read(6)
    opener = {b"\x1f\x8b": gzip.open, b"\xfd7zXZ": lzma.open, b"BZh": bz2.open}
    for magic, fn in opener.items():
        if head.startswith(magic):
            return io.BufferedReader(fn(path, "rb"), 1 << 20)  # type: ignore[operator,arg-type]
    return io.BufferedReader(path.open("rb", buffering=0), 1 << 20)  # type: ignore[arg-type]


def read_archive(path: Path, key: str = "path") -> ArchiveContent:
    """Every review in the tar archive at ``path`` (any compression tarfile knows), read in
    one pass. A damaged or truncated archive is a :class:`ModelError` naming ``data.KEY``."""
    acl: dict[str, list[tuple[int, str, str]]] = {}
    pos_neg: list[tuple[str, int, list[str]]] = []
    members = 0
    try:
        with _open(path) as stream, tarfile.open(fileobj=stream, mode="r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                members += 1
                acl_key = _acl_member(m.name)
                base = m.name.rsplit("/", 1)[-1]
                suffix = base.rsplit(".", 1)[-1] if "." in base else ""
                if acl_key is None and suffix not in ("pos", "neg"):
                    continue
                f = tar.extractfile(m)
                raw = f.read() if f is not None else b""
                if acl_key is not None:
                    split, label, name = acl_key
                    # positive first, then by name: the order read_acl_tree gives
                    acl.setdefault(split, []).append((1 - label, name, decode(raw).strip()))
                else:
                    pos_neg.append((m.name, 1 if suffix == "pos" else 0, lines(raw)))
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, zlib.error, ValueError) as e:
        why = str(e) or type(e).__name__
        raise ModelError(f"data.{key}={path}: not a readable archive ({why})") from None
    out: dict[str, Texts] = {}
    for split in SPLITS:
        if split in acl:
            part = out[split] = Texts()
            for neg, _, text in sorted(acl[split]):
                part.texts.append(text)
                part.labels.append(1 - neg)
    flat = Texts()
    for _, label, texts in sorted(pos_neg, key=lambda t: t[0]):
        flat.texts += texts
        flat.labels += [label] * len(texts)
    return ArchiveContent(acl=out, pos_neg=flat, members=members)
