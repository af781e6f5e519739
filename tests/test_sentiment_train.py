"""The sentiment CNN trained for real, through the real CLI, on generated reviews (a few
hundred, whose sentiment words are learnable): metrics, device, outputs, predict, cross-
validation, length bucketing, IMDB-format data, and what ``runner --help`` must not import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_sentiment_data import write_pos_neg

pytest.importorskip("keras")
pytestmark = [pytest.mark.tf]

# a small network that learns the generated data in a few seconds
SMALL = ["model.embedding_dim=16", "model.filters=32", "model.hidden_dims=16", "model.maxlen=24",
         "model.num_words=200", "model.epochs=4", "model.batch_size=16", "model.learning_rate=0.01"]


def runner(args: list[str], cwd: Path, cache: Path, timeout: float = 180,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "RUNNER_CACHE_DIR": str(cache), **(env or {})}
    full.pop("RUNNER_HOME", None)
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=cwd, env=full, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / ".runner").mkdir(parents=True)
    return root


def only_run(proj: Path) -> Path:
    (run_dir,) = (proj / ".runner" / "runs").iterdir()
    return run_dir


def metrics(run_dir: Path) -> dict[str, list[tuple[int | None, float]]]:
    out: dict[str, list[tuple[int | None, float]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        out.setdefault(m["name"], []).append((m["step"], m["value"]))
    return out


def test_train_on_text_files_through_the_cli_then_predict(proj: Path, tmp_path: Path) -> None:
    data = write_pos_neg(tmp_path / "data", n=400)
    res = runner(["submit", "model=sentiment_cnn", "data=text_files", f"data.path={data}", *SMALL],
                 proj, tmp_path / "cache")
    assert res.returncode == 0, res.stdout + res.stderr
    run_dir = only_run(proj)
    m = metrics(run_dir)
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [s for s, _ in m[name]] == [1, 2, 3, 4], name  # one per epoch, live
    assert m["loss"][-1][1] < m["loss"][0][1]
    (test_acc,) = [v for _, v in m["test_accuracy"]]
    assert test_acc >= 0.8, f"generated sentiment words not learned: test accuracy {test_acc}"
    assert "test_loss" in m

    worker = json.loads((run_dir / "worker.json").read_text())
    device = worker["meta"]["device"]
    assert device["framework"] == "tensorflow" and device["keras_backend"] == "tensorflow"
    assert device["version"] and isinstance(device["gpus"], list)
    out = run_dir / "outputs"
    for name in ("model.keras", "vocabulary.json", "learning_curve.png", "test_predictions.tsv"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    shown = runner(["show", "last"], proj, tmp_path / "cache")
    assert "SUCCEEDED" in shown.stdout and "tensorflow" in shown.stdout
    assert "test_accuracy" in shown.stdout and "model.keras" in shown.stdout
    listed = runner(["runs"], proj, tmp_path / "cache")
    assert "SUCCEEDED" in listed.stdout and "sentiment_cnn" in listed.stdout

    # predict scores the test reviews exactly as the run did, long ones included
    from runner.registry import collect, make_plugin_manager

    rows = [ln.split("\t") for ln in (out / "test_predictions.tsv").read_text().splitlines()[1:]]
    texts = [r[2] for r in rows]
    assert any(len(t.split()) > 24 for t in texts), "the check needs reviews longer than maxlen"
    model_cls = collect(make_plugin_manager(entry_points=False)).model("sentiment_cnn")
    scores = model_cls.predict(out, texts)
    assert scores == pytest.approx([float(r[0]) for r in rows], abs=1e-5)
    good, bad = model_cls.predict(out, ["a superb and moving film", "a dreadful boring film"])
    assert good > 0.5 > bad


def test_cross_validation_with_length_buckets(proj: Path, tmp_path: Path) -> None:
    data = write_pos_neg(tmp_path / "data", n=300, seed=1)
    res = runner(["submit", "model=sentiment_cnn_multiwidth", "data=text_files", f"data.path={data}",
                  "data.cv_folds=3", "model.epochs=3", "model.embedding_dim=16", "model.filters=16",
                  "model.maxlen=24", "model.learning_rate=0.01", "model.bucket_by_length=true",
                  "model.batch_size=16"], proj, tmp_path / "cache")
    assert res.returncode == 0, res.stdout + res.stderr
    m = metrics(only_run(proj))
    assert [s for s, _ in m["fold_test_accuracy"]] == [1, 2, 3]
    assert [s for s, _ in m["val_accuracy"]] == list(range(1, 10))  # 3 folds x 3 epochs
    folds = [v for _, v in m["fold_test_accuracy"]]
    (mean,) = [v for _, v in m["cv_mean_accuracy"]]
    (std,) = [v for _, v in m["cv_std_accuracy"]]
    assert mean == pytest.approx(sum(folds) / 3) and std >= 0
    assert mean >= 0.8, f"cross-validated accuracy {mean}"
    assert "3-fold cross-validation: accuracy" in res.stdout


def test_imdb_format_file_trains_and_predicts_raw_text(proj: Path, tmp_path: Path) -> None:
    from tests.test_sentiment_data import write_imdb

    npz = write_imdb(tmp_path / "imdb", n_train=400, n_test=100)
    res = runner(["submit", "model=sentiment_cnn", "data=imdb", f"data.path={npz}", *SMALL],
                 proj, tmp_path / "cache")
    assert res.returncode == 0, res.stdout + res.stderr
    run_dir = only_run(proj)
    m = metrics(run_dir)
    assert m["test_accuracy"][0][1] >= 0.8
    vocab = json.loads((run_dir / "outputs" / "vocabulary.json").read_text())
    assert vocab["source"] == "imdb" and vocab["start_id"] == 1 and vocab["words"]
    from runner.models.sentiment_cnn import SentimentCNN

    good, bad = SentimentCNN.predict(run_dir / "outputs", ["superb, brilliant acting",
                                                           "tedious and dismal"])
    assert good > 0.5 > bad


def test_bad_data_key_is_refused_before_submitting(proj: Path, tmp_path: Path) -> None:
    data = write_pos_neg(tmp_path / "data", n=20)
    res = runner(["submit", "model=sentiment_cnn", "data=text_files", f"data.path={data}",
                  "+data.colums=2"], proj, tmp_path / "cache")
    assert res.returncode == 2
    assert "data.colums is not a key of data=text_files" in res.stderr
    assert "valid keys: " in res.stderr and "label_column" in res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert not (proj / ".runner" / "runs").exists() or not any((proj / ".runner" / "runs").iterdir())


def test_a_relative_data_path_is_taken_from_where_the_user_stands(proj: Path, tmp_path: Path) -> None:
    import json

    from runner.store import Store

    write_pos_neg(proj / "reviews", n=20)
    res = runner(["submit", "--detach", "model=sentiment_cnn", "data=text_files",
                  "data.path=reviews", "model.epochs=1"], proj, tmp_path / "cache")
    assert res.returncode == 0, res.stderr
    rec = Store(proj / ".runner").list(limit=1)[0]
    request = json.loads((rec.run_dir / "request.json").read_text())
    assert request["data"]["path"] == "reviews"  # as given; the runner resolved and recorded it
    (given,) = [d for d in request["data_inputs"] if d["key"] == "path"]
    assert given["source"] == str((proj / "reviews").resolve()) and given["kind"] == "dir"
    runner(["cancel", rec.id], proj, tmp_path / "cache")


def test_bad_model_value_is_refused_before_submitting(proj: Path, tmp_path: Path) -> None:
    res = runner(["submit", "model=sentiment_cnn", "model.padding=middle"], proj, tmp_path / "cache")
    assert res.returncode == 2
    assert "model.padding='middle' is not valid; valid: pre, post" in res.stderr
    assert not (proj / ".runner" / "runs").exists() or not any((proj / ".runner" / "runs").iterdir())


@pytest.mark.parametrize("args", [
    ["model=sentiment_cnn", "data=imdb"],
    ["model=sentiment_cnn_multiwidth", "data=text_files", "data.path=/some/reviews"],
    ["model=sentiment_cnn", "data=text_files", "data.path=/r", "data.cv_folds=10",
     "model.kernel_sizes=[3,4,5]"],
])
def test_configs_compose(proj: Path, tmp_path: Path, args: list[str]) -> None:
    res = runner(["submit", "--cfg", "job", *args], proj, tmp_path / "cache")
    assert res.returncode == 0, res.stderr
    assert "name: sentiment_cnn" in res.stdout


def test_runner_help_and_plugins_do_not_import_tensorflow(tmp_path: Path) -> None:
    code = ("import sys, contextlib, io\n"
            "from runner.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "    main(['plugins'])\n"
            "heavy = sorted(m for m in ('tensorflow', 'keras', 'matplotlib', 'jax', 'torch')"
            " if m in sys.modules)\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_imdb_archive_with_word_index_trains_and_predicts(proj: Path, tmp_path: Path) -> None:
    """data=imdb data.path=aclImdb.tar.xz: the archive is read as it lies, the word index
    beside it goes with the run (data.word_index), and predict encodes raw text the same way."""
    from tests.test_sentiment_data import tar_up, write_acl_tree

    tree = write_acl_tree(tmp_path / "src" / "aclImdb", n=150)
    (tmp_path / "imdb").mkdir()
    archive = tar_up(tree, tmp_path / "imdb" / "aclImdb.tar.xz")
    words = sorted({w for f in tree.rglob("*.txt") for w in f.read_text().lower().replace(
        "<br />", " br ").replace(".", " ").replace("!", " ").split()})
    (tmp_path / "imdb" / "imdb_word_index.json").write_text(
        json.dumps({w: i + 1 for i, w in enumerate(words)}))
    res = runner(["submit", "model=sentiment_cnn", "data=imdb", f"data.path={archive}", *SMALL],
                 proj, tmp_path / "cache")
    assert res.returncode == 0, res.stdout + res.stderr
    run_dir = only_run(proj)
    request = json.loads((run_dir / "request.json").read_text())
    assert request["data"]["word_index"] == str(tmp_path / "imdb" / "imdb_word_index.json")
    assert metrics(run_dir)["test_accuracy"][0][1] >= 0.8
    worker = json.loads((run_dir / "worker.json").read_text())
    assert worker["meta"]["dataset"]["train"] == 300 and worker["meta"]["dataset"]["test"] == 300
    assert worker["meta"]["dataset"]["encoding"] == "IMDB word index"
    from runner.models.sentiment_cnn import SentimentCNN

    good, bad = SentimentCNN.predict(run_dir / "outputs", ["Superb, brilliant!", "Tedious; dismal."])
    assert good > 0.5 > bad


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("bucket", [False, True])
def test_other_keras_backends(proj: Path, tmp_path: Path, backend: str, bucket: bool) -> None:
    """model.keras_backend=jax|torch where that framework is installed (not in the project's
    extras: these skip unless the interpreter has it)."""
    pytest.importorskip(backend)
    data = write_pos_neg(tmp_path / "data", n=300)
    res = runner(["submit", "model=sentiment_cnn", "data=text_files", f"data.path={data}", *SMALL,
                  f"model.keras_backend={backend}", f"model.bucket_by_length={str(bucket).lower()}"],
                 proj, tmp_path / "cache", timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    run_dir = only_run(proj)
    device = json.loads((run_dir / "worker.json").read_text())["meta"]["device"]
    assert device["framework"] == backend and device["keras_backend"] == backend
    assert metrics(run_dir)["test_accuracy"][0][1] >= 0.8
    assert (run_dir / "outputs" / "model.keras").stat().st_size > 0
