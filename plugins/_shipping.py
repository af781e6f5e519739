"""A run directory on a host reached over SSH, for every backend that runs there: what
crosses the wire at submit (the code objects the host lacks and the request files, one tar
over SFTP unpacked there; the data trees, see :mod:`._store`), the status read and written
there, the log mirrored by byte offset, and the run directory coming back, extracted safely
within a size cap.

Layout under the target's work dir ``W``: ``objects/SHA256`` (the content store),
``data/DIGEST/`` (data trees), ``runs/RUN_ID/`` (run directories), ``incoming/`` and
``outgoing/`` (transfers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shlex
import sys
import tarfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from runner.backend import RunState, RunStatus
from runner.errors import UserError
from runner.plugins import _store as store
from runner.plugins._ssh import Session
from runner.request import RunRequest
from runner.rundir import CANCEL, CHECKPOINTS, CODE, LOG, OUTPUTS, STATUS, RunDir
from runner.units import size_text

#: Written into the local run directory at submit: where the run lives on the host.
REMOTE_JSON = "remote.json"
#: What a file system says when a write fails (the line worth showing).
FS_ERRORS = ("No space left", "Read-only", "Permission denied", "Not a directory",
             "Disk quota exceeded")
#: Files of the local run directory that never travel (the worker writes them on the target).
#: ``metrics.jsonl`` does: a resumed run starts with its parent's, and a new run has none.
NOT_SHIPPED = {CODE, OUTPUTS, LOG, "worker.json", STATUS, CANCEL, REMOTE_JSON}


def _q(s: str) -> str:
    return shlex.quote(s)


def workdir_error(msg: str, wd: str, where: str) -> UserError:
    if "No space left" in msg:
        what = "is full"
    elif "Read-only" in msg:
        what = "is on a read-only file system"
    else:
        what = "cannot be written"
    return UserError(f"the remote work dir {wd} on {where} {what}: {msg.strip()}",
                     "free space there, fix its permissions, or point target.work_dir at a "
                     "writable folder with room (runs, code objects and outputs live there).")



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


def ask(session: Session, w: str, hashes: list[str], digests: list[str]
        ) -> tuple[set[str], set[str]]:
    """One command: the code objects the host lacks, the data trees it has (each tree
    found is touched: its age is the time since a run last used it, for remote-gc)."""
    if not hashes and not digests:
        return set(), set()
    trees = "".join(f"[ -d data/{d} ] && touch data/{d} && echo tree:{d}; " for d in digests)
    r = session.run(f"cd {_q(w)} && {trees}cd objects && for h in {' '.join(hashes)}; "
                         "do [ -f \"$h\" ] || echo \"$h\"; done", timeout=120)
    if not r.ok:
        raise UserError(f"could not list the content store {w}/objects on "
                        f"{session.label}: {r.last_error()}")
    words = r.stdout.split()
    return ({h for h in words if not h.startswith("tree:")},
            {h[5:] for h in words if h.startswith("tree:")})


def ship(session: Session, w: str, run_id: str, request: RunRequest, rd: RunDir,
         remote_rd: str, secrets_env: Mapping[str, str],
         free_kb: Callable[[], int | None] = lambda: None
         ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send the data inputs and the run directory into ``remote_rd`` under the work dir ``w``,
    by content: only objects the host lacks travel. ``free_kb``: the room data may take there
    (asked only when data travels). Returns what the code and what the data cost."""
    manifest = code_manifest(request, rd)
    hashes = sorted({v[0] for v in manifest.values()})
    staged = [d for d in request.data_inputs if not d.on_target and d.digest]
    missing, trees = ask(session, w, hashes, sorted({str(d.digest) for d in staged}))
    data_cost: dict[str, Any] = {}
    if staged:
        shipped, totals = store.stage(session, w, staged, trees, free_kb=free_kb())
        data_cost = {"inputs": [dataclasses.asdict(s) for s in shipped], **totals}
        for s in shipped:
            print(s.line(session.label), file=sys.stderr, flush=True)
        # code files that are data too are in objects/ now: sending them again would
        # replace the objects the data trees link to with new copies
        missing -= {sha for d in staged for sha, _ in d.manifest.values()}
    by_hash = {v[0]: p for p, v in manifest.items()}
    rid = run_id
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
            if p.name not in NOT_SHIPPED and p.is_file():
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
        session.write_file(incoming + ".tar", archive, mode=0o600)
    except OSError as e:
        raise workdir_error(str(e), w, session.label) from None
    # unpack next to the store, publish objects by rename (a concurrent submit never sees a
    # half-written one), then move the run files into place and assemble code/
    r = session.run(
        f"set -e; cd {_q(w)}; rm -rf {_q(incoming)}; mkdir -p {_q(incoming)} {_q(remote_rd)}; "
        f"tar -xf {_q(incoming)}.tar -C {_q(incoming)} 2>&1; "
        f"if [ -d {_q(incoming)}/objects ]; then find {_q(incoming)}/objects -type f -exec "
        "mv -f -t objects {} +; fi; "
        f"mv -f {_q(incoming)}/run/* {_q(incoming)}/run/.runner-* {_q(remote_rd)}/ 2>&1; "
        f"sh {_q(remote_rd)}/.runner-setup.sh 2>&1; "
        f"rm -rf {_q(incoming)} {_q(incoming)}.tar {_q(remote_rd)}/.runner-setup.sh; "
        f": > {_q(remote_rd)}/{LOG}", timeout=600, retry=False)
    if not r.ok:
        session.run(f"rm -rf {_q(incoming)} {_q(incoming)}.tar", timeout=60)
        lines = (r.stdout + r.stderr).strip().splitlines() or [r.last_error()]
        telling = [ln for ln in lines if any(k in ln for k in FS_ERRORS)]
        raise workdir_error((telling or lines)[-1], w, session.label)
    total = sum(int(v[1]) for v in manifest.values())
    return {"files": len(manifest), "bytes": total, "sent_files": len(missing),
            "sent_bytes": sent, "archive_bytes": len(archive)}, data_cost


