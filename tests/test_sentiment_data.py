"""The sentiment CNN's data side: loaders for each format, splits, vocabulary, truncation,
and the checks on the data config. No training here (see test_sentiment_train.py)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")

from runner.model import ModelError  # noqa: E402
from runner.models.sentiment_cnn import datasets  # noqa: E402
from runner.models.sentiment_cnn.vocab import Vocabulary, fit_length, tokenize  # noqa: E402

# -- generated reviews whose sentiment is carried by a few learnable words ---------------------
POSITIVE = ["wonderful", "superb", "moving", "brilliant", "delightful", "charming", "gripping",
            "masterful"]
NEGATIVE = ["dreadful", "boring", "clumsy", "tedious", "awful", "lifeless", "shallow", "dismal"]
NEUTRAL = [f"w{i}" for i in range(150)] + ["film", "movie", "plot", "actor", "scene", "story"]


def review(rng: random.Random, positive: bool, length: int) -> str:
    """``length`` neutral words with two or three sentiment words of one class among them."""
    words = [rng.choice(NEUTRAL) for _ in range(length)]
    for _ in range(rng.randint(2, 3)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if positive else NEGATIVE))
    return " ".join(words)


def reviews(n: int, seed: int = 0, lengths: tuple[int, int] = (4, 30)) -> list[tuple[str, int]]:
    """``n`` (text, label) pairs, half positive."""
    rng = random.Random(seed)
    return [(review(rng, i % 2 == 0, rng.randint(*lengths)), int(i % 2 == 0)) for i in range(n)]


def write_pos_neg(folder: Path, n: int = 400, seed: int = 0) -> Path:
    """``folder/reviews.pos`` and ``folder/reviews.neg``, one review per line."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = reviews(n, seed)
    (folder / "reviews.pos").write_text("\n".join(t for t, y in pairs if y) + "\n")
    (folder / "reviews.neg").write_text("\n".join(t for t, y in pairs if not y) + "\n")
    return folder


def spec(**values: object) -> datasets.DataSpec:
    return datasets.parse_spec({"name": "text_files", **values})


def test_tokenize_drops_tags_and_punctuation() -> None:
    assert tokenize("A <br />GREAT film, isn't it? 10/10") == ["a", "great", "film", "isn't", "it",
                                                                  "10", "10"]


@pytest.mark.parametrize(("truncating", "padding", "expected"), [
    ("pre", "pre", [[0, 0, 1, 2], [3, 4, 5, 6]]),  # long: keeps the last tokens
    ("post", "post", [[1, 2, 0, 0], [1, 2, 3, 4]]),  # long: keeps the first tokens
])
def test_fit_length_pads_and_truncates(truncating: str, padding: str, expected: list[list[int]]) -> None:
    out = fit_length([[1, 2], [1, 2, 3, 4, 5, 6]], 4, padding, truncating)
    assert out.tolist() == expected
    assert out.dtype == np.int32


def test_vocabulary_round_trip_encodes_identically(tmp_path: Path) -> None:
    texts = [t for t, _ in reviews(50)]
    vocab = Vocabulary.build(texts, num_words=40, maxlen=12)
    assert vocab.num_words == 40 and max(vocab.words.values()) == 39
    long = " ".join(f"w{i}" for i in range(30)) + " superb"
    vocab.save(tmp_path)
    again = Vocabulary.load(tmp_path)
    assert again.encode([long, "dreadful"]).tolist() == vocab.encode([long, "dreadful"]).tolist()
    # truncating "pre" keeps the end of a long review, where "superb" is
    assert vocab.encode([long])[0, -1] == vocab.words["superb"]


def test_vocabulary_is_built_on_the_training_split_only(tmp_path: Path) -> None:
    write_pos_neg(tmp_path, n=80)
    with (tmp_path / "reviews.pos").open("a") as f:  # words seen in one review each
        f.write("".join(f"superb rare{i}\n" for i in range(20)))
    s = spec(path=str(tmp_path), test_split=0.2, val_split=0.0)
    src = datasets.load_text_files(s)
    fold = next(datasets.folds(src, s, seed=1, num_words=None, maxlen=10))
    assert fold.sizes == {"train": 80, "val": 20, "test": 20}
    assert fold.test_texts is not None
    train_texts = list(src.train.texts or [])
    for t in fold.test_texts:
        train_texts.remove(t)
    train_words = {w for t in train_texts for w in tokenize(t)}
    test_words = {w for t in fold.test_texts for w in tokenize(t)}
    assert test_words - train_words, "the generated data should have test-only words"
    assert set(fold.vocabulary.words) == train_words


