"""The content store of a remote host, for data inputs: each file travels once, by sha256.

Layout under the target's ``work_dir`` (shared with the code objects of :mod:`remote_docker`)::

    objects/SHA256      one file per content, verified on the host before it is published
    data/DIGEST/        one tree per data input version (:attr:`DataInput.digest`): hard links
                        to objects/, published by one rename, never changed afterwards
    incoming/.data-TOK  one upload's unverified objects (removed when it ends)

Shipping an input whose tree is missing costs two commands and two SFTP writes: one asks
which of its objects the host lacks (the hash list goes as a file read on stdin, so 50,000
files never meet ``ARG_MAX``); the other unpacks a gzip'd tar, streamed over SFTP, that holds
those objects and a hard-link entry per file of the tree. On the host, ``tar`` unpacks next to the store, ``sha256sum -c`` checks every object that
arrived, and only checked objects are renamed into ``objects/``. A cut-off or corrupted upload
publishes no partial object and no tree; what did arrive whole is kept, so the next submit
sends only the rest. A tree that exists already costs nothing here: the caller checks for it
in the command that asks about the code objects.
"""

from __future__ import annotations

import gzip
import io
import secrets
import tarfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

from runner.errors import UserError
from runner.request import DataInput, DataKind
from runner.units import size_text

__all__ = ["DataShipped", "missing_objects", "stage", "tree_path", "trees_present_script"]

#: Suffixes of formats that are compressed already: gzip gains nothing on them.
_COMPRESSED = (".gz", ".tgz", ".xz", ".txz", ".bz2", ".zip", ".npz", ".zst", ".7z", ".jpg",
               ".jpeg", ".png", ".webp", ".mp4", ".mp3", ".parquet", ".h5", ".keras")
#: Upload folders and unpublished trees older than this (minutes) belong to dead uploads.
_STALE_MIN = 24 * 60


@dataclass(frozen=True)
class DataShipped:
    """What staging one data input cost (kept in ``remote.json``)."""

    key: str  # the data config key
    digest: str  # the tree's name under data/
    files: int  # files in the input
    bytes: int  # their total size
    sent_files: int = 0  # files whose content travelled (0: the host had it all)
    sent_bytes: int = 0  # their size
    present: bool = False  # the tree was on the host already: nothing was asked or sent

    def line(self, where: str) -> str:
        """The one line a submit prints about this input."""
        if self.present:
            return (f"[runner] data {self.key}: {self.files} files ({size_text(self.bytes)}) "
                    f"already on {where}")
        return (f"[runner] data {self.key}: shipped {self.sent_files} of {self.files} files "
                f"({size_text(self.sent_bytes)} of {size_text(self.bytes)}) to {where}")


def tree_path(work_dir: str, d: DataInput) -> str:
    """The host folder that holds input ``d`` (a file input: the folder with that file)."""
    return f"{work_dir}/data/{d.digest}"


def trees_present_script(digests: Iterable[str]) -> str:
    """A shell fragment, run in the work dir, that prints ``tree:DIGEST`` for each tree there."""
    ds = " ".join(sorted(set(digests)))
    return f"for d in {ds}; do [ -d \"data/$d\" ] && echo \"tree:$d\"; done; " if ds else ""


# -- bytes to the host -------------------------------------------------------------------------
# Everything goes through the session's one shell and its SFTP channel: a new exec channel
# costs a login on the host (its rc files, PAM), which is often most of a second.
class _Sink(io.RawIOBase):
    """A writable stream into a remote file over SFTP, counting what it sent."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.sent = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.f.write(data)
        self.sent += len(data)
        return len(data)


def missing_objects(session: Any, work_dir: str, hashes: Sequence[str],
                    timeout: float = 600) -> set[str]:
    """The hashes among ``hashes`` that ``objects/`` lacks on the host: the list goes as a
    file (SFTP) and one command reads it on its stdin (50,000 hashes never meet ``ARG_MAX``)."""
    if not hashes:
        return set()
    import shlex

    want = f"{work_dir}/incoming/.want-{secrets.token_hex(6)}"
    try:
        session.write_file(want, ("\n".join(hashes) + "\n").encode(), mode=0o600)
    except OSError as e:
        raise UserError(f"could not write to {work_dir}/incoming on {session.label}: {e}") from None
    q, got = shlex.quote(want), shlex.quote(want + ".out")
    # the answer comes back by SFTP too: megabytes of hashes are no shell output
    # one sorted listing compared with the sorted wish list: no shell loop over 50,000 names
    r = session.run(f"cd {shlex.quote(work_dir)}/objects && LC_ALL=C sort -u {q} > {q}.s && "
                    f"ls -1 -f . | LC_ALL=C sort | LC_ALL=C comm -23 {q}.s - > {got}; rc=$?; "
                    f"rm -f {q} {q}.s; exit $rc", timeout=timeout)
    if not r.ok:
        raise UserError(f"could not list the content store {work_dir}/objects on "
                        f"{session.label}: {r.last_error()}")
    try:
        answer = session.read_file(want + ".out") or b""
    finally:
        session.run(f"rm -f {got}", timeout=60)
    return set(answer.decode().split())


# -- the upload ----------------------------------------------------------------------------------
def _upload_script(work_dir: str, tok: str, trees: Sequence[tuple[str, str]]) -> str:
    """The host side of one upload: unpack, verify, publish verified objects, then the trees
    (only when everything arrived and checked out). Prints ``@@bad H``, ``@@tar RC``,
    ``@@published N`` and ``@@tree DIGEST`` lines."""
    import shlex

    pairs = " ".join(f"{t}:{d}" for t, d in trees)
    return f"""
