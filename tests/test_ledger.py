"""The ledger tells the truth: under concurrent clients, when it is damaged or unusable, and
rebuilt from the run directories it indexes. Every check drives the CLI as a user types it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import run_cli

FAST = "import sys\nprint('job', sys.argv[1:])\n"


def _submit(project: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "submit", "model=script", "model.path=fast.py", *extra],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_clients_never_record_a_succeeded_run_as_lost(project: Path) -> None:
    (project / "fast.py").write_text(FAST)
    n, parallel = 16, 8
    procs: list[subprocess.Popen[str]] = []
    results = []
    for i in range(n):
        procs.append(_submit(project, f"model.args=[{i}]"))
        if len(procs) >= parallel:
            p = procs.pop(0)
            results.append((p.wait(300), *p.communicate()))
    for p in procs:
        results.append((p.wait(300), *p.communicate()))
    assert all(rc == 0 for rc, _, _ in results), [err for rc, _, err in results if rc]
    listing = run_cli("runs", "-n", "0", cwd=project)
    assert listing.returncode == 0, listing.stderr
    rows = [ln for ln in listing.stdout.splitlines() if "script" in ln]
    assert len(rows) == n, listing.stdout
    assert all("SUCCEEDED" in ln for ln in rows), listing.stdout  # none LOST, none left RUNNING


def test_a_run_being_recorded_by_a_live_client_is_not_taken_for_lost(project: Path) -> None:
    # another client has created the row and not yet written anything else (the moment in
    # which concurrent submits used to see a "lost" run and record that lie for good)
    code = ("import sys, time\nfrom pathlib import Path\nfrom runner.store import Store\n"
            "rec = Store.for_project(Path.cwd()).create_run(target='local', backend='local', "
            "model='script')\nprint(rec.id, flush=True)\ntime.sleep(60)\n")
    creator = subprocess.Popen([sys.executable, "-c", code], cwd=project, stdout=subprocess.PIPE,
                               text=True)
    try:
        assert creator.stdout is not None
        run_id = creator.stdout.readline().strip()
        assert not (project / ".runner" / "runs" / run_id / "meta.json").exists()
        listing = run_cli("runs", "-n", "0", cwd=project)
        line = next(ln for ln in listing.stdout.splitlines() if run_id in ln)
        assert "QUEUED" in line, listing.stdout
    finally:
        creator.kill()
        creator.wait()
    # once its creator is gone and nothing of the run started, it is lost, and says why
    listing = run_cli("runs", "-n", "0", cwd=project)
    line = next(ln for ln in listing.stdout.splitlines() if run_id in ln)
    assert "LOST" in line, listing.stdout


def test_a_run_whose_client_died_before_submitting_is_lost_only_then(project: Path) -> None:
    from runner.store import Store

    store = Store.for_project(project)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    from runner.proc import identity

    gone = identity() | {"pid": int(dead.stdout), "start": "0"}
    orphan = store.create_run(target="local", backend="local", model="script", creator=gone)
    mine = store.create_run(target="local", backend="local", model="script")  # this process lives
    listing = run_cli("runs", "-n", "0", cwd=project)
    line = {r: next(ln for ln in listing.stdout.splitlines() if r in ln) for r in (orphan.id, mine.id)}
    assert "LOST" in line[orphan.id] and "QUEUED" in line[mine.id], listing.stdout


def _damage(kind: str, project: Path) -> dict[str, str]:
    home = project / ".runner"
    db = home / "runs.db"
    if kind == "truncated":
        data = db.read_bytes()
        for side in ("runs.db-wal", "runs.db-shm"):
            (home / side).unlink(missing_ok=True)
        db.write_bytes(data[:100])
    elif kind == "random bytes":
        for side in ("runs.db-wal", "runs.db-shm"):
            (home / side).unlink(missing_ok=True)
        db.write_bytes(os.urandom(8192))
    elif kind == "runs.db is a folder":
        for side in ("runs.db-wal", "runs.db-shm"):
            (home / side).unlink(missing_ok=True)
        db.unlink()
        db.mkdir()
    elif kind == ".runner is a file":
        shutil.rmtree(home)
        home.write_text("not a folder\n")
        (project / ".git").mkdir()  # so the project root is still found
    elif kind == "RUNNER_HOME under a file":
        (project / "plain").write_text("x")
        return {"RUNNER_HOME": str(project / "plain" / "ledger")}
    elif kind == "name too long":
        return {"RUNNER_HOME": str(project / ("x" * 300))}
    return {}


@pytest.mark.parametrize("kind", ["truncated", "random bytes", "runs.db is a folder",
                                  ".runner is a file", "RUNNER_HOME under a file", "name too long"])
def test_an_unusable_ledger_is_one_clear_error(project: Path, kind: str) -> None:
    (project / "fast.py").write_text(FAST)
    assert run_cli("submit", "model=script", "model.path=fast.py", cwd=project).returncode == 0
    env = _damage(kind, project)
    res = run_cli("runs", cwd=project, env=env)
    assert res.returncode == 2, (kind, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and "looks like a bug" not in res.stderr, res.stderr
    first = res.stderr.splitlines()[0]
    assert first.startswith("error: the run ledger") and ("runs.db" in first or "ledger" in first), res.stderr
    assert len(res.stderr.splitlines()) >= 2  # what to do


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_project_is_one_clear_error(project: Path) -> None:
    (project / "fast.py").write_text(FAST)
    assert run_cli("submit", "model=script", "model.path=fast.py", cwd=project).returncode == 0
    for p in [project / ".runner", *(project / ".runner").rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        res = run_cli("submit", "model=script", "model.path=fast.py", cwd=project)
    finally:
        for p in [project / ".runner", *(project / ".runner").rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr


def test_a_damaged_ledger_is_rebuilt_from_the_run_directories(project: Path) -> None:
    (project / "fast.py").write_text("import runner\nrunner.log_metric('acc', 0.5)\n")
    ids = []
    for i in range(2):
        res = run_cli("submit", "model=script", "model.path=fast.py", f"+tag={i}", cwd=project)
        assert res.returncode == 0, res.stderr
        ids.append(res.stderr.split("run ", 1)[1].split(":", 1)[0])
    sweep = run_cli("submit", "-m", "model=script", "model.path=fast.py", "+x=1,2", cwd=project,
                    timeout=300)
    assert sweep.returncode == 0, sweep.stderr
    before = run_cli("runs", "-n", "0", cwd=project).stdout
    _damage("random bytes", project)
    assert run_cli("runs", cwd=project).returncode == 2
    res = run_cli("ledger", "rebuild", cwd=project)
    assert res.returncode == 0, res.stderr
    assert "4 runs" in res.stdout and "1 sweep" in res.stdout and "runs.db.broken-" in res.stdout
    after = run_cli("runs", "-n", "0", cwd=project)
    assert after.returncode == 0, after.stderr
    for rid in ids:
        line = next(ln for ln in after.stdout.splitlines() if rid in ln)
        assert "SUCCEEDED" in line and "acc=0.5" in line, after.stdout
    assert len([ln for ln in after.stdout.splitlines() if "SUCCEEDED" in ln]) == \
        len([ln for ln in before.splitlines() if "SUCCEEDED" in ln]) == 4
    shown = run_cli("show", ids[0], cwd=project)
    assert shown.returncode == 0 and "SUCCEEDED" in shown.stdout + shown.stderr
    sweep_id = next(w for w in sweep.stderr.split() if w.startswith("s") and w[1:3].isdigit())
    assert run_cli("sweep", sweep_id.rstrip(":"), cwd=project).returncode == 0


FILL = """\
import runner
print("filling the disk", flush=True)
with open(runner.outputs_dir() / "big.bin", "wb") as f:
    while True:
        f.write(b"x" * 65536)