def test_splits_depend_only_on_the_seed(tmp_path: Path) -> None:
    write_pos_neg(tmp_path, n=60)
    s = spec(path=str(tmp_path))

    def test_texts(seed: int) -> list[str]:
        return next(datasets.folds(datasets.load_text_files(s), s, seed, num_words=100,
                                   maxlen=10)).test_texts or []

    assert test_texts(3) == test_texts(3)
    assert test_texts(3) != test_texts(4)


def test_pos_neg_folder_and_single_file(tmp_path: Path) -> None:
    write_pos_neg(tmp_path, n=40)
    src = datasets.load_text_files(spec(path=str(tmp_path)))
    assert len(src.train) == 40 and src.test is None
    assert sorted(src.train.labels.tolist()) == [0] * 20 + [1] * 20
    one = datasets.load_text_files(spec(path=str(tmp_path / "reviews.neg")))
    assert len(one.train) == 40  # the .pos twin is found


def test_latin1_lines_are_read(tmp_path: Path) -> None:
    (tmp_path / "a.pos").write_bytes("un film charmant , très réussi\nsuperb\n".encode("latin-1"))
    (tmp_path / "a.neg").write_bytes(b"dreadful\n")
    src = datasets.load_text_files(spec(path=str(tmp_path)))
    assert src.train.texts is not None and "très" in src.train.texts[1]


def test_aclimdb_tree_keeps_its_test_split(tmp_path: Path) -> None:
    for part, n in (("train", 3), ("test", 2)):
        for label in ("pos", "neg"):
            d = tmp_path / part / label
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i}_7.txt").write_text(f"{label} review {i}<br />more")
    src = datasets.load_text_files(spec(path=str(tmp_path)))
    assert len(src.train) == 6 and src.test is not None and len(src.test) == 4
    s = spec(path=str(tmp_path), val_split=0.0)
    fold = next(datasets.folds(src, s, 0, num_words=100, maxlen=5))
    assert fold.sizes == {"train": 6, "val": 4, "test": 4}  # validation = the given test split


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_csv_and_tsv(tmp_path: Path, suffix: str) -> None:
    sep = "," if suffix == ".csv" else "\t"
    rows = [f"review{sep}sentiment", f'"great, really"{sep}positive', f"bad{sep}neg", f"ok{sep}1"]
    (tmp_path / f"r{suffix}").write_text("\n".join(rows) + "\n")
    src = datasets.load_text_files(spec(path=str(tmp_path), text_column="review",
                                        label_column="sentiment"))
    assert src.train.texts == ["great, really", "bad", "ok"]
    assert src.train.labels.tolist() == [1, 0, 1]


