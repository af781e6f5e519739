"""Reliability drills: faults a user meets, driven through the `runner` CLI, each counted.

Every drill prints one line of figures whose goal is zero (or the expected count), and the
whole table at the end in the form of docs/RELIABILITY.md:

  submits    N concurrent `runner submit`s, P at a time: rows in the ledger, duplicate ids,
             runs whose recorded state is not what their client printed (false states)
  cancel     N runs that ignore SIGTERM, all cancelled by one `runner cancel`: seconds taken
             (one grace period is the floor), processes left afterwards
  escape     a run whose child moved to its own session, cancelled: processes left
  kill       the client SIGKILLed mid-run: state after `runner runs` (the run goes on and
             ends SUCCEEDED), and a worker SIGKILLed mid-run: recorded LOST, not RUNNING
  badinput   the bad-input table: cases tried, clear errors (exit 2, `error:` first line),
             tracebacks, wrong exit codes
  secrets    the secret routes: places (files under .runner/ and lines printed) where a
             unique secret value was found

    python bench/drills.py [--submits 100] [--parallel 10] [--stubborn 20] [--grace 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

PY = sys.executable
RUNNER = [PY, "-m", "runner.cli"]


def runner(*args: str, cwd: Path, env: dict[str, str] | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RUNNER, *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def project(root: Path, name: str) -> Path:
    p = root / name
    (p / ".runner").mkdir(parents=True)
    return p


def live_with(marker: str) -> list[int]:
    from runner.proc import processes_with

    return processes_with(marker)


def drill_submits(root: Path, n: int, parallel: int) -> dict[str, int]:
    proj = project(root, "submits")
    (proj / "fast.py").write_text("import sys\nprint('job', sys.argv[1:])\n")
    procs: list[subprocess.Popen[str]] = []
    printed: dict[str, str] = {}

    def reap(p: subprocess.Popen[str]) -> None:
        _, err = p.communicate(timeout=600)
        for line in err.splitlines():
            if line.startswith("run ") and line.split()[-1] in ("SUCCEEDED", "FAILED", "LOST"):
                printed[line.split()[1]] = line.split()[-1]

    for i in range(n):
        procs.append(subprocess.Popen(
            [*RUNNER, "submit", "model=script", "model.path=fast.py", f"model.args=[{i}]"],
            cwd=proj, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        if len(procs) >= parallel:
            reap(procs.pop(0))
    for p in procs:
        reap(p)
    listing = runner("runs", "-n", "0", cwd=proj).stdout.splitlines()
    rows = {ln.split()[0]: ln for ln in listing if "script" in ln}
    false = sum(1 for rid, state in printed.items() if state not in rows.get(rid, ""))
    return {"runs": n, "rows": len(rows), "duplicates": len(listing) - len(set(listing)),
            "false states": false + (n - len(printed))}


def drill_cancel(root: Path, n: int, grace: float) -> dict[str, float]:
    proj = project(root, "cancel")
    marker = f"drill-stubborn-{uuid.uuid4().hex}"
    (proj / "stubborn.py").write_text(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('holding', flush=True)\ntime.sleep(3600)\n")
    ids = []
    for _ in range(n):
        r = runner("submit", "--detach", "model=script", "model.path=stubborn.py",
                   f"model.args=[{marker}]", f"target.cancel_grace={grace}", cwd=proj)
        ids.append(r.stderr.split("run ", 1)[1].split(":", 1)[0])
    deadline = time.monotonic() + 120
    while len(live_with(marker)) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    t0 = time.perf_counter()
    r = runner("cancel", *ids, cwd=proj, timeout=600)
    took = time.perf_counter() - t0
    time.sleep(1)
    cancelled = r.stderr.count(": CANCELLED")
    return {"runs": n, "cancelled": cancelled, "seconds": round(took, 1),
            "serial would take": round(n * grace, 1), "processes left": len(live_with(marker))}


def drill_escape(root: Path) -> dict[str, int]:
    proj = project(root, "escape")
    marker = f"drill-escapee-{uuid.uuid4().hex}"
    (proj / "escape.py").write_text(
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); time.sleep(3600)',"
        " sys.argv[1]])\nprint('escaped', flush=True)\ntime.sleep(3600)\n")
    runner("submit", "--detach", "model=script", "model.path=escape.py", f"model.args=[{marker}]",
           "target.cancel_grace=2", cwd=proj)
    deadline = time.monotonic() + 60
    while len(live_with(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    r = runner("cancel", "last", cwd=proj)
    time.sleep(1)
    return {"cancelled": int("CANCELLED" in r.stderr), "processes left": len(live_with(marker))}


def drill_kill(root: Path) -> dict[str, str]:
    proj = project(root, "kill")
    (proj / "slow.py").write_text("import time\nprint('up', flush=True)\ntime.sleep(4)\n")
    client = subprocess.Popen([*RUNNER, "submit", "model=script", "model.path=slow.py"],
                              cwd=proj, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert client.stdout is not None
    while "up" not in (client.stdout.readline() or "up"):
        pass
    client.send_signal(signal.SIGKILL)
    client.wait()
    time.sleep(5)
    after_client = _last_state(proj)
    marker = f"drill-worker-{uuid.uuid4().hex}"
    (proj / "long.py").write_text("import time\nprint('up', flush=True)\ntime.sleep(3600)\n")
    runner("submit", "--detach", "model=script", "model.path=long.py", f"model.args=[{marker}]",
           cwd=proj)
    deadline = time.monotonic() + 60
    while not live_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in _worker_pids(proj):
        os.kill(pid, signal.SIGKILL)
    for pid in live_with(marker):
        os.kill(pid, signal.SIGKILL)
    time.sleep(1)
    after_worker = _last_state(proj)
    return {"client killed": after_client, "worker killed": after_worker}


def _last_state(proj: Path) -> str:
    """The newest run's state once `runner runs` has reconciled the ledger."""
    from runner.store import Store

    runner("runs", cwd=proj)
    return Store.for_project(proj).list(limit=1)[0].state.value


