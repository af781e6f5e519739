"""`runner plot` through the CLI on runs of a real sweep: learning curves overlaid, a metric
against a swept key with one series per other key, and the errors that list what exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.store import Store

from .conftest import run_cli
from .test_client_without_framework import SITECUSTOMIZE

pytest.importorskip("matplotlib", reason="the plot extra is not installed")

JOB = """\
import os, sys
import runner
lr, width = int(os.environ["RUNNER_SEED"]) / 10, int(sys.argv[1])
for step in range(5):
    runner.log_metric("loss", 1 / (1 + lr * width * (step + 1)), step=step)
if width == 0:
    sys.exit("width 0: failing before the accuracy")
runner.log_metric("accuracy", 0.5 + lr * width / 20)
"""

#: matplotlib's first two series colours (the default cycle's C0 and C1)
BLUE, ORANGE = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[str], list[str]]:
    """A project with one finished sweep: seed=1,2,4 x model.args=[8],[16],[0] (the [0]
    jobs fail before logging their accuracy); the sweep id, the ids of the runs that
    succeeded and of those that failed."""
    project = tmp_path_factory.mktemp("plots") / "proj"
    (project / ".runner").mkdir(parents=True)
    (project / "job.py").write_text(JOB)
    res = run_cli("submit", "-m", "model=script", "model.path=job.py", "seed=1,2,4",
                  "model.args=[8],[16],[0]", cwd=project)
    assert res.returncode == 1, res.stderr  # some jobs failed
    records = Store(project / ".runner").list()
    assert len(records) == 9 and records[0].sweep_id
    ok = [r.id for r in records if r.state.value == "SUCCEEDED"]
    failed = [r.id for r in records if r.state.value == "FAILED"]
    assert len(ok) == 6 and len(failed) == 3
    return project, records[0].sweep_id, ok, failed


def _pixels(path: Path) -> set[tuple[int, int, int]]:
    import matplotlib.image

    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300, img.shape
    return {tuple(int(round(c * 255)) for c in px[:3]) for row in img[::2] for px in row[::2]}


def _near(colours: set[tuple[int, int, int]], want: tuple[int, int, int]) -> bool:
    return any(sum(abs(a - b) for a, b in zip(c, want, strict=True)) < 12 for c in colours)


def test_learning_curves_of_two_runs_are_overlaid(swept: tuple[Path, str, list[str], list[str]],
                                                  tmp_path: Path) -> None:
    project, _, ids, _ = swept
    out = tmp_path / "curves.png"
    res = run_cli("plot", ids[0], ids[1], "-o", str(out), cwd=project)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"wrote {out}"
    assert "not drawn (one value per run): accuracy" in res.stderr
    colours = _pixels(out)
    assert _near(colours, BLUE) and _near(colours, ORANGE)  # one line per run


def test_the_default_file_is_named_after_what_it_shows(swept: tuple[Path, str, list[str], list[str]]) -> None:
    project, _, ids, _ = swept
    res = run_cli("plot", ids[0], cwd=project)
    assert res.returncode == 0, res.stderr
    assert (project / f"plot-{ids[0]}-curves.png").is_file()


def test_a_sweep_is_drawn_against_a_swept_key_one_series_per_other_key(
        swept: tuple[Path, str, list[str], list[str]], tmp_path: Path) -> None:
    project, sweep_id, _, failed = swept
    out = tmp_path / "sweep.png"
    res = run_cli("plot", "--sweep", sweep_id, "--x", "seed", "--y", "accuracy", "-o", str(out),
                  cwd=project)
    assert res.returncode == 0, res.stderr
    (note,) = [n for n in res.stderr.splitlines() if n.startswith("left out (no accuracy logged): ")]
    assert sorted(note.split(": ", 1)[1].split(", ")) == sorted(failed)
    colours = _pixels(out)
    assert _near(colours, BLUE) and _near(colours, ORANGE)  # model.args=[8] and [16]
    # one value on the x axis: a single series
    single = tmp_path / "one.png"
    res = run_cli("plot", "--sweep", sweep_id, "--x", "model.args", "--y", "loss", "-o",
                  str(single), cwd=project)
    assert res.returncode == 0, res.stderr
    assert _near(_pixels(single), (0x2C, 0xA0, 0x2C))  # three seeds: three series (C2 green)


def test_unknown_metric_or_key_lists_what_exists(swept: tuple[Path, str, list[str], list[str]]) -> None:
    project, sweep_id, ids, _ = swept
    res = run_cli("plot", "--sweep", sweep_id, "--x", "seed", "--y", "acc", cwd=project)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"no run of sweep {sweep_id} logged a metric 'acc'" in res.stderr
    assert "logged: accuracy, loss" in res.stderr
    res = run_cli("plot", "--sweep", sweep_id, "--x", "model.lr", "--y", "accuracy", cwd=project)
    assert res.returncode == 2
    assert f"'model.lr' is not a key that sweep {sweep_id} varied" in res.stderr
    assert "swept keys: seed, model.args" in res.stderr or "swept keys: model.args, seed" in res.stderr
    res = run_cli("plot", ids[0], "--y", "val_loss", cwd=project)
    assert res.returncode == 2 and "logged: accuracy, loss" in res.stderr
    res = run_cli("plot", "--x", "seed", "--y", "accuracy", cwd=project)
    assert res.returncode == 2 and "--x KEY draws a sweep" in res.stderr
    res = run_cli("plot", cwd=project)
    assert res.returncode == 2 and "runner plot needs run ids, --sweep SWEEP" in res.stderr
    assert not list(project.glob("plot-*sweep*"))


def test_without_matplotlib_plot_says_how_to_install(swept: tuple[Path, str, list[str], list[str]],
                                                    tmp_path: Path) -> None:
    project, _, ids, _ = swept
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE.replace(
        "BLOCKED = (", "BLOCKED = ('matplotlib', "))
    res = run_cli("plot", ids[0], cwd=project, env={"PYTHONPATH": str(tmp_path)})
    assert res.returncode == 2
    assert res.stderr.strip() == "error: matplotlib is not installed: pip install 'runner[plot]'"


def test_swept_values_are_ordered_and_spaced_as_numbers() -> None:
    from runner.plugins.plots import _number, _order

    assert _number("[0.01]") == 0.01 and _number("3") == 3.0  # a swept script argument too
    assert _number("[1,2]") is None and _number("nan") is None and _number("relu") is None
    assert sorted(["[16]", "relu", "[8]", "[2]"], key=_order) == ["[2]", "[8]", "[16]", "relu"]