def test_csv_errors_name_the_column_and_the_line(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("text,label\nfine,maybe\n")
    with pytest.raises(ModelError, match=r"line 2: label 'maybe'"):
        datasets.load_text_files(spec(path=str(tmp_path)))
    with pytest.raises(ModelError, match=r"no column 'review' \(data.text_column\); columns: text, label"):
        datasets.load_text_files(spec(path=str(tmp_path), text_column="review"))


def test_cross_validation_folds_cover_every_review_once(tmp_path: Path) -> None:
    write_pos_neg(tmp_path, n=50)
    s = spec(path=str(tmp_path), cv_folds=5, val_split=0.0)
    src = datasets.load_text_files(s)
    tested = [t for f in datasets.folds(src, s, 0, num_words=None, maxlen=8) for t in f.test_texts or []]
    assert sorted(tested) == sorted(src.train.texts or [])


@pytest.mark.parametrize(("data", "message"), [
    ({"name": "csv"}, r"data.name='csv' is not a data source .* valid: imdb, text_files"),
    ({"name": "text_files", "path": "/x", "colums": 1}, r"data.colums is not a key of data=text_files"),
    ({"name": "imdb", "format": "csv"}, r"data.format is not a key of data=imdb"),
    ({"name": "text_files", "path": None}, r"data=text_files needs data.path"),
    ({"name": "text_files", "path": "/no/such/dir"}, r"data.path='/no/such/dir': no such file"),
    ({"name": "imdb", "cv_folds": 1}, r"data.cv_folds=1: must be 0 \(off\) or an integer >= 2"),
    ({"name": "imdb", "val_split": 1.5}, r"data.val_split=1.5: must be a fraction"),
])
def test_bad_data_config_is_one_clear_error(data: dict[str, object], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        datasets.parse_spec(data)


def write_imdb(folder: Path, n_train: int = 300, n_test: int = 100, seed: int = 0) -> Path:
    """An IMDB-format imdb.npz (word ranks from 1, ragged object arrays) and its word index,
    made from generated reviews: rank = frequency order of the generated words."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = reviews(n_train + n_test, seed)
    counts: dict[str, int] = {}
    for t, _ in pairs:
        for w in tokenize(t):
            counts[w] = counts.get(w, 0) + 1
    rank = {w: i + 1 for i, w in enumerate(sorted(counts, key=lambda w: (-counts[w], w)))}

    def ragged(part: list[tuple[str, int]]) -> np.ndarray:
        out = np.empty(len(part), dtype=object)
        for i, (t, _) in enumerate(part):
            out[i] = [rank[w] for w in tokenize(t)]
        return out

    train, test = pairs[:n_train], pairs[n_train:]
    np.savez(folder / "imdb.npz", x_train=ragged(train), y_train=np.array([y for _, y in train]),
             x_test=ragged(test), y_test=np.array([y for _, y in test]))
    (folder / "imdb_word_index.json").write_text(json.dumps(rank))
    return folder / "imdb.npz"


def test_imdb_file_uses_keras_conventions(tmp_path: Path) -> None:
    pytest.importorskip("keras")
    path = write_imdb(tmp_path, n_train=40, n_test=10)
    s = datasets.parse_spec({"name": "imdb", "path": str(path)})
    src = datasets.load_imdb(s, num_words=20, maxlen=30, padding="pre", truncating="pre")
    assert len(src.train) == 40 and src.test is not None and len(src.test) == 10
    assert src.train.ids is not None
    assert all(ids[0] == 1 for ids in src.train.ids)  # 1 starts every review
    assert max(max(ids) for ids in src.train.ids) == 19  # ids >= num_words became 2
    assert 2 in {i for ids in src.train.ids for i in ids}
    vocab = src.vocabulary
    assert vocab is not None and vocab.source == "imdb"
    # the word index gives raw text the ids the npz used: text -> ids agrees with the file
    index = json.loads((tmp_path / "imdb_word_index.json").read_text())
    word = min(index, key=index.get)  # the most frequent word: rank 1 -> id 4
    assert vocab.ids(word) == [1, 4]


def test_imdb_without_local_data_or_download_says_how_to_point_at_data(tmp_path: Path) -> None:
    """The real keras.datasets.imdb path: an empty Keras cache and no way out to the network."""
    pytest.importorskip("keras")
    env = {"KERAS_HOME": str(tmp_path / "keras"), "HTTPS_PROXY": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "PATH": "/usr/bin:/bin",
           "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    code = ("from runner.models.sentiment_cnn import datasets as d\n"
            "from runner.model import ModelError\n"
            "try:\n d.load_imdb(d.parse_spec({'name': 'imdb'}), 5000, 400, 'pre', 'pre')\n"
            "except ModelError as e:\n print('ERROR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("ERROR")]
    assert line, out.stdout + out.stderr
    assert "imdb.npz is not in the Keras cache" in line[0]
    assert "data.path=/path/to/imdb.npz" in line[0] and "data=text_files" in line[0]
    # every way out: local data the runner ships, data on the target host, a cache volume
    assert "aclImdb.tar.xz" in line[0] and "data.path=target:/path/on/host" in line[0]
    assert "cache_volume" in line[0] and "KERAS_HOME=/runner/cache/keras" in line[0]


# -- IMDB as users hold it: the aclImdb archive or tree ------------------------------------------

def write_acl_tree(root: Path, n: int = 6, seed: int = 0) -> Path:
    """An aclImdb-style tree of generated reviews: ``root/{train,test}/{pos,neg}/ID_RATING.txt``
    (``n`` per folder, with ``<br />`` tags), plus the files the real one has besides."""
    rng = random.Random(seed)
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            d = root / split / label
            d.mkdir(parents=True)
            for i in range(n):
                text = review(rng, label == "pos", rng.randint(4, 12))
                (d / f"{i}_{8 if label == 'pos' else 2}.txt").write_text(
                    f"{text.capitalize()}.<br /><br />It's {rng.choice(POSITIVE if label == 'pos' else NEGATIVE)}!")
    (root / "train" / "unsup").mkdir()
    (root / "train" / "unsup" / "0_0.txt").write_text("unlabelled, never read")
    (root / "README").write_text("not a review")
    (root / "imdb.vocab").write_text("the\nand\n")
    return root


def tar_up(src: Path, dest: Path, *, prefix: str | None = "aclImdb") -> Path:
    """``src``'s files in a tar archive at ``dest`` (compression by its suffix), under ``prefix``."""
    mode = "w:xz" if dest.name.endswith(".xz") else "w:gz" if dest.name.endswith("gz") else "w"
    with tarfile.open(dest, mode) as tar:  # type: ignore[call-overload]
        tar.add(src, arcname=prefix or ".")
    return dest


def imdb(path: Path, **values: object) -> datasets.DataSpec:
    return datasets.parse_spec({"name": "imdb", "path": str(path), **values})


@pytest.mark.parametrize(("archive", "prefix"), [("aclImdb_v1.tar.gz", "aclImdb"),
                                                 ("aclImdb.tar.xz", "aclImdb"),
                                                 ("reviews.tar", None)])
def test_aclimdb_archive_reads_like_the_tree(tmp_path: Path, archive: str, prefix: str | None) -> None:
    tree = write_acl_tree(tmp_path / "src" / "aclImdb")
    path = tar_up(tree, tmp_path / archive, prefix=prefix)
    from_tree = datasets.load_imdb(imdb(tree), None, 20, "pre", "pre")
    from_archive = datasets.load_imdb(imdb(path), None, 20, "pre", "pre")
    for src in (from_tree, from_archive):
        assert src.test is not None and len(src.train) == 12 and len(src.test) == 12
        assert src.train.labels.tolist() == [1] * 6 + [0] * 6  # unsup/, README: not reviews
        assert src.vocabulary is None  # no word index anywhere: built from the training text
    assert from_archive.train.texts == from_tree.train.texts
    assert from_archive.test is not None and from_tree.test is not None
    assert from_archive.test.texts == from_tree.test.texts
    assert from_tree.train.texts is not None and "<br />" in from_tree.train.texts[0]
    # text_files takes the archive too, and so does a folder holding aclImdb/
    again = datasets.load_text_files(spec(path=str(path)))
    assert again.train.texts == from_tree.train.texts and "aclimdb" in again.describe
    parent = datasets.load_text_files(spec(path=str(tree.parent)))
    assert parent.train.texts == from_tree.train.texts


def test_aclimdb_text_is_encoded_with_the_word_index_the_keras_way(tmp_path: Path) -> None:
    root = tmp_path / "aclImdb"
    for split in ("train", "test"):
        for label, text in (("pos", "A <br />SUPERB film, isn't it?"), ("neg", "Dull... 'the end'")):
            (root / split / label).mkdir(parents=True)
            (root / split / label / "0_1.txt").write_text(text)
    archive = tar_up(root, tmp_path / "aclImdb.tar.xz")
    index = {"the": 1, "a": 2, "br": 3, "film": 4, "superb": 5, "isn't": 6, "it": 7, "dull": 8,
             "end'": 9, "'the": 10}
    (tmp_path / "imdb_word_index.json").write_text(json.dumps(index))  # next to the archive
    src = datasets.load_imdb(imdb(archive), 10, 20, "pre", "pre")
    assert src.vocabulary is not None and src.vocabulary.source == "imdb"
    assert src.train.ids is not None and src.train.texts is not None
    # 1 starts a review, id = rank + 3, ids at or over num_words (10) are 2; "<br />" is the
    # word "br" and "isn't" one word, as in Keras' IMDB data
    assert src.train.ids == [[1, 5, 6, 8, 7, 9, 2], [1, 2, 2, 2]]
    assert src.train.labels.tolist() == [1, 0]
    # the same encoding reaches predict: raw text gets the ids the run trained on
    assert src.vocabulary.ids(src.train.texts[0]) == src.train.ids[0]
    # data.word_index wins over the file next to the path; all words kept with num_words=None
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"dull": 1}))
    src = datasets.load_imdb(imdb(archive, word_index=str(other)), None, 5, "pre", "pre")
    assert src.vocabulary is not None and src.vocabulary.num_words == 5
    assert src.train.ids == [[1, 2, 2, 2, 2, 2, 2], [1, 4, 2, 2]]
    fold = next(datasets.folds(src, imdb(archive), 0, num_words=None, maxlen=5))
    assert fold.x_test.tolist() == [[2, 2, 2, 2, 2], [0, 1, 4, 2, 2]]  # truncating "pre"


