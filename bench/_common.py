"""What several benchmarks share: the testbed's facts and one `runner submit` in a throw-away
project, read back from its run directory. Benchmarks run as `python bench/NAME.py`, so this
module is importable as `_common`."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def testbed() -> dict[str, str]:
    """The ``export NAME=value`` lines ``scripts/testbed.sh up`` wrote (hosts, keys, images)."""
    path = Path(os.environ.get("RUNNER_TESTBED_DIR", "/tmp/runner-testbed")) / "env"
    out: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = shlex.split(line)
            if len(parts) == 2 and "=" in parts[1]:
                k, v = parts[1].split("=", 1)
                out[k] = v
    return out


def timed(argv: list[str], cwd: Path, what: str) -> float:
    """Wall seconds of one command (output captured); exits with its output if it failed."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{what} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return wall


@dataclass
class Submitted:
    """What one ``runner submit`` left: its exit code, wall time, metrics and worker facts."""

    code: int
    wall: float
    metrics: list[dict[str, Any]]
    meta: dict[str, Any]

    def values(self, name: str) -> list[float]:
        return [m["value"] for m in self.metrics if m["name"] == name]


def submit(*overrides: str, prefix: str = "bench-") -> Submitted:
    """``runner submit OVERRIDES`` (output streamed) in a fresh project; the run it made."""
    with tempfile.TemporaryDirectory(prefix=prefix) as t:
        proj = Path(t)
        (proj / ".runner").mkdir()
        cmd = [sys.executable, "-m", "runner.cli", "submit", *overrides]
        print("$ runner " + " ".join(cmd[3:]), flush=True)
        t0 = time.perf_counter()
        code = subprocess.call(cmd, cwd=proj, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        wall = time.perf_counter() - t0
        (run_dir,) = (proj / ".runner" / "runs").iterdir()
        metrics_file = run_dir / "metrics.jsonl"
        metrics = ([json.loads(ln) for ln in metrics_file.read_text().splitlines()]
                   if metrics_file.is_file() else [])
        worker = run_dir / "worker.json"
        meta = json.loads(worker.read_text()).get("meta", {}) if worker.is_file() else {}
    return Submitted(code, wall, metrics, meta)
