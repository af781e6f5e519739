"""What crosses the wire at submit and at the end of a run: the code objects the host lacks
and the request files (one tar over SFTP, unpacked there), the data trees (see ``_store``),
and the run directory coming back, extracted safely within a size cap."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import sys
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.backend import (
    RunSpec,
)
from runner.errors import UserError
from runner.plugins import _store as store
from runner.plugins.remote_docker.config import _FS_ERRORS, _NOT_SHIPPED, _q
from runner.plugins.remote_docker.host import workdir_error
from runner.request import RunRequest
from runner.rundir import CHECKPOINTS, LOG, RunDir
from runner.units import size_text

if TYPE_CHECKING:
    from runner.plugins.remote_docker.backend import RemoteDockerBackend


# -- safe extraction ----------------------------------------------------------------------------
def safe_extract(data: bytes, dest: Path, *, max_bytes: int) -> list[str]:
    """Extract a tar archive into ``dest``: only regular files and folders, nothing outside
    ``dest`` (absolute names, ``..``, links and devices are skipped), at most ``max_bytes``.
    Returns the names skipped."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    skipped: list[str] = []
    total = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for m in tar:
            name = m.name.lstrip("./") if m.name.startswith("./") else m.name
            if name in ("", "."):
                continue
            target = os.path.realpath(os.path.join(root, name))
            if (os.path.isabs(m.name) or ".." in Path(m.name).parts
                    or not target.startswith(root + os.sep)):
                skipped.append(m.name)
                continue
            if m.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            if not m.isfile():
                skipped.append(m.name)  # links, devices, fifos never come back
                continue
            total += m.size
            if total > max_bytes:
                raise UserError(f"the fetched run directory is over the {size_text(max_bytes)} cap.",
                                "raise target.max_fetch_mb, or write less into outputs/.")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.realpath(os.path.dirname(target)) != os.path.dirname(target):
                skipped.append(m.name)  # a folder on the way is a link: never write through it
                continue
            src = tar.extractfile(m)
            assert src is not None
            tmp = target + ".runner-part"
            with open(tmp, "wb") as f:
                while chunk := src.read(1 << 20):
                    f.write(chunk)
            os.chmod(tmp, 0o755 if m.mode & 0o111 else 0o644)
            os.replace(tmp, target)
    return skipped


def code_manifest(request: RunRequest, rd: RunDir) -> dict[str, list[Any]]:
    """{path: [sha256, size, mode]} of the run's code (the snapshot's, else hashed now)."""
    manifest = request.code_manifest
    if manifest:
        return {k: list(v) for k, v in manifest.items()}
    out: dict[str, list[Any]] = {}
    if rd.code.is_dir():
        for p in sorted(rd.code.rglob("*")):
            if p.is_file() and not p.is_symlink():
                data = p.read_bytes()
                out[p.relative_to(rd.code).as_posix()] = [
                    hashlib.sha256(data).hexdigest(), len(data), p.stat().st_mode & 0o777]
    return out


def ask(b: RemoteDockerBackend, hashes: list[str], digests: list[str]) -> tuple[set[str], set[str]]:
    """One command: the code objects the host lacks, the data trees it has (each tree
    found is touched: its age is the time since a run last used it, for remote-gc)."""
    w = b.work_dir
    if not hashes and not digests:
        return set(), set()
    trees = "".join(f"[ -d data/{d} ] && touch data/{d} && echo tree:{d}; " for d in digests)
    r = b.session.run(f"cd {_q(w)} && {trees}cd objects && for h in {' '.join(hashes)}; "
                         "do [ -f \"$h\" ] || echo \"$h\"; done", timeout=120)
    if not r.ok:
        raise UserError(f"could not list the content store {w}/objects on "
                        f"{b.session.label}: {r.last_error()}")
    words = r.stdout.split()
    return ({h for h in words if not h.startswith("tree:")},
            {h[5:] for h in words if h.startswith("tree:")})