def test_pos_neg_archive_for_text_files(tmp_path: Path) -> None:
    write_pos_neg(tmp_path / "src", n=40)
    archive = tar_up(tmp_path / "src", tmp_path / "rt.tar.gz", prefix="rt-polarity")
    src = datasets.load_text_files(spec(path=str(archive)))
    loose = datasets.load_text_files(spec(path=str(tmp_path / "src")))
    assert src.test is None and src.train.texts == loose.train.texts
    assert src.train.labels.tolist() == loose.train.labels.tolist()


def test_archive_without_reviews_says_what_it_expects(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("hello")
    archive = tar_up(tmp_path / "src", tmp_path / "x.tar.gz")
    with pytest.raises(ModelError, match=r"no aclImdb reviews in this archive \(1 files"):
        datasets.load_imdb(imdb(archive), 100, 10, "pre", "pre")
    with pytest.raises(ModelError, match=r"found no reviews there"):
        datasets.load_text_files(spec(path=str(archive)))
    with pytest.raises(ModelError, match=r"not an aclImdb tree"):
        datasets.load_imdb(imdb(tmp_path / "src"), 100, 10, "pre", "pre")


@pytest.mark.parametrize("damage", ["truncated_xz", "truncated_gz", "garbage"])
def test_a_damaged_archive_is_one_clear_error(tmp_path: Path, damage: str) -> None:
    tree = write_acl_tree(tmp_path / "src" / "aclImdb", n=30)
    if damage == "garbage":
        path = tmp_path / "aclImdb_v1.tar.gz"
        path.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 8)
    else:
        full = tar_up(tree, tmp_path / ("full.tar.xz" if damage.endswith("xz") else "full.tar.gz"))
        path = tmp_path / ("aclImdb.tar.xz" if damage.endswith("xz") else "aclImdb_v1.tar.gz")
        raw = full.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    for load in (lambda: datasets.load_imdb(imdb(path), 100, 10, "pre", "pre"),
                 lambda: datasets.load_text_files(spec(path=str(path)))):
        with pytest.raises(ModelError, match=rf"data.path={path}: not a readable archive \(.+\)"):
            load()