def _worker_pids(proj: Path) -> list[int]:
    """The workers of runs of ``proj`` (``python -m runner.worker RUN_DIR``)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"runner.worker" in argv and any(str(proj).encode() in a for a in argv):
            found.append(int(pid))
    return found


BAD_INPUT: list[list[str]] = [
    ["submit", "model=script", "model.path=somedir"],
    ["submit", "model=script", "model.path=nosuch.py"],
    ["submit", "model=script", "model.path=job.py", "tagret=local"],
    ["submit", "model=script", "model.path=job.py", "target=nosuch"],
    ["submit", "model=script", "model.path=job.py", "target.slotz=2"],
    ["submit", "model=script", "model.path=job.py", "target.slots=0"],
    ["submit", "model=script", "model.path=job.py", "target.slots=many"],
    ["submit", "model=script", "model.path=job.py", "env.require_gpu=maybe"],
    ["submit", "model=script", "model.path=job.py", "hydra.mode=BOGUS"],
    ["submit", "model=script", "model.path=job.py", "+x=${oc.env:DRILL_NOT_SET}"],
    ["submit", "model=script", "model.path=job.py", "data=text_files"],
    ["submit", "model=script", "model.path=job.py", "data.path=nosuch/"],
    ["submit", "model=script", "model.path=job.py", "seed=abc"],
    ["submit", "model=script", "model.path=job.py", "target.password=hunter2"],
    ["submit", "model=script", "model.path=job.py", "'model.args=[unclosed"],
    ["submit", "--cfg", "job", "-m", "model=script", "model.path=job.py", "+x=1,2"],
    ["runs", "--sweep", "snosuch"],
    ["show", "nosuch"],
    ["logs", "nosuch"],
    ["cancel", "nosuch"],
    ["fetch", "nosuch"],
    ["predict", "nosuch", "text"],
    ["doctor", "nosuch"],
    ["sweep", "snosuch"],
]


def drill_bad_input(root: Path) -> dict[str, int]:
    proj = project(root, "badinput")
    (proj / "job.py").write_text("print(1)\n")
    (proj / "somedir").mkdir()
    clear = tracebacks = wrong = 0
    for args in BAD_INPUT:
        r = runner(*args, cwd=proj)
        tracebacks += "Traceback" in r.stderr or "looks like a bug" in r.stderr
        wrong += r.returncode != 2
        clear += r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    return {"tried": len(BAD_INPUT), "clear": clear, "tracebacks": tracebacks,
            "wrong exit codes": wrong}


def drill_secrets(root: Path) -> dict[str, int]:
    proj = project(root, "secrets")
    value = "drill" + uuid.uuid4().hex
    env = {"DRILL_TOKEN": value}
    digest = hashlib.sha256(value.encode()).hexdigest()
    (proj / "job.py").write_text(
        "import hashlib, os, sys, time\nt = os.environ['DRILL_TOKEN']\n"
        "print(hashlib.sha256(t.encode()).hexdigest())\n"
        "sys.stdout.write(t[:6]); sys.stdout.flush(); time.sleep(0.5); print(t[6:])\n"
        "print('arg', sys.argv[1:])\n")
    (proj / "conf" / "data").mkdir(parents=True)
    routes: list[list[str]] = [  # each references the secret, as the config of a run does
        ["submit", "model=script", "model.path=job.py", "+data.api_token=${oc.env:DRILL_TOKEN}"],
        ["submit", "model=script", "model.path=job.py", "+data.auth={token: ${oc.env:DRILL_TOKEN}}"],
        ["submit", "model=script", "model.path=job.py", "+data.api_token=${oc.env:DRILL_TOKEN}",
         "+data.copy=${data.api_token}"],
        ["submit", "model=script", "model.path=job.py", "model.args=[--token,${oc.env:DRILL_TOKEN}]"],
        ["submit", "--cfg", "job", "--resolve", "model=script", "model.path=job.py",
         "+data.api_token=${oc.env:DRILL_TOKEN}"],
    ]
    printed = 0
    ran_with_value = 0
    for args in routes:
        r = runner(*args, cwd=proj, env=env)
        printed += (r.stdout + r.stderr).count(value)
        ran_with_value += digest in r.stdout
    for extra in (["show", "last"], ["logs", "last"], ["runs"]):
        r = runner(*extra, cwd=proj, env=env)
        printed += (r.stdout + r.stderr).count(value)
    on_disk = sum(1 for p in (proj / ".runner").rglob("*")
                  if p.is_file() and value.encode() in p.read_bytes())
    return {"routes": len(routes), "runs that saw the value": ran_with_value,
            "lines printed with it": printed, "files with it": on_disk}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--submits", type=int, default=100)
    ap.add_argument("--parallel", type=int, default=10)
    ap.add_argument("--stubborn", type=int, default=20)
    ap.add_argument("--grace", type=float, default=3.0)
    ap.add_argument("--only", nargs="*", help="drills to run (default: all)")
    args = ap.parse_args()
    drills: dict[str, Callable[[Path], dict[str, object]]] = {
        "submits": lambda r: drill_submits(r, args.submits, args.parallel),
        "cancel": lambda r: drill_cancel(r, args.stubborn, args.grace),
        "escape": drill_escape,
        "kill": drill_kill,
        "badinput": drill_bad_input,
        "secrets": drill_secrets,
    }
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="runner-drills-") as tmp:
        for name, drill in drills.items():
            if args.only and name not in args.only:
                continue
            t0 = time.perf_counter()
            results[name] = drill(Path(tmp))
            print(f"{name:9s} {results[name]}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("\n| drill | figures |\n|---|---|")
    for name, figures in results.items():
        print(f"| {name} | " + ", ".join(f"{k}: {v}" for k, v in figures.items()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