# -- the way back ------------------------------------------------------------------------------
def fetch(session: Session, w: str, run_id: str, remote_dir: str, dest: Path, *,
          max_fetch_mb: int) -> None:
    """Bring the run directory ``remote_dir`` (without ``code/``) back into ``dest``: one tar
    packed on the host under ``w/outgoing``, read over SFTP, extracted safely. Outputs over
    ``max_fetch_mb`` stay on the host, with a note in ``outputs/NOT_FETCHED.txt``."""
    cap_k = int(max_fetch_mb) * 1024
    out = f"{w}/outgoing/{run_id}.{os.getpid()}.tar"
    r = session.run(
        f"cd {_q(remote_dir)} || exit 3; mkdir -p {_q(os.path.dirname(out))}; "
        f"sz=$(du -sk --exclude=./code . | cut -f1); ex=''; "
        f"if [ \"$sz\" -gt {cap_k} ]; then ex=--exclude=./outputs; echo \"over $sz\"; fi; "
        f"tar -cf {_q(out)} --exclude=./code --exclude=./.runner-env --exclude=./.data $ex . 2>&1 "
        "|| { echo 'tar failed'; exit 4; }", timeout=600)
    if r.returncode == 3:
        print(f"warning: run {run_id}: its directory {remote_dir} is gone from "
              f"{session.label}; nothing to fetch.", file=sys.stderr)
        return
    if not r.ok:
        raise UserError(f"run {run_id}: packing {remote_dir} on "
                        f"{session.label} failed: {r.stdout.strip() or r.last_error()}")
    buf = bytearray()
    try:
        session.get_file(out, buf.extend)
    finally:
        session.run(f"rm -f {_q(out)}", timeout=60)
    skipped = safe_extract(bytes(buf), dest, max_bytes=cap_k * 1024 + (64 << 20))
    if skipped:
        print(f"warning: run {run_id}: not fetched (links or paths outside the run "
              f"directory): {', '.join(skipped[:5])}", file=sys.stderr)
    over = next((ln for ln in r.stdout.splitlines() if ln.startswith("over ")), None)
    if over:
        size = int(over.split()[1]) * 1024
        note = (f"the outputs of run {run_id} are {size_text(size)} on {session.label}, "
                f"over target.max_fetch_mb ({max_fetch_mb} MiB): they stay at "
                f"{remote_dir}/outputs. Raise target.max_fetch_mb, or copy them with "
                f"scp/rsync.")
        (Path(dest) / OUTPUTS).mkdir(parents=True, exist_ok=True)
        (Path(dest) / OUTPUTS / "NOT_FETCHED.txt").write_text(note + "\n")
        print(f"warning: {note}", file=sys.stderr)


def mirror_log(local: Path, offset: int, data: bytes) -> None:
    """Keep the local ``log.txt`` a prefix of the host's, so `runner logs RUN` works offline."""
    try:
        with open(local, "r+b" if local.exists() else "wb") as f:
            if f.seek(0, os.SEEK_END) >= offset:
                f.seek(offset)
                f.write(data)
    except OSError:
        pass


def read_status(session: Session, remote_dir: str) -> tuple[RunStatus | None, bool]:
    """(the run's status.json on the host, whether a cancel was asked there): one command."""
    r = session.run(f"cat {_q(remote_dir)}/{STATUS} 2>/dev/null; echo; echo '@@runner@@'; "
                    f"[ -e {_q(remote_dir)}/{CANCEL} ] && echo cancel; :", timeout=60)
    status_text, _, cancel_text = r.stdout.partition("@@runner@@\n")
    try:
        st = RunStatus.from_dict(json.loads(status_text)) if status_text.strip() else None
    except (json.JSONDecodeError, KeyError, ValueError):
        st = None
    return st, cancel_text.strip() == "cancel"


def write_final_status(session: Session, remote_dir: str, final: RunStatus) -> RunStatus:
    """Record a verdict the client reached in the run's status.json on the host, unless the
    worker wrote a final status meanwhile (never replaced: that one is returned instead; an
    out-of-memory verdict is the exception, since the worker cannot know it)."""
    blob = json.dumps(final.to_dict() | {"time": time.time()})
    write = (f"printf '%s' {_q(blob)} > .status.json.tmp && "
             "mv -f .status.json.tmp status.json")
    if not final.oom:
        terminal = "|".join(s.value for s in RunState if s.terminal)
        write = (f"if grep -Eq '\"state\": *\"({terminal})\"' status.json 2>/dev/null; "
                 f"then echo '@@kept'; cat status.json; else {write}; fi")
    r = session.run(f"cd {_q(remote_dir)} 2>/dev/null && {write}", timeout=60)
    if r.ok and r.stdout.startswith("@@kept"):
        try:
            return RunStatus.from_dict(json.loads(r.stdout.split("\n", 1)[1]))
        except (json.JSONDecodeError, KeyError, ValueError, IndexError):
            pass
    return final
