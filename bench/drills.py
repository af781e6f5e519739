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
  dcancel    the cancel storm on the Docker targets (local_docker, and remote_docker on the
             testbed's SSH host): runs cancelled, seconds, containers left
  fulldisk   a run that fills the disk holding the project (ledger and run directories, a
             1 MiB tmpfs): "bug" messages and runner tracebacks printed, the state recorded
             once space is freed (FAILED with the reason, not LOST)
  connkill   `runner submit` streaming a remote run while its SSH connection is cut (a killed
             ProxyCommand, an aborted TCP socket) on both test hosts: log lines lost and
             repeated, exit code, runs not SUCCEEDED

    python bench/drills.py [--submits 100] [--parallel 10] [--stubborn 20] [--grace 3]
                           [--cuts 3] [--only NAME ...]

The Docker and SSH drills need the testbed (scripts/testbed.sh up); without it they say so.
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


def _testbed() -> dict[str, str]:
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import testbed

    return testbed()


def _remote_target(proj: Path, name: str, host: str, tb: dict[str, str], work: Path) -> None:
    conf = proj / "conf" / "target"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / f"{name}.yaml").write_text(
        f"defaults:\n  - /runner/target/remote_docker@_here_\n  - _self_\nhost: {host}\n"
        f"ssh_config: {tb['RUNNER_TEST_SSH_CONFIG']}\nwork_dir: {work}\nslots: 32\n"
        f"base_image: {tb.get('RUNNER_BASE_IMAGE', 'runner-base:bookworm')}\n")