trap '' HUP PIPE
cd {shlex.quote(work_dir)} || exit 3
W=$(pwd); T=incoming/.data-{tok}
find incoming data -maxdepth 1 \\( -name '.data-*' -o -name '.tmp-*' \\) -mmin +{_STALE_MIN} \\
  -exec rm -rf {{}} + 2>/dev/null
mkdir -p "$T/o" data objects || exit 4
tar -xzf "$T.tgz" --no-same-owner 2>"$T.err"; rc=$?; rm -f "$T.tgz"
echo "@@tar $rc"; tail -n 3 "$T.err" | sed 's/^/@@tarerr /'
bad=""
if cd "$T/o"; then
  if [ -n "$(ls)" ]; then
    bad=$(ls | sed 's/.*/&  &/' | sha256sum -c --quiet 2>/dev/null | sed -n 's/: FAILED.*//p')
    for b in $bad; do rm -f "$b"; echo "@@bad $b"; done
    n=$(ls | wc -l)
    [ "$n" -gt 0 ] && find . -type f -exec mv -f -t "$W/objects" {{}} +
    echo "@@published $n"
  fi
  cd "$W"
fi
for p in {pairs}; do
  t=${{p%%:*}}; d=${{p#*:}}
  if [ "$rc" -eq 0 ] && [ -z "$bad" ] && mv -T "data/$t" "data/$d" 2>/dev/null; then
    echo "@@tree $d"
  elif [ -d "data/$d" ]; then
    rm -rf "data/$t"; echo "@@tree $d"
  else
    rm -rf "data/$t"
  fi
done
rm -rf "$T" "$T.err"
[ "$rc" -eq 0 ] && [ -z "$bad" ]
"""


class _Cut(Exception):
    """The client stopped the stream on purpose (a file could not be read whole)."""


def _send(sink: _Sink, tok: str, source: dict[str, tuple[str, int]], missing: set[str],
          trees: Sequence[tuple[str, str]], todo: Sequence[DataInput], compress: int,
          opener: Callable[[str], IO[bytes]]) -> None:
    """Stream the tar: the missing objects, then one hard-link entry per file of each tree.
    A file that cannot be read whole raises :class:`_Cut` from inside the archive, so no
    end-of-archive is written and the host's tar sees a cut-off stream."""
    raw = io.BufferedWriter(sink, buffer_size=1 << 20)
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=compress, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        now = int(time.time())
        for sha, (path, size) in sorted(source.items()):
            info = tarfile.TarInfo(f"incoming/.data-{tok}/o/{sha}")
            info.size, info.mode, info.mtime = size, 0o644, now
            try:
                with opener(path) as f:
                    tar.addfile(info, f)
            except OSError as e:
                raise _Cut(f"{path} could not be read whole while it was shipped "
                           f"({e.strerror or e}): it changed after it was hashed") from None
        for (tmp, _digest), d in zip(trees, todo, strict=True):
            for rel, (sha, _size) in sorted(d.manifest.items()):
                link = tarfile.TarInfo(f"data/{tmp}/{rel}")
                link.type, link.mtime, link.mode = tarfile.LNKTYPE, now, 0o644
                link.linkname = (f"incoming/.data-{tok}/o/{sha}" if sha in missing
                                 else f"objects/{sha}")
                tar.addfile(link)
    raw.flush()


def stage(session: Any, work_dir: str, inputs: Sequence[DataInput], have_trees: set[str], *,
          free_kb: int | None = None, opener: Callable[[str], IO[bytes]] | None = None,
          timeout: float = 3600) -> tuple[list[DataShipped], dict[str, Any]]:
    """Make each input's tree ``data/DIGEST`` exist on the host; return what each cost and the
    transfer's totals (``wire_bytes``: what went over the connection, ``seconds``).

    ``have_trees``: digests the host has already (nothing is asked or sent for those).
    ``opener`` opens a client file for reading (tests pass one that cuts the stream off)."""
    t0 = time.monotonic()
    opener = opener or (lambda p: open(p, "rb"))  # noqa: SIM115 - closed by the caller
    out: list[DataShipped] = []
    todo: list[DataInput] = []
    for d in inputs:
        if d.digest is None:
            continue
        if d.digest in have_trees or any(t.digest == d.digest for t in todo):
            out.append(DataShipped(d.key, d.digest, d.files, d.bytes, present=True))
        else:
            if d.files and not d.manifest:
                raise ValueError(f"data input {d.key}: no manifest (submit needs the client's)")
            todo.append(d)
    totals: dict[str, Any] = {"wire_bytes": 0, "objects_sent": 0, "seconds": 0.0}
    if not todo:
        return out, totals
    wanted = sorted({sha for d in todo for sha, _ in d.manifest.values()})
    missing = missing_objects(session, work_dir, wanted)
    # which client file provides each missing object (the first that has it)
    source: dict[str, tuple[str, int]] = {}
    for d in todo:
        for rel, (sha, size) in sorted(d.manifest.items()):
            if sha in missing and sha not in source:
                source[sha] = (d.source if d.kind is DataKind.FILE else f"{d.source}/{rel}", size)
    need = sum(size for _, size in source.values())
    if free_kb is not None and need > free_kb * 1024:
        raise UserError(f"the data to ship ({size_text(need)}) does not fit in {work_dir} on "
                        f"{session.label} ({size_text(free_kb * 1024)} free).",
                        "free space there (runner remote-gc TARGET), point target.work_dir at a "
                        "bigger disk, or put the data on the host and use data.KEY=target:/path.")
    tok = secrets.token_hex(6)
    trees = [(f".tmp-{d.digest[:12]}-{tok}", d.digest) for d in todo if d.digest]
    packed = sum(size for p, size in source.values() if p.lower().endswith(_COMPRESSED))
    compress = 1 if packed < need / 2 else 0  # level 0: gzip framing only, no CPU spent
    archive = f"{work_dir}/incoming/.data-{tok}.tgz"
    failure: str | None = None
    sink: _Sink | None = None
    try:
        with session.sftp().open(archive, "wb") as f:
            f.set_pipelined(True)
            sink = _Sink(f)
            try:
                _send(sink, tok, source, missing, trees, todo, compress, opener)
            except _Cut as e:
                failure = str(e)  # what arrived whole is still verified and kept
    except (OSError, EOFError) as e:
        failure = f"the upload to {session.label} was cut off ({e or type(e).__name__})"
    except Exception as e:  # paramiko's: the connection dropped
        session.drop()
        failure = f"the upload to {session.label} was cut off ({e or type(e).__name__})"
    # unpack, verify and publish (also after a failure: whole objects are kept, the rest goes)
    r = session.run(_upload_script(work_dir, tok, trees), timeout=timeout, retry=False)
    rc, lines = r.returncode, r.stdout.splitlines()
    published = set(ln.split()[1] for ln in lines if ln.startswith("@@tree "))
    bad = [ln.split()[1] for ln in lines if ln.startswith("@@bad ")]
    tar_err = [ln[len("@@tarerr "):] for ln in lines if ln.startswith("@@tarerr ")]
    totals = {"wire_bytes": sink.sent if sink else 0, "objects_sent": len(source), "compressed": bool(compress),
              "seconds": round(time.monotonic() - t0, 3)}
    if bad and failure is None:
        names = [source[h][0] for h in bad if h in source]
        failure = (f"{len(bad)} file(s) arrived with other content than they were hashed with "
                   f"({', '.join(names[:3])}): they changed while they were shipped")
    if tar_err and rc != 0:
        # a full disk, say: the host's own words tell more than a broken pipe
        where = f"unpacking the data in {work_dir} on {session.label} failed: {'; '.join(tar_err)}"
        failure = f"{failure}; {where}" if failure else where
    if failure is None and (rc != 0 or len(published) < len(trees)):
        cause = (r.stderr.strip()[-300:] or r.stdout.strip()[-300:]) or f"exit code {rc}"
        failure = f"unpacking the data in {work_dir} on {session.label} failed: {cause}"
    if failure is not None:
        raise UserError(f"data not staged: {failure}.",
                        "nothing partial was kept on the host (only whole, verified files); "
                        "submit again to send the rest.")
    for d in todo:
        files = [(sha, size) for sha, size in d.manifest.values() if sha in missing]
        out.append(DataShipped(d.key, d.digest or "", d.files, d.bytes, sent_files=len(files),
                               sent_bytes=sum(n for _, n in files)))
    order = {d.key: i for i, d in enumerate(inputs)}
    return sorted(out, key=lambda s: order.get(s.key, 0)), totals
