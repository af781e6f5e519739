"""What `runner submit` to a remote_docker target adds over a plain `ssh HOST docker run`.

With the env image cached on the host and the code unchanged, measures in one run (the two
cases interleaved, so load changes hit both alike) the median wall time of:

  plain    ssh -F SSH_CONFIG HOST docker run --rm IMAGE python -c pass
  runner   runner submit target=bench_remote env=docker_python model=script model.path=noop.py
           (compose, snapshot, SSH connect, prepare hit, ship, start, follow, fetch, remove)

and prints the added time (runner - plain; target: at most 1.5 s). Then edits one file of the
bench project and submits again, printing the bytes sent against the project's size.

    python bench/remote_overhead.py [--host runner-remote] [--ssh-config FILE] [--repeat 7]

Defaults come from the testbed (scripts/testbed.sh up): its loopback SSH host and ssh_config.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import testbed

PY = sys.executable


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return dt, proc.stderr


def main() -> int:
    tb = testbed()
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default=(tb.get("RUNNER_TEST_SSH_HOSTS") or "runner-remote").split()[0])
    ap.add_argument("--ssh-config", default=tb.get("RUNNER_TEST_SSH_CONFIG"))
    ap.add_argument("--base-image", default=tb.get("RUNNER_BASE_IMAGE", "runner-base:bookworm"))
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--files", type=int, default=60, help="code files in the bench project")
    args = ap.parse_args()
    if not args.ssh_config:
        raise SystemExit("no ssh_config: start the testbed (scripts/testbed.sh up) or pass "
                         "--ssh-config")
    with tempfile.TemporaryDirectory(prefix="runner-remote-bench-") as tmp:
        project = Path(tmp) / "proj"
        (project / ".runner").mkdir(parents=True)
        (project / "conf" / "target").mkdir(parents=True)
        (project / "conf" / "target" / "bench_remote.yaml").write_text(
            f"backend: remote_docker\nhost: {args.host}\nssh_config: {args.ssh_config}\n"
            f"work_dir: {tmp}/remote-work\nbase_image: {args.base_image}\n")
        (project / "noop.py").write_text("pass\n")
        pkg = project / "lib"
        pkg.mkdir()
        for i in range(args.files):
            (pkg / f"mod{i:03d}.py").write_text(f"# module {i}\n" + "VALUE = 1\n" * 400)
        env = dict(os.environ, RUNNER_CACHE_DIR=str(Path(tmp) / "cache"))
        runner = [PY, "-m", "runner.cli"]
        submit = runner + ["submit", "target=bench_remote", "env=docker_python", "model=script",
                           "model.path=noop.py"]
        _, out = timed(runner + ["prepare", "target=bench_remote", "env=docker_python"],
                       project, env)
        key = re.findall(r"\[([0-9a-f]{16})\]", out)[-1]
        image = f"runner-env:{key}"
        plain = ["ssh", "-F", args.ssh_config, args.host, "docker", "run", "--rm", image,
                 "python", "-c", "pass"]
        timed(submit, project, env)  # warm-up: objects reach the host's store
        timed(plain, project, env)
        times: dict[str, list[float]] = {"plain": [], "runner": []}
        for _ in range(args.repeat):
            times["plain"].append(timed(plain, project, env)[0])
            times["runner"].append(timed(submit, project, env)[0])
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"host {args.host}, image {image}, {args.repeat} runs each (median, min-max)")
        for k, v in times.items():
            print(f"  {k:7s} {med[k]:6.2f} s   ({min(v):.2f}-{max(v):.2f})")
        added = med["runner"] - med["plain"]
        print(f"  added   {added:6.2f} s   (target <= 1.5 s: {'ok' if added <= 1.5 else 'OVER'})")

        (pkg / "mod007.py").write_text("# module 7, edited\nVALUE = 2\n")
        timed(submit, project, env)
        last = sorted((project / ".runner" / "runs").iterdir())[-1]
        shipped = json.loads((last / "remote.json").read_text())["shipped"]
        print(f"after editing one file: sent {shipped['sent_files']} of {shipped['files']} files, "
              f"{shipped['sent_bytes']} B of code ({shipped['archive_bytes']} B on the wire with "
              f"the run's request files) against a project of {shipped['bytes']} B")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
