"""A user's own ``@hydra.main`` app, swept through the runner launcher against Hydra's joblib
launcher, in the same run: the same 8 jobs of 1 s, the same 2 at a time.

A throwaway project holds a plain Hydra app whose task function sleeps one second and returns
a number. ``python app.py -m hydra/launcher=runner`` makes each job a run on the local target
(recorded in the ledger, its log streamed, its return value back to the sweeper);
``hydra/launcher=joblib`` runs them in joblib worker processes (nothing recorded). Reports
each wall time and their ratio: what the ledger, the snapshot and a worker per job cost.

    .venv/bin/python bench/app_sweep.py
    .venv/bin/python bench/app_sweep.py --jobs 16 --slots 4 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from _common import timed

APP = """\
import time
import hydra


@hydra.main(config_path=None, version_base=None)
def job(cfg):
    time.sleep(float(cfg.seconds))
    return float(cfg.x) * 2


if __name__ == "__main__":
    job()
"""


def _sweep(project: Path, jobs: int, seconds: float, *launcher: str) -> float:
    argv = [sys.executable, "app.py", "-m", f"+seconds={seconds}",
            "+x=" + ",".join(str(i) for i in range(jobs)), *launcher]
    return timed(argv, project, f"sweep ({' '.join(launcher)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.0, help="how long each job sleeps")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each launcher; the best counts")
    a = ap.parse_args()
    try:
        import hydra_plugins.hydra_joblib_launcher  # noqa: F401
    except ImportError:
        sys.exit("this benchmark needs hydra-joblib-launcher: pip install -e '.[dev]'")
    with tempfile.TemporaryDirectory(prefix="runner-bench-app-") as tmp:
        project = Path(tmp)
        (project / ".runner").mkdir()
        (project / "app.py").write_text(APP)
        os.environ["RUNNER_CACHE_DIR"] = str(project / "cache")
        runner_walls, joblib_walls = [], []
        for _ in range(a.repeat):
            runner_walls.append(_sweep(
                project, a.jobs, a.seconds, "hydra/launcher=runner",
                "hydra.launcher.show_logs=false", f'hydra.launcher.overrides=["target.slots={a.slots}"]'))
            joblib_walls.append(_sweep(project, a.jobs, a.seconds, "hydra/launcher=joblib",
                                       f"hydra.launcher.n_jobs={a.slots}"))
    best_runner, best_joblib = min(runner_walls), min(joblib_walls)
    ideal = -(-a.jobs // a.slots) * a.seconds
    print(f"{a.jobs} jobs of {a.seconds:g}s from a plain @hydra.main app, {a.slots} at a time, "
          f"best of {a.repeat}")
    print(f"  runner launcher (local target): {best_runner:6.2f}s  (ideal {ideal:.1f}s)")
    print(f"  joblib launcher               : {best_joblib:6.2f}s")
    print(f"  ratio                         : {best_runner / best_joblib:6.2f}")


if __name__ == "__main__":
    main()