def ship(b: RemoteDockerBackend, spec: RunSpec, request: RunRequest, rd: RunDir, remote_rd: str,
          secrets_env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send the data inputs and the run directory, by content: only objects the host lacks
    travel. Returns what the code and what the data cost."""
    w = b.work_dir
    manifest = code_manifest(request, rd)
    hashes = sorted({v[0] for v in manifest.values()})
    staged = [d for d in request.data_inputs if not d.on_target and d.digest]
    missing, trees = ask(b, hashes, sorted({str(d.digest) for d in staged}))
    data_cost: dict[str, Any] = {}
    if staged:
        facts = b.facts()
        free = None if facts.free_kb is None else max(
            0, facts.free_kb - b.config.min_free_mb * 1024)
        shipped, totals = store.stage(b.session, w, staged, trees, free_kb=free)
        data_cost = {"inputs": [dataclasses.asdict(s) for s in shipped], **totals}
        for s in shipped:
            print(s.line(b.session.label), file=sys.stderr, flush=True)
        # code files that are data too are in objects/ now: sending them again would
        # replace the objects the data trees link to with new copies
        missing -= {sha for d in staged for sha, _ in d.manifest.values()}
    by_hash = {v[0]: p for p, v in manifest.items()}
    rid = spec.run_id
    buf = io.BytesIO()
    sent = 0

    def add(name: str, data: bytes, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, int(time.time())
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(fileobj=buf, mode="w") as tar:
        for h in sorted(missing):
            data = (rd.code / by_hash[h]).read_bytes()
            if hashlib.sha256(data).hexdigest() != h:
                raise UserError(f"run {rid}: code/{by_hash[h]} changed after the snapshot was "
                                "taken; submit again.")
            add(f"objects/{h}", data)
            sent += len(data)
        for p in sorted(rd.path.iterdir()):
            if p.name not in _NOT_SHIPPED and p.is_file():
                add(f"run/{p.name}", p.read_bytes())
        # a run that continues another (runner resume, a retry) starts from its checkpoint
        for p in sorted(rd.checkpoints.rglob("*")) if rd.checkpoints.is_dir() else []:
            if p.is_file() and not p.is_symlink():
                add(f"run/{CHECKPOINTS}/{p.relative_to(rd.checkpoints).as_posix()}",
                    p.read_bytes())
        if secrets_env:
            # secrets go in a 0600 file read by `docker run --env-file`, removed right after
            # the start: never on a command line, never in the run directory that comes back
            add("run/.runner-env",
                "".join(f"{k}={v}\n" for k, v in secrets_env.items()).encode(), 0o600)
        dirs = sorted({str(Path(p).parent) for p in manifest if "/" in p})
        setup = ["set -e", f"cd {_q(w)}", f"mkdir -p {_q(remote_rd)}/code {_q(remote_rd)}/outputs"]
        if dirs:
            setup.append("cd " + _q(f"{remote_rd}/code") + " && mkdir -p "
                         + " ".join(_q(d) for d in dirs) + " && cd " + _q(w))
        for path, (h, _size, _mode) in sorted(manifest.items()):
            setup.append(f"cp objects/{h} {_q(remote_rd + '/code/' + path)}")
        execs = [p for p, v in manifest.items() if int(v[2]) & 0o111]
        if execs:
            setup.append("cd " + _q(f"{remote_rd}/code") + " && chmod +x "
                         + " ".join(_q(p) for p in execs) + " && cd " + _q(w))
        add("run/.runner-setup.sh", ("\n".join(setup) + "\n").encode())
    archive = buf.getvalue()
    incoming = f"{w}/incoming/{rid}"
    try:
        b.session.write_file(incoming + ".tar", archive, mode=0o600)
    except OSError as e:
        raise workdir_error(str(e), w, b.session.label) from None
    # unpack next to the store, publish objects by rename (a concurrent submit never sees a
    # half-written one), then move the run files into place and assemble code/
    r = b.session.run(
        f"set -e; cd {_q(w)}; rm -rf {_q(incoming)}; mkdir -p {_q(incoming)} {_q(remote_rd)}; "
        f"tar -xf {_q(incoming)}.tar -C {_q(incoming)} 2>&1; "
        f"if [ -d {_q(incoming)}/objects ]; then find {_q(incoming)}/objects -type f -exec "
        "mv -f -t objects {} +; fi; "
        f"mv -f {_q(incoming)}/run/* {_q(incoming)}/run/.runner-* {_q(remote_rd)}/ 2>&1; "
        f"sh {_q(remote_rd)}/.runner-setup.sh 2>&1; "
        f"rm -rf {_q(incoming)} {_q(incoming)}.tar {_q(remote_rd)}/.runner-setup.sh; "
        f": > {_q(remote_rd)}/{LOG}", timeout=600, retry=False)
    if not r.ok:
        b.session.run(f"rm -rf {_q(incoming)} {_q(incoming)}.tar", timeout=60)
        lines = (r.stdout + r.stderr).strip().splitlines() or [r.last_error()]
        telling = [ln for ln in lines if any(k in ln for k in _FS_ERRORS)]
        raise workdir_error((telling or lines)[-1], w, b.session.label)
    total = sum(int(v[1]) for v in manifest.values())
    return {"files": len(manifest), "bytes": total, "sent_files": len(missing),
            "sent_bytes": sent, "archive_bytes": len(archive)}, data_cost
