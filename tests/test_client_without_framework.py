"""A client with no ML framework: NumPy, TensorFlow, Keras, JAX and PyTorch cannot be imported
(a laptop that only submits to a GPU box). Composing, validating, listing, showing and comparing
runs must work there, and ``predict`` must say in one line what to install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import run_cli
from .test_sentiment_data import write_pos_neg

BLOCKED = ("numpy", "tensorflow", "keras", "jax", "jaxlib", "torch")

SITECUSTOMIZE = f"""\
import sys

BLOCKED = {BLOCKED!r}


class _NoFramework:
    \"\"\"Makes the frameworks look uninstalled, as on a client that never had them.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _NoFramework())
"""

SCRIPT = """\
import sys
import runner
runner.log_metric("accuracy", float(sys.argv[1]))
try:
    import numpy
except ModuleNotFoundError:
    print("no numpy here")
"""


@pytest.fixture
def bare(tmp_path: Path) -> dict[str, str]:
    """The environment of a client where the frameworks cannot be imported."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {"PYTHONPATH": str(site)}


def test_the_blocker_blocks(project: Path, bare: dict[str, str]) -> None:
    code = ("import importlib\n"
            f"for m in {BLOCKED!r}:\n"
            "    try:\n        importlib.import_module(m)\n        print('IMPORTED', m)\n"
            "    except ModuleNotFoundError:\n        pass\n"
            "import runner.models.sentiment_cnn.spec, runner.models.sentiment_cnn.model\n"
            "print('OK')\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **bare},
                         capture_output=True, text=True, timeout=60, cwd=project)
    assert out.stdout.strip() == "OK", out.stdout + out.stderr


def test_compose_validate_submit_list_show_compare(project: Path, tmp_path: Path,
                                                   bare: dict[str, str]) -> None:
    data = write_pos_neg(tmp_path / "reviews", n=20)
    res = run_cli("submit", "--cfg", "job", "model=sentiment_cnn", "data=text_files",
                  f"data.path={data}", cwd=project, env=bare)
    assert res.returncode == 0, res.stderr
    assert "name: sentiment_cnn" in res.stdout and "Traceback" not in res.stderr
    # validation runs here too: a bad data key is refused with the valid ones, no NumPy needed
    res = run_cli("submit", "model=sentiment_cnn", "data=text_files", f"data.path={data}",
                  "+data.colums=2", cwd=project, env=bare)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "data.colums is not a key of data=text_files" in res.stderr
    assert "valid keys: " in res.stderr and "Traceback" not in res.stderr

    # a real run from this client: a script model needs no framework (the local target's
    # worker runs in this same framework-less interpreter)
    (project / "job.py").write_text(SCRIPT)
    for acc in ("0.5", "0.75"):
        res = run_cli("submit", "model=script", "model.path=job.py", f"model.args=[{acc}]",
                      cwd=project, env=bare)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "no numpy here" in res.stdout
    listed = run_cli("runs", cwd=project, env=bare)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("SUCCEEDED") == 2 and "accuracy=0.75" in listed.stdout
    shown = run_cli("show", "last", cwd=project, env=bare)
    assert shown.returncode == 0 and "SUCCEEDED" in shown.stdout and "accuracy" in shown.stdout
    from runner.store import Store

    ids = [r.id for r in Store(project / ".runner").list(limit=2)]
    compared = run_cli("compare", *ids, cwd=project, env=bare)
    assert compared.returncode == 0, compared.stderr
    assert "0.5" in compared.stdout and "0.75" in compared.stdout
    assert "Traceback" not in listed.stderr + shown.stderr + compared.stderr


@pytest.mark.tf
@pytest.mark.slow
def test_predict_names_what_to_install(project: Path, tmp_path: Path, bare: dict[str, str]) -> None:
    """A run trained where Keras is installed, its outputs here; predict from the bare client."""
    pytest.importorskip("keras")
    data = write_pos_neg(tmp_path / "reviews", n=60)
    res = run_cli("submit", "model=sentiment_cnn", "data=text_files", f"data.path={data}",
                  "model.epochs=1", "model.maxlen=16", "model.filters=8", "model.hidden_dims=8",
                  "model.embedding_dim=8", "model.num_words=100", cwd=project, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    shown = run_cli("show", "last", cwd=project, env=bare)
    assert shown.returncode == 0 and "SUCCEEDED" in shown.stdout, shown.stderr
    res = run_cli("predict", "last", "a superb film", cwd=project, env=bare)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("error: sentiment_cnn predict needs NumPy, Keras and a Keras backend")
    assert "'numpy' is not installed here" in line and "pip install 'runner[tf]'" in line
