"""What comes back from a run (runner show, runner fetch) and how many runs one cancel stops,
driven through the CLI on the local target."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from runner.testing import processes_with, wait_until_gone

from .conftest import run_cli

WRITER = """
import os, runner
out = runner.outputs_dir()
(out / "model.txt").write_text("weights")
(out / "deep").mkdir()
(out / "deep" / "curve.csv").write_text("1,2\\n")
with open(out / "sparse.bin", "wb") as f:  # 1 GiB of which nothing is written
    f.truncate(1 << 30)
os.symlink("{secret}", out / "stolen")
os.symlink("/", out / "root")
for i in range(60):
    (out / f"ckpt-{{i:02d}}.txt").write_text(str(i))
"""


def test_show_and_fetch_never_follow_links_out_of_outputs(project: Path, tmp_path: Path) -> None:
    secret = tmp_path / "not-yours.txt"
    secret.write_text("content-from-elsewhere-91c2\n")
    (project / "writer.py").write_text(WRITER.format(secret=secret))
    r = run_cli("submit", "model=script", "model.path=writer.py", cwd=project)
    assert r.returncode == 0, r.stderr
    show = run_cli("show", "last", cwd=project)
    assert show.returncode == 0, show.stderr
    assert "stolen  (a link: not followed, not fetched)" in show.stdout
    assert "more files" in show.stdout and "runner fetch" in show.stdout  # 63 files, 50 listed
    dest = tmp_path / "fetched"
    res = run_cli("fetch", "last", str(dest), cwd=project)
    assert res.returncode == 0, res.stderr
    assert "fetched 63 file(s)" in res.stdout and "not fetched: 2 link(s)" in res.stderr
    assert (dest / "model.txt").read_text() == "weights"
    assert (dest / "deep" / "curve.csv").read_text() == "1,2\n"
    assert not (dest / "stolen").exists() and not (dest / "root").exists()
    sparse = dest / "sparse.bin"
    assert sparse.stat().st_size == 1 << 30 and sparse.stat().st_blocks * 512 < (1 << 20)
    for p in dest.rglob("*"):
        assert not p.is_symlink()
        if p.is_file() and p.stat().st_size < 1 << 20:
            assert "content-from-elsewhere" not in p.read_text(errors="replace")
    # the default destination is named after the run, here
    res = run_cli("fetch", "last", cwd=project)
    assert res.returncode == 0 and any(p.name.endswith("-outputs") for p in project.iterdir())


def test_fetch_of_a_run_without_outputs_says_so(project: Path) -> None:
    (project / "quiet.py").write_text("pass\n")
    assert run_cli("submit", "model=script", "model.path=quiet.py", cwd=project).returncode == 0
    res = run_cli("fetch", "last", cwd=project)
    assert res.returncode == 2 and "has no outputs" in res.stderr and "Traceback" not in res.stderr


def test_one_cancel_stops_many_stubborn_runs_at_once(project: Path) -> None:
    marker = f"stubborn-{uuid.uuid4().hex}"
    (project / "stubborn.py").write_text(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('holding', flush=True)\ntime.sleep(600)\n")
    ids = []
    for _ in range(4):
        r = run_cli("submit", "--detach", "model=script", "model.path=stubborn.py",
                    f"model.args=[{marker}]", "target.cancel_grace=3", cwd=project)
        assert r.returncode == 0, r.stderr
        ids.append(r.stderr.split("run ", 1)[1].split(":", 1)[0])
    deadline = time.monotonic() + 60
    while len(processes_with(marker)) < 4:
        assert time.monotonic() < deadline, "the runs never started"
        time.sleep(0.2)
    res = run_cli("cancel", *ids, cwd=project, timeout=120)
    assert res.returncode == 0, res.stderr
    assert all(f"run {i}: CANCELLED" in res.stderr for i in ids), res.stderr
    assert wait_until_gone(marker) == []
    listing = run_cli("runs", cwd=project).stdout
    assert all(i in listing for i in ids) and listing.count("CANCELLED") == 4


def test_logs_of_a_run_that_wrote_none_say_so(project: Path) -> None:
    (project / "silent.py").write_text("pass\n")
    assert run_cli("submit", "model=script", "model.path=silent.py", cwd=project).returncode == 0
    log = next((project / ".runner" / "runs").iterdir()) / "log.txt"
    os.truncate(log, 0)
    res = run_cli("logs", "last", cwd=project)
    assert res.returncode == 0 and res.stdout == "" and "has no log yet" in res.stderr
