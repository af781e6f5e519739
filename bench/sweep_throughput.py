"""Sweep throughput: the runner launcher against Hydra's basic launcher, in the same run.

A throwaway project with a script that sleeps one second; a local target with two slots;
`runner submit -m` over eight jobs, once with the runner launcher (the default) and once with
`hydra/launcher=basic` (one job after another). Reports each wall time, their ratio (target:
at most 0.6), and the runner launcher's overhead per job, from the slope between this sweep
and one that fills each slot once (so the fixed cost of starting the CLI, composing and taking
the snapshot is counted apart): what each job costs a slot beyond its own run time.

    .venv/bin/python bench/sweep_throughput.py
    .venv/bin/python bench/sweep_throughput.py --jobs 16 --slots 4 --seconds 0.5 --repeat 3
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

from _common import timed

JOB = "import sys, time\ntime.sleep(float(sys.argv[1]))\n"


def _sweep(project: Path, jobs: int, seconds: float, *extra: str) -> float:
    values = ",".join(f"[{seconds},{i}]" for i in range(jobs))
    argv = [sys.executable, "-m", "runner.cli", "submit", "-m", "model=script", "model.path=job.py",
            "target=bench", f"model.args={values}", *extra]
    return timed(argv, project, f"sweep ({' '.join(extra) or 'runner launcher'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.0, help="how long each job sleeps")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each launcher; the best counts")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="runner-bench-sweep-") as tmp:
        project = Path(tmp)
        (project / ".runner").mkdir()
        (project / "job.py").write_text(JOB)
        (project / "conf" / "target").mkdir(parents=True)
        (project / "conf" / "target" / "bench.yaml").write_text(
            f"backend: local\nslots: {a.slots}\n")
        os.environ["RUNNER_CACHE_DIR"] = str(project / "cache")
        runner_walls, basic_walls, one_round = [], [], []
        for _ in range(a.repeat):
            runner_walls.append(_sweep(project, a.jobs, a.seconds, "hydra.launcher.show_logs=false"))
            basic_walls.append(_sweep(project, a.jobs, a.seconds, "hydra/launcher=basic"))
            one_round.append(_sweep(project, a.slots, a.seconds, "hydra.launcher.show_logs=false"))
    best_runner, best_basic, best_one = min(runner_walls), min(basic_walls), min(one_round)
    rounds = math.ceil(a.jobs / a.slots)
    ideal = rounds * a.seconds
    per_job = (best_runner - best_one) / max(rounds - 1, 1) - a.seconds
    fixed = best_one - a.seconds - per_job
    print(f"{a.jobs} jobs of {a.seconds:g}s, local target with {a.slots} slots, "
          f"best of {a.repeat}")
    print(f"  runner launcher : {best_runner:6.2f}s  (ideal {ideal:.1f}s)")
    print(f"  basic launcher  : {best_basic:6.2f}s")
    print(f"  ratio           : {best_runner / best_basic:6.2f}  (target <= 0.60)")
    print(f"  overhead per job: {per_job:6.2f}s  (worker start, recording, polling; per slot)")
    print(f"  fixed per sweep : {fixed:6.2f}s  (CLI start, Hydra, snapshot, env check)")


if __name__ == "__main__":
    main()
