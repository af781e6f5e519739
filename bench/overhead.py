"""What `runner submit` adds to a no-op script on the local target.

Measures, in one run and on the same machine, the median wall time of:

  baseline   python noop.py
  startup    runner --version                      (interpreter + CLI import)
  compose    runner submit --cfg job ...            (+ plugins + Hydra composition)
  worker     python -m runner.worker RUN_DIR        (the worker alone on a prepared run dir)
  submit     runner submit model=script model.path=noop.py   (everything, waiting for the end)

and prints each as seconds and as a ratio to the baseline, plus the added time
(submit - baseline). Target: at most 1.0 s added (median).

    python bench/overhead.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="runner-bench-") as tmp:
        project = Path(tmp) / "proj"
        (project / ".runner").mkdir(parents=True)
        (project / "noop.py").write_text("pass\n")
        env = dict(os.environ, RUNNER_CACHE_DIR=str(Path(tmp) / "cache"))
        runner = [PY, "-m", "runner.cli"]
        # one warm-up of each so that caches (pyc, page cache) are equal for all
        timed(runner + ["submit", "model=script", "model.path=noop.py"], project, env)
        template = next((project / ".runner" / "runs").iterdir())
        cases = {
            "baseline": lambda: timed([PY, "noop.py"], project, env),
            "startup": lambda: timed(runner + ["--version"], project, env),
            "compose": lambda: timed(runner + ["submit", "--cfg", "job", "model=script",
                                               "model.path=noop.py"], project, env),
            "worker": lambda: _worker_once(template, Path(tmp), env),
            "submit": lambda: timed(runner + ["submit", "model=script", "model.path=noop.py"],
                                    project, env),
        }
        samples: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.repeat):  # interleaved, so drift affects every case alike
            for name, fn in cases.items():
                samples[name].append(fn())
    med = {k: statistics.median(v) for k, v in samples.items()}
    base = med["baseline"]
    print(f"runner overhead, local target, no-op script, median of {args.repeat} "
          f"(Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    print(f"{'case':10} {'seconds':>8} {'x baseline':>11}")
    for k, v in med.items():
        print(f"{k:10} {v:8.3f} {v / base:11.2f}")
    added = med["submit"] - base
    print(f"added by runner submit: {added:.3f} s (target <= 1.0 s) -> {'OK' if added <= 1.0 else 'OVER'}")
    print(json.dumps({"median_s": med, "added_s": added}))
    return 0


def _worker_once(template: Path, tmp: Path, env: dict[str, str]) -> float:
    run_dir = tmp / f"w{time.perf_counter_ns()}"
    shutil.copytree(template, run_dir, ignore=shutil.ignore_patterns("log.txt", "status.json",
                                                                       "metrics.jsonl", "worker.json"))
    req = json.loads((run_dir / "request.json").read_text())
    req["run_id"] = run_dir.name
    (run_dir / "request.json").write_text(json.dumps(req))
    with open(run_dir / "log.txt", "wb") as log:
        t0 = time.perf_counter()
        subprocess.run([PY, "-m", "runner.worker", str(run_dir)], stdout=log, stderr=log, env=env, check=True)
        return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