def test_client_side_checks_need_no_numpy_and_no_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.errors import UserError
    from runner.models.sentiment_cnn import SentimentCNN, SentimentCNNConfig
    from runner.models.sentiment_cnn import spec as data_spec

    assert datasets.parse_spec is data_spec.parse_spec and datasets.SOURCES is data_spec.SOURCES
    # on the client the path need not exist (it may be target:/... or staged later)
    assert data_spec.parse_spec({"name": "imdb", "path": "/not/here"}, on_target=False).path == "/not/here"
    model = SentimentCNN(SentimentCNNConfig())
    with pytest.raises(UserError) as e:
        model.validate(tmp_path, {"name": "imdb", "colums": 1})
    assert e.value.message == "data.colums is not a key of data=imdb for sentiment_cnn."
    assert e.value.hints[0].startswith("valid keys: cv_folds, max_samples, name, path")
    # a relative path stays as the user wrote it (the core resolves and ships it); the word
    # index lying next to it becomes data.word_index so that it ships too
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imdb").mkdir()
    (tmp_path / "imdb" / "aclImdb.tar.xz").write_bytes(b"")
    data: dict[str, object] = {"name": "imdb", "path": "imdb/aclImdb.tar.xz"}
    model.validate(tmp_path, data)
    assert data == {"name": "imdb", "path": "imdb/aclImdb.tar.xz"}
    (tmp_path / "imdb" / "imdb_word_index.json").write_text("{}")
    model.validate(tmp_path, data)
    assert data == {"name": "imdb", "path": "imdb/aclImdb.tar.xz",
                    "word_index": "imdb/imdb_word_index.json"}
    on_host = {"name": "imdb", "path": "target:/data/imdb/aclImdb.tar.xz"}
    model.validate(tmp_path, on_host)
    assert "word_index" not in on_host
    assert SentimentCNN.data_paths == {"path": "any", "word_index": "file"}


SHARED_IMDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_IMDB / "aclImdb.tar.xz").is_file(), reason="no shared IMDB archive")
def test_the_real_aclimdb_archive_with_its_word_index() -> None:
    import time

    t0 = time.perf_counter()
    src = datasets.load_imdb(imdb(SHARED_IMDB / "aclImdb.tar.xz"), 5000, 400, "pre", "pre")
    seconds = time.perf_counter() - t0
    assert src.test is not None and src.train.ids is not None and src.test.ids is not None
    assert (len(src.train), len(src.test)) == (25000, 25000)
    assert int(src.train.labels.sum()) == int(src.test.labels.sum()) == 12500
    assert src.vocabulary is not None and src.vocabulary.source == "imdb"
    ids = [i for s in src.train.ids for i in s]
    assert max(ids) == 4999 and min(ids) == 1
    assert ids.count(2) / len(ids) < 0.12  # most words are among the 5000 most frequent
    print(f"read and encoded 50,000 reviews in {seconds:.1f} s")
