"""What shipping a dataset with `runner submit` to a remote_docker target costs, against
`rsync -a` and `scp -r` of the same folder to the same host (same ssh_config).

Datasets: MR (rt-polarity, 2 files, 1.2 MB, read in place) and the IMDB tree (aclImdb.tar.xz
unpacked into a temporary folder: 50,007 files, 69.7 MB of content, 207 MB on disk). For each, with a fresh work dir on
the host:

  first     runner submit ... data.path=DATA (client hashing + shipping by content + start)
  second    the same submit again (the tree is on the host: 0 data bytes)
  nodata    the same submit without data (the baseline of "second")
  rsync     rsync -a DATA HOST:fresh/   (bytes from --stats)
  scp       scp -r DATA HOST:fresh/

Submits are `--detach` (the run itself is not timed); the script model only counts files.
Medians over --repeat rounds for second/nodata. Prints one table; ratios are against rsync
and scp measured in the same run, and "second - nodata" is the added time (target <= 0.3 s).

    python bench/data_shipping.py [--host runner-remote] [--ssh-config FILE] [--only mr|imdb]
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from _common import testbed

PY = sys.executable
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
JOB = """\
import os, runner
p = runner.data_path()
print('files', sum(len(fs) for _, _, fs in os.walk(p)) if p else 0, flush=True)
"""


def run(cmd: list[str], cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return dt, proc


def have_rsync() -> bool:
    if shutil.which("rsync"):
        return True
    print("rsync is missing: installing it with apt-get (bench only)", file=sys.stderr)
    r = subprocess.run(["apt-get", "install", "-y", "-q", "rsync"], capture_output=True)
    return r.returncode == 0 and shutil.which("rsync") is not None


def tree_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def main() -> int:
    tb = testbed()
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default=(tb.get("RUNNER_TEST_SSH_HOSTS") or "runner-remote").split()[0])
    ap.add_argument("--ssh-config", default=tb.get("RUNNER_TEST_SSH_CONFIG", ""))
    ap.add_argument("--base-image", default=tb.get("RUNNER_BASE_IMAGE", "runner-base:bookworm"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", choices=["mr", "imdb"])
    ap.add_argument("--profile", action="store_true", help="profile the client's data collect")
    args = ap.parse_args()
    if not args.ssh_config:
        raise SystemExit("no ssh_config: start the testbed (scripts/testbed.sh up) or pass one")
    ssh = ["ssh", "-F", args.ssh_config]
    rsync_ok = have_rsync()

    with tempfile.TemporaryDirectory(prefix="runner-bench-data-") as tmp:
        base = Path(tmp)
        host_root = f"/tmp/{base.name}-host"  # on the host: the runner's work dirs, copies
        datasets: list[tuple[str, Path]] = []
        if args.only in (None, "mr") and (SHARED / "rt-polarity").is_dir():
            datasets.append(("MR (rt-polarity)", SHARED / "rt-polarity"))
        if args.only in (None, "imdb") and (SHARED / "imdb" / "aclImdb.tar.xz").is_file():
            t0 = time.perf_counter()
            with tarfile.open(SHARED / "imdb" / "aclImdb.tar.xz") as tar:
                tar.extractall(base / "imdb", filter="data")
            print(f"unpacked IMDB in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
            datasets.append(("IMDB (aclImdb)", base / "imdb" / "aclImdb"))
        if not datasets:
            raise SystemExit(f"no datasets under {SHARED}")
        rows = []
        for i, (label, data) in enumerate(datasets):
            files, size = tree_size(data)
            proj = base / f"proj{i}"
            (proj / ".runner").mkdir(parents=True)
            (proj / "conf" / "target").mkdir(parents=True)
            work = f"{host_root}/work{i}"
            (proj / "conf" / "target" / "bench.yaml").write_text(
                f"backend: remote_docker\nhost: {args.host}\nssh_config: {args.ssh_config}\n"
                f"work_dir: {work}\nbase_image: {args.base_image}\nslots: 16\n")
            (proj / "job.py").write_text(JOB)
            submit = [PY, "-m", "runner.cli", "submit", "--detach", "target=bench",
                      "env=docker_python", "model=script", "model.path=job.py"]
            run(submit, proj)  # warm: env image, connection files, the ledger
            first_t, first = run(submit + [f"data.path={data}"], proj)
            last = sorted((proj / ".runner" / "runs").iterdir())[-1]
            cost = json.loads((last / "remote.json").read_text())["data"]
            second_ts, nodata_ts, second_bytes = [], [], []
            for _ in range(args.repeat):  # interleaved: load changes hit both alike
                t, _p = run(submit + [f"data.path={data}"], proj)
                second_ts.append(t)
                last = sorted((proj / ".runner" / "runs").iterdir())[-1]
                second_bytes.append(json.loads((last / "remote.json").read_text())["data"]
                                    ["wire_bytes"])
                t, _p = run(submit, proj)
                nodata_ts.append(t)
            # the client's share of a second submit, in this process: walk, stat, cached hashes
            from runner.data import collect

            cache = proj / ".runner" / "cache" / "file-hashes.db"
            collect_ts = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                collect({"path": str(data)}, {"path": "any"}, cwd=proj, cache_path=cache)
                collect_ts.append(time.perf_counter() - t0)
            if args.profile:
                import cProfile
                import pstats

                prof = cProfile.Profile()
                prof.runcall(collect, {"path": str(data)}, {"path": "any"}, cwd=proj,
                             cache_path=cache)
                pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(12)
            rs_t = rs_bytes = None
            if rsync_ok:
                dest = f"{host_root}/rsync{i}/"
                run(ssh + [args.host, f"mkdir -p {shlex.quote(dest)}"])
                rs_t, rs = run(["rsync", "-a", "--stats", "-e", shlex.join(ssh), str(data),
                                f"{args.host}:{dest}"])
                m = re.search(r"Total bytes sent: ([\d,]+)", rs.stdout)
                rs_bytes = int(m.group(1).replace(",", "")) if m else None
            dest = f"{host_root}/scp{i}/"
            run(ssh + [args.host, f"mkdir -p {shlex.quote(dest)}"])
            scp_t, _p = run(["scp", "-q", "-r", "-F", args.ssh_config, str(data),
                             f"{args.host}:{dest}"])
            rows.append({
                "label": label, "files": files, "size": size,
                "first_s": first_t, "first_bytes": cost["wire_bytes"],
                "stage_s": cost["seconds"],
                "second_s": statistics.median(second_ts), "second_bytes": max(second_bytes),
                "nodata_s": statistics.median(nodata_ts),
                "collect_s": statistics.median(collect_ts),
                "rsync_s": rs_t, "rsync_bytes": rs_bytes, "scp_s": scp_t,
                "shipped_line": next((ln for ln in first.stderr.splitlines()
                                      if ln.startswith("[runner] data")), ""),
            })
        run(ssh + [args.host, f"rm -rf {shlex.quote(host_root)}"])

    def mb(n: float | None) -> str:
        return "n/a" if n is None else f"{n / 1e6:.1f} MB"

    def ratio(a: float | None, b: float | None) -> str:
        return "n/a" if a is None or not b else f"{a / b:.2f}x"

    print(f"\nhost {args.host} (testbed loopback); second/nodata: medians of {args.repeat}; "
          "1st added = 1st submit - nodata submit (both --detach)\n")
    print("| dataset | files | size | runner 1st: added | runner 1st: bytes sent | rsync -a | "
          "scp -r | added / rsync | added / scp | bytes / rsync | runner 2nd: data bytes | "
          "2nd - nodata (wall) | 2nd: client collect |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        added = r["first_s"] - r["nodata_s"]
        rs = "n/a" if r["rsync_s"] is None else f"{r['rsync_s']:.2f} s ({mb(r['rsync_bytes'])})"
        print(f"| {r['label']} | {r['files']} | {mb(r['size'])} | {added:.2f} s (staging "
              f"{r['stage_s']:.2f} s) | {mb(r['first_bytes'])} | {rs} | {r['scp_s']:.2f} s | "
              f"{ratio(added, r['rsync_s'])} | {ratio(added, r['scp_s'])} | "
              f"{ratio(r['first_bytes'], r['rsync_bytes'])} | {r['second_bytes']} | "
              f"{r['second_s'] - r['nodata_s']:+.2f} s (nodata {r['nodata_s']:.2f} s) | "
              f"{r['collect_s']:.3f} s |")
    for r in rows:
        print(f"{r['label']}: {r['shipped_line']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
