"""What the runner adds on top of Docker for one run on this machine.

With the env image cached, time ``runner submit target=local_docker`` of a no-op script (the
whole CLI: compose the config, snapshot the project, record the run, prepare = cache hit, start
the container, follow it to the end) against a plain ``docker run --rm`` of the same image
running the same no-op, interleaved in one session; report medians. Also time a prepare
cache hit, in-process and through ``runner prepare``.

    .venv/bin/python bench/docker_overhead.py [--reps 7] [--base-image runner-base:bookworm]
                                              [--write docs/BENCHMARKS.md]

Needs a Docker engine and the base image (scripts/testbed.sh up).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SECTION = "## local_docker"


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{r.stdout}\n{r.stderr}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--base-image", default=os.environ.get("RUNNER_BASE_IMAGE", "runner-base:bookworm"))
    ap.add_argument("--write", type=Path, help="replace the '## local_docker' section of this file")
    args = ap.parse_args()

    from runner.backend import EnvSpec
    from runner.plugins.local_docker import LocalDockerBackend, LocalDockerConfig
    from runner.testing import make_run

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="runner-bench-") as tmp:
        root = Path(tmp)
        proj = root / "proj"
        (proj / ".runner").mkdir(parents=True)
        (proj / "noop.py").write_text("pass\n")
        env = dict(os.environ, RUNNER_CACHE_DIR=str(root / "cache"))
        os.environ["RUNNER_CACHE_DIR"] = env["RUNNER_CACHE_DIR"]
        overrides = ["target=local_docker", "env=docker_python", "model=script", "model.path=noop.py",
                     f"env.base_image={args.base_image}"]
        cli = [sys.executable, "-m", "runner.cli"]

        backend = LocalDockerBackend(LocalDockerConfig(base_image=args.base_image))
        spec = make_run(root / "runs", backend, "pass",
                        env=EnvSpec(name="docker_python", base_image=args.base_image))
        first = backend.prepare(spec)  # builds the image if this worker version has none yet
        image = str(first.details["image"])
        hits = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            p = backend.prepare(spec)
            hits.append(time.perf_counter() - t0)
            assert p.cached
        prepare_cli = [timed(cli + ["prepare", *overrides], proj, env) for _ in range(args.reps)]

        plain = ["docker", "run", "--rm", "--network", "none", image, "python", "-c", "pass"]
        timed(plain, proj, env)  # warm the engine's caches the same way for both
        timed(cli + ["submit", *overrides], proj, env)
        submit, docker_run = [], []
        for _ in range(args.reps):
            submit.append(timed(cli + ["submit", *overrides], proj, env))
            docker_run.append(timed(plain, proj, env))
        in_process = []
        for _ in range(args.reps):
            run = make_run(root / "runs", backend, "pass", env=spec.env)
            t0 = time.perf_counter()
            st = backend.submit(run, backend.prepare(run)).wait(120)
            in_process.append(time.perf_counter() - t0)
            assert st.exit_code == 0, st

    med = statistics.median
    added = med(submit) - med(docker_run)
    engine = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                            capture_output=True, text=True).stdout.strip()
    rows = [
        ("`runner submit target=local_docker` of a no-op script (end to end)", med(submit)),
        ("plain `docker run --rm` of the same image, same no-op", med(docker_run)),
        ("**added by the runner** (difference of medians)", added),
        ("the backend alone: prepare (hit) + submit + wait, in process", med(in_process)),
        ("the CLI alone: `runner prepare` minus its prepare (start, compose, plugins)",
         med(prepare_cli) - med(hits)),
        ("prepare cache hit (backend.prepare, in process)", med(hits)),
        ("`runner prepare` cache hit (whole CLI)", med(prepare_cli)),
    ]
    text = "\n".join([
        SECTION,
        "",
        f"`{' '.join(['.venv/bin/python', 'bench/docker_overhead.py', '--reps', str(args.reps)])}` "
        f"on {platform.node() or 'this machine'}: {os.cpu_count()} CPUs, Docker {engine}, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}, load average "
        f"{load:.1f} at the start (other jobs share the CPUs). Medians of "
        f"{args.reps} interleaved runs, env image cached.",
        "",
        "| what | seconds |",
        "|---|---:|",
        *[f"| {name} | {value:.3f} |" for name, value in rows],
        "",
        f"Target: at most 1 s added per run ({'met' if added <= 1.0 else 'NOT met'}), "
        f"prepare hit under 1 s ({'met' if med(hits) < 1.0 else 'NOT met'}).",
        "",
    ])
    print(text)
    if args.write:
        write_section(args.write, text)
    return 0


def write_section(path: Path, text: str) -> None:
    """Replace (or append) this benchmark's section, leaving the rest of the file alone."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == SECTION), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "".join(lines[:start]) + text + ("\n" if end < len(lines) else "") + "".join(lines[end:])
    path.write_text(new)


if __name__ == "__main__":
    sys.exit(main())
