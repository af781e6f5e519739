"""A sweep on Slurm: the runner launcher (one job array) against hydra-submitit-launcher
(`pip install hydra-submitit-launcher`), on the same cluster, in the same run.

Eight jobs that each sleep one second, at most two at once (`max_parallel=2` for runner,
`array_parallelism=2` for submitit), on the default partition of the cluster that `SLURM_CONF`
names (the testbed's: `. /tmp/runner-testbed/env`). Two figures, each as a ratio to
submitit's, measured in the same run:

- wall time of the sweep in the foreground (both submitting processes follow the jobs);
- how long the submitting process must live: `runner submit -m --detach` exits once the
  array is queued (the jobs then run without it; the time until the last one ended is
  reported too), where hydra-submitit-launcher's process lives until every job ended.

    .venv/bin/python bench/slurm_sweep.py
    .venv/bin/python bench/slurm_sweep.py --jobs 16 --parallel 4 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import timed

JOB = "import sys, time\ntime.sleep(float(sys.argv[1]))\n"
#: the same job as a plain Hydra app, which is what hydra-submitit-launcher runs
APP = """\
import time
import hydra

@hydra.main(version_base=None, config_path=None)
def main(cfg) -> None:
    time.sleep(float(cfg.seconds))

if __name__ == "__main__":
    main()
"""


def _runner(project: Path, jobs: int, parallel: int, seconds: float) -> float:
    values = ",".join(f"[{seconds},{i}]" for i in range(jobs))
    wall = timed([sys.executable, "-m", "runner.cli", "submit", "-m", "model=script",
                      "model.path=job.py", "target=slurm", f"model.args={values}",
                      f"hydra.launcher.max_parallel={parallel}", "hydra.launcher.show_logs=false"],
                    project, "runner launcher")
    return wall


def _runner_detached(project: Path, jobs: int, parallel: int, seconds: float
                     ) -> tuple[float, float]:
    """(how long `runner submit -m --detach` lived, seconds until the array's last job ended)."""
    from runner.store import Store

    store = Store(project / ".runner")
    before = {r.id for r in store.list()} if store.db_path.exists() else set()
    values = ",".join(f"[{seconds},{i}]" for i in range(jobs))
    t0 = time.perf_counter()
    lived = timed([sys.executable, "-m", "runner.cli", "submit", "-m", "--detach", "model=script",
                   "model.path=job.py", "target=slurm", f"model.args={values}",
                   f"hydra.launcher.max_parallel={parallel}"], project, "runner --detach")
    runs = [r for r in store.list() if r.id not in before]
    arrays = {str(r.locator["job_id"]).split("_")[0] for r in runs if r.locator}
    if len(runs) != jobs or len(arrays) != 1:
        sys.exit(f"runner --detach queued {len(runs)} runs in {len(arrays)} arrays")
    (array,) = arrays
    while subprocess.run(["squeue", "-h", "-j", array, "-o", "%i"], capture_output=True,
                         text=True).stdout.strip():
        time.sleep(0.2)
    done = time.perf_counter() - t0
    (sweep,) = {r.sweep_id for r in runs}
    shown = subprocess.run([sys.executable, "-m", "runner.cli", "sweep", str(sweep)], cwd=project,
                           capture_output=True, text=True).stdout
    if shown.count("SUCCEEDED") != jobs:
        sys.exit(f"the detached sweep did not succeed:\n{shown}")
    return lived, done


def _submitit(project: Path, jobs: int, parallel: int, seconds: float) -> float:
    wall = timed([sys.executable, "app.py", "-m", "hydra/launcher=submitit_slurm",
                      f"+seconds={seconds}", f"+i={','.join(str(i) for i in range(jobs))}",
                      f"hydra.launcher.array_parallelism={parallel}", "hydra.launcher.timeout_min=5",
                      "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
                      f"hydra.sweep.dir={project / 'multirun'}"], project, "submitit launcher")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.0, help="how long each job sleeps")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each launcher; the best counts")
    a = ap.parse_args()
    if not os.environ.get("SLURM_CONF"):
        sys.exit("SLURM_CONF is unset: `. /tmp/runner-testbed/env` after `scripts/testbed.sh up`")
    with tempfile.TemporaryDirectory(prefix="runner-bench-slurm-") as tmp:
        project = Path(tmp)
        (project / ".runner").mkdir()
        (project / "job.py").write_text(JOB)
        (project / "app.py").write_text(APP)
        os.environ["RUNNER_CACHE_DIR"] = str(project / "cache")
        runner_walls, submitit_walls, lived, done = [], [], [], []
        for _ in range(a.repeat):
            runner_walls.append(_runner(project, a.jobs, a.parallel, a.seconds))
            submitit_walls.append(_submitit(project, a.jobs, a.parallel, a.seconds))
            life, end = _runner_detached(project, a.jobs, a.parallel, a.seconds)
            lived.append(life)
            done.append(end)
    ideal = a.jobs / a.parallel * a.seconds
    best_r, best_s = min(runner_walls), min(submitit_walls)
    print(f"{a.jobs} jobs x {a.seconds:g} s, {a.parallel} at once (ideal {ideal:.1f} s), best of {a.repeat}")
    print(f"runner launcher (one job array):  {best_r:6.2f} s   all: {', '.join(f'{w:.2f}' for w in runner_walls)}")
    print(f"hydra-submitit-launcher:          {best_s:6.2f} s   all: {', '.join(f'{w:.2f}' for w in submitit_walls)}")
    print(f"ratio runner / submitit: {best_r / best_s:.2f}")
    print()
    print("how long the submitting process must live (best of each):")
    print(f"runner submit -m --detach:        {min(lived):6.2f} s   all: {', '.join(f'{w:.2f}' for w in lived)}"
          f"   (its jobs all ended after {min(done):.2f} s)")
    print(f"hydra-submitit-launcher:          {best_s:6.2f} s   (until the last job ended)")
    print(f"ratio runner / submitit: {min(lived) / best_s:.2f}")


if __name__ == "__main__":
    main()
