"""Data travels with the run, through the CLI as a user types it, on the local target: a
relative path (from where the user stands), an absolute one, data already on the target, what
the ledger records (`runner show`, `runner compare`), and every kind of bad data input."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from runner import data as rdata
from runner.errors import UserError
from runner.store import Store

from .conftest import run_cli

READER = """\
import os, sys
import runner
p = runner.data_path()
files = sorted(str(f.relative_to(p)) for f in p.rglob('*') if f.is_file()) if p.is_dir() else [p.name]
print('DATA', p, len(files), flush=True)
first = p / files[0] if p.is_dir() else p
print('FIRST', first.read_text().strip(), flush=True)
"""


@pytest.fixture
def proj(project: Path) -> Path:
    (project / "read_data.py").write_text(READER)
    (project / ".runnerignore").write_text("data/\n")  # data travels as data, not as code
    reviews = project / "data" / "reviews"
    reviews.mkdir(parents=True)
    (reviews / "a.pos").write_text("a fine film\n")
    (reviews / "b.neg").write_text("a dull film\n")
    return project


def submit(proj: Path, *args: str, cwd: Path | None = None):  # type: ignore[no-untyped-def]
    script = os.path.relpath(proj / "read_data.py", cwd or proj)
    return run_cli("submit", "model=script", f"model.path={script}", *args, cwd=cwd or proj)


def last_run(proj: Path):  # type: ignore[no-untyped-def]
    return Store(proj / ".runner").list(limit=1)[0]


def test_a_relative_data_path_is_read_from_where_the_user_stands(proj: Path) -> None:
    sub = proj / "data"
    r = submit(proj, "data.path=reviews", cwd=sub)  # relative to the working directory
    assert r.returncode == 0, r.stderr
    assert f"DATA {proj / 'data' / 'reviews'} 2" in r.stdout  # local: used in place
    assert "FIRST a fine film" in r.stdout
    rec = last_run(proj)
    request = json.loads((rec.run_dir / "request.json").read_text())
    assert request["data"]["path"] == "reviews"  # as given; the worker finds it
    (inp,) = request["data_inputs"]
    assert inp["kind"] == "dir" and inp["files"] == 2 and len(inp["digest"]) == 64
    show = run_cli("show", rec.id, cwd=proj)
    assert show.returncode == 0, show.stderr
    assert "data.path" in show.stdout and inp["digest"][:12] in show.stdout
    assert "2 file(s)" in show.stdout and "read at" in show.stdout


def test_an_absolute_file_path_and_a_compare_that_sees_new_content(proj: Path, tmp_path: Path) -> None:
    f = tmp_path / "elsewhere" / "notes.txt"
    f.parent.mkdir()
    f.write_text("first version\n")
    r1 = submit(proj, f"data.path={f}")
    assert r1.returncode == 0, r1.stderr
    assert "FIRST first version" in r1.stdout
    one = last_run(proj).id
    f.write_text("second version\n")
    r2 = submit(proj, f"data.path={f}")
    assert "FIRST second version" in r2.stdout
    two = last_run(proj).id
    cmp = run_cli("compare", one, two, cwd=proj)
    assert cmp.returncode == 0, cmp.stderr
    assert "data.path (content)" in cmp.stdout  # same path, other data: compare says so


def test_data_already_on_the_target_is_used_where_it_is(proj: Path, tmp_path: Path) -> None:
    there = tmp_path / "on-host"
    there.mkdir()
    (there / "x.txt").write_text("resident\n")
    r = submit(proj, f"data.path=target:{there}")
    assert r.returncode == 0, r.stderr
    assert f"DATA {there} 1" in r.stdout and "FIRST resident" in r.stdout
    show = run_cli("show", "last", cwd=proj)
    assert "on the target, not shipped" in show.stdout


def _no_traceback(r) -> None:  # type: ignore[no-untyped-def]
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "looks like a bug" not in r.stderr


def test_bad_data_inputs_are_one_clear_error_each(proj: Path, tmp_path: Path) -> None:
    r = submit(proj, "data.path=no/such/folder")
    _no_traceback(r)
    assert "data.path='no/such/folder': no such file or folder" in r.stderr
    assert "relative to your working directory" in r.stderr

    r = submit(proj, "data.path=target:/no/such/place")
    _no_traceback(r)
    assert "/no/such/place does not exist on this machine" in r.stderr

    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "ok.txt").write_text("x\n")
    (linked / "escape").symlink_to("/etc/hostname")
    r = submit(proj, f"data.path={linked}")
    _no_traceback(r)
    assert "links that point outside it" in r.stderr and "escape -> /etc/hostname" in r.stderr

    archive = tmp_path / "reviews.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(proj / "data" / "reviews", arcname="reviews")
    archive.write_bytes(archive.read_bytes()[:-40])  # a download cut off
    r = submit(proj, f"data.path={archive}")
    _no_traceback(r)
    assert "not a readable archive" in r.stderr and "cut off" in r.stderr

    r = submit(proj, "data.path=data/reviews", "target.max_data_mb=0.00001")
    _no_traceback(r)
    assert "over the limit of target local (target.max_data_mb=1e-05)" in r.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    r = submit(proj, f"data.path={empty}")
    _no_traceback(r)
    assert "is empty" in r.stderr
    # none of them started: only the on-target check (made at prepare) left a record, and a true one
    (rec,) = Store(proj / ".runner").list()
    assert rec.state.value == "FAILED" and rec.message.startswith("could not start: data.path=")


def test_unreadable_files_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "secret.txt").write_text("x")
    (folder / "fine.txt").write_text("y")
    (folder / "secret.txt").chmod(0o600)
    (folder / "fine.txt").chmod(0o644)
    if os.geteuid() == 0:  # root reads everything: look at it as another user would
        monkeypatch.setattr(rdata.os, "geteuid", lambda: 4242)
    with pytest.raises(UserError) as e:
        rdata.collect({"path": str(folder)}, {"path": "any"}, cwd=tmp_path,
                      cache_path=tmp_path / "h.db")
    assert "1 file(s) cannot be read: secret.txt (permission denied)" in e.value.render()


def test_a_second_collect_of_unchanged_data_reads_no_file(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "d"
    (folder / "sub").mkdir(parents=True)
    for i in range(20):
        (folder / "sub" / f"{i}.txt").write_text(str(i))
    calls = []
    real = rdata._sha256
    monkeypatch.setattr(rdata, "_sha256", lambda p: calls.append(p) or real(p))
    kw = dict(cwd=tmp_path, cache_path=tmp_path / "h.db")
    (first,) = rdata.collect({"path": "d"}, {"path": "dir"}, **kw)  # type: ignore[arg-type]
    assert len(calls) == 20 and first.files == 20
    calls.clear()
    (second,) = rdata.collect({"path": "d"}, {"path": "dir"}, **kw)  # type: ignore[arg-type]
    assert calls == [] and second.digest == first.digest
    (folder / "sub" / "3.txt").write_text("changed")
    (third,) = rdata.collect({"path": "d"}, {"path": "dir"}, **kw)  # type: ignore[arg-type]
    assert len(calls) == 1 and third.digest != first.digest
    assert third.manifest["sub/3.txt"][1] == len("changed")


# -- the sentiment CNN on real reviews, on this machine --------------------------------------------
MR = Path(__file__).resolve().parents[2] / "shared" / "data" / "rt-polarity"
TINY_CNN = ["model=sentiment_cnn", "data=text_files", "data.max_samples=600", "model.epochs=1",
            "model.maxlen=20", "model.num_words=500", "model.filters=8", "model.hidden_dims=8",
            "model.embedding_dim=8", "model.batch_size=32"]


def _reviews(where: Path) -> Path:
    if MR.is_dir():
        return MR
    where.mkdir(parents=True, exist_ok=True)
    (where / "r.pos").write_text("a wonderful moving film\ngreat acting\n" * 150)
    (where / "r.neg").write_text("a dull boring mess\nwooden acting\n" * 150)
    return where


@pytest.mark.tf
@pytest.mark.slow
def test_the_lab_journey_on_the_local_target(project: Path, tmp_path: Path) -> None:
    pytest.importorskip("keras")
    data = _reviews(tmp_path / "reviews")
    r = run_cli("doctor", "local", cwd=project)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("prepare", *TINY_CNN, f"data.path={data}", cwd=project)
    assert r.returncode == 0 and "cached" in r.stderr, r.stderr  # env=current: nothing to build
    seen = {}
    for how, path in (("relative", os.path.relpath(data, project)), ("absolute", str(data)),
                      ("on target", f"target:{data}")):
        r = run_cli("submit", "--detach", *TINY_CNN, f"data.path={path}", cwd=project)
        assert r.returncode == 0, r.stderr
        run_id = r.stderr.split("run ", 1)[1].split(":", 1)[0]
        logs = run_cli("logs", run_id, "-f", cwd=project, timeout=300)
        assert "val_accuracy:" in logs.stdout and "SUCCEEDED" in logs.stderr, logs.stdout[-2000:] + logs.stderr
        show = run_cli("show", run_id, cwd=project)
        assert "SUCCEEDED" in show.stdout and f"read at {data}" in show.stdout, show.stdout
        assert "gpus" in show.stdout
        seen[how] = run_id
    pred = run_cli("predict", seen["relative"], "a wonderful moving film", cwd=project, timeout=120)
    assert pred.returncode == 0, pred.stderr
    assert "a wonderful moving film" in pred.stdout
    score, label = pred.stdout.split()[:2]  # the model says what its number means
    assert 0 <= float(score) <= 1 and label in ("positive", "negative")
    # a file of scraped reviews: one input per line, whatever separators the text holds
    reviews = tmp_path / "to_score.txt"
    reviews.write_bytes("a fine film\u2028with a twist\r\nwooden\x85acting\n\nthe end\n".encode())
    pred = run_cli("predict", seen["relative"], "--file", str(reviews), "--format", "tsv",
                   cwd=project, timeout=120)
    assert pred.returncode == 0, pred.stderr
    rows = [ln.split("\t") for ln in pred.stdout.split("\n") if ln]
    assert [r[0] for r in rows] == ["1", "2", "4"]  # line numbers join scores to their lines
    assert rows[0][2] == "a fine film\u2028with a twist" and rows[1][2] == "wooden\x85acting"


def test_data_inside_the_project_travels_as_data_not_again_as_code(proj: Path) -> None:
    (proj / ".runnerignore").unlink()
    (proj / "data" / "notes.md").write_text("part of the code\n")
    r = submit(proj, "data.path=data/reviews")
    assert r.returncode == 0, r.stderr
    code = last_run(proj).run_dir / "code"
    assert (code / "read_data.py").is_file() and (code / "data" / "notes.md").is_file()
    assert not (code / "data" / "reviews").exists()