"""


def test_a_run_that_fills_the_disk_is_recorded_failed_and_says_so(tiny_fs: Path) -> None:
    """The project (ledger and run directories) on a disk the run fills: every command says
    so clearly, and once space is freed the ledger records the run as FAILED with the reason
    (its final status was kept in the block its status file already had), never LOST."""
    from .conftest import run_cli

    proj = tiny_fs / "proj"
    (proj / ".runner").mkdir(parents=True)
    (proj / "fill.py").write_text(FILL)
    r = run_cli("submit", "model=script", "model.path=fill.py", cwd=proj)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "looks like a bug" not in r.stderr, r.stderr
    assert "no space left" in r.stderr.lower()
    full = run_cli("runs", cwd=proj)
    assert full.returncode == 2 and "has no space left" in full.stderr
    assert "damaged" not in full.stderr  # SQLite's "disk I/O error" is not a broken ledger
    for big in (proj / ".runner" / "runs").glob("*/outputs/big.bin"):
        big.unlink()
    runs = run_cli("runs", cwd=proj)
    assert runs.returncode == 0, runs.stderr
    assert "FAILED" in runs.stdout and "LOST" not in runs.stdout
    show = run_cli("show", "last", cwd=proj)
    assert "disk holding the run directory is full" in show.stdout
