"""A sweep on Slurm: the runner launcher (one job array) against hydra-submitit-launcher
(`pip install hydra-submitit-launcher`), on the same cluster, in the same run.

Eight jobs that each sleep one second, at most two at once (`max_parallel=2` for runner,
`array_parallelism=2` for submitit), on the default partition of the cluster that `SLURM_CONF`
names (the testbed's: `. /tmp/runner-testbed/env`). Reports each wall time: with both
launchers the submitting process lives until the last job ended, so that is also how long it
must live.

    .venv/bin/python bench/slurm_sweep.py
    .venv/bin/python bench/slurm_sweep.py --jobs 16 --parallel 4 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
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
        runner_walls, submitit_walls = [], []
        for _ in range(a.repeat):
            runner_walls.append(_runner(project, a.jobs, a.parallel, a.seconds))
            submitit_walls.append(_submitit(project, a.jobs, a.parallel, a.seconds))
    ideal = a.jobs / a.parallel * a.seconds
    best_r, best_s = min(runner_walls), min(submitit_walls)
    print(f"{a.jobs} jobs x {a.seconds:g} s, {a.parallel} at once (ideal {ideal:.1f} s), best of {a.repeat}")
    print(f"runner launcher (one job array):  {best_r:6.2f} s   all: {', '.join(f'{w:.2f}' for w in runner_walls)}")
    print(f"hydra-submitit-launcher:          {best_s:6.2f} s   all: {', '.join(f'{w:.2f}' for w in submitit_walls)}")
    print(f"ratio runner / submitit: {best_r / best_s:.2f}")
    print("both submitting processes live until the last job ended (their wall time above)")


if __name__ == "__main__":
    main()