def drill_docker_cancel(root: Path, n: int, grace: float) -> dict[str, object]:
    """The cancel storm on both Docker targets: ``n`` runs that ignore SIGTERM each."""
    tb = _testbed()
    if "RUNNER_TEST_SSH_CONFIG" not in tb:
        return {"skipped": "no testbed: scripts/testbed.sh up"}
    proj = project(root, "dcancel")
    hosts = tb.get("RUNNER_TEST_SSH_HOSTS", "").split()
    _remote_target(proj, "box", hosts[0], tb, root / "dcancel-work")
    (proj / "stubborn.py").write_text(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('holding', flush=True)\ntime.sleep(3600)\n")
    base = tb.get("RUNNER_BASE_IMAGE", "runner-base:bookworm")
    out: dict[str, object] = {}
    for target in ("local_docker", "box"):
        ids = []
        for _ in range(n):
            r = runner("submit", "--detach", f"target={target}", "env=docker_python",
                       f"env.base_image={base}", "model=script", "model.path=stubborn.py",
                       f"target.cancel_grace={grace}", cwd=proj)
            ids.append(r.stderr.split("run ", 1)[1].split(":", 1)[0])
        time.sleep(2)
        t0 = time.perf_counter()
        r = runner("cancel", *ids, cwd=proj, timeout=900)
        took = time.perf_counter() - t0
        from runner.plugins import _docker as dk

        left = 0
        for rid in ids:
            ps = subprocess.run(["docker", "ps", "-q", "--filter", f"label={dk.L_RUN_ID}={rid}"],
                                capture_output=True, text=True)
            left += len(ps.stdout.split())
        name = "local_docker" if target == "local_docker" else "remote_docker"
        out[f"{name} cancelled"] = f"{r.stderr.count(': CANCELLED')} of {n}"
        out[f"{name} seconds"] = round(took, 1)
        out[f"{name} containers left"] = left
    return out


def _cut(cli_pid: int, port: str) -> bool:
    """Cut the SSH connection of the CLI process ``cli_pid`` as a network would: kill its
    ProxyCommand, or abort its TCP socket to the test host."""
    from runner.proc import alive

    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == cli_pid and b"socat" in cmd:
                kids.append(int(entry))
    for pid in kids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    if kids:
        return True
    listing = subprocess.run(["ss", "-tnpH", "dst", "127.0.0.1", "dport", "=", port],
                             capture_output=True, text=True).stdout
    for line in listing.splitlines():
        if f"pid={cli_pid}," in line:
            sport = line.split()[3].rsplit(":", 1)[1]
            subprocess.run(["ss", "-K", "dst", "127.0.0.1", "dport", "=", port, "sport", "=",
                            f":{sport}"], capture_output=True)
            return True
    return False


def drill_connkill(root: Path, cuts: int) -> dict[str, object]:
    """``cuts`` connection kills during one streamed remote submit, on each test host."""
    tb = _testbed()
    hosts = tb.get("RUNNER_TEST_SSH_HOSTS", "").split()
    if not hosts:
        return {"skipped": "no testbed: scripts/testbed.sh up"}
    proj = project(root, "connkill")
    ticks = 40 * cuts
    (proj / "ticks.py").write_text(f"import time\nfor i in range({ticks}):\n"
                                   "    print(f'tick {i}', flush=True)\n    time.sleep(0.1)\n")
    out: dict[str, object] = {}
    for label, host in (("loopback", hosts[0]), ("proxycommand", hosts[-1])):
        _remote_target(proj, label, host, tb, root / "connkill-work")
        proc = subprocess.Popen([*RUNNER, "submit", f"target={label}", "env=docker_python",
                                 "model=script", "model.path=ticks.py"], cwd=proj, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen: list[str] = []
        done = 0
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("tick"):
                seen.append(line.strip())
                if done < cuts and len(seen) >= (done + 1) * (ticks // (cuts + 1)):
                    done += _cut(proc.pid, tb.get("RUNNER_TEST_SSH_PORT", "2322"))
        err = proc.stderr.read() if proc.stderr else ""
        code = proc.wait()
        want = [f"tick {i}" for i in range(ticks)]
        out[f"{label} cuts"] = done
        out[f"{label} lines lost"] = len(set(want) - set(seen))
        out[f"{label} lines repeated"] = len(seen) - len(set(seen))
        out[f"{label} exit"] = code
        out[f"{label} tracebacks"] = err.count("Traceback")
    return out


def drill_fulldisk(root: Path) -> dict[str, object]:
    mnt = root / "fulldisk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return {"skipped": f"cannot mount a tmpfs: {r.stderr.strip()}"}
    try:
        proj = project(mnt, "proj")
        (proj / "fill.py").write_text(
            "import runner\nwith open(runner.outputs_dir() / 'big.bin', 'wb') as f:\n"
            "    while True:\n        f.write(b'x' * 65536)\n")
        sub = runner("submit", "model=script", "model.path=fill.py", cwd=proj)
        listing = runner("runs", cwd=proj)
        for big in (proj / ".runner" / "runs").glob("*/outputs/big.bin"):
            big.unlink()
        after = runner("runs", cwd=proj)
        printed = sub.stderr + listing.stderr
        return {"submit exit": sub.returncode, "'bug' messages": printed.count("looks like a bug"),
                "runner tracebacks": printed.count("Traceback"),
                "said no space left": int("no space left" in printed.lower()),
                "state once freed": "FAILED" if "FAILED" in after.stdout else after.stdout.strip(),
                "LOST": after.stdout.count("LOST")}
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--submits", type=int, default=100)
    ap.add_argument("--parallel", type=int, default=10)
    ap.add_argument("--stubborn", type=int, default=20)
    ap.add_argument("--grace", type=float, default=3.0)
    ap.add_argument("--cuts", type=int, default=3, help="connection kills per host (connkill)")
    ap.add_argument("--docker-stubborn", type=int, default=6,
                    help="runs per Docker target in the Docker cancel storm")
    ap.add_argument("--only", nargs="*", help="drills to run (default: all)")
    args = ap.parse_args()
    drills: dict[str, Callable[[Path], dict[str, object]]] = {
        "submits": lambda r: drill_submits(r, args.submits, args.parallel),
        "cancel": lambda r: drill_cancel(r, args.stubborn, args.grace),
        "escape": drill_escape,
        "kill": drill_kill,
        "badinput": drill_bad_input,
        "secrets": drill_secrets,
        "dcancel": lambda r: drill_docker_cancel(r, args.docker_stubborn, args.grace),
        "connkill": lambda r: drill_connkill(r, args.cuts),
        "fulldisk": drill_fulldisk,
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
