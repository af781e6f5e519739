"""Code snapshots: a frozen copy of the project taken at submit, so a run never sees edits
made afterwards. Honours ``.gitignore`` (through git when the project is a repository) and
``.runnerignore`` (gitignore-style patterns). Each snapshot comes with a manifest of content
hashes, so a backend that ships it elsewhere can send only what the other side lacks.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from runner.errors import UserError

MAX_BYTES = 200 * 1024 * 1024
_ALWAYS_SKIP = {".git", ".runner", ".venv", "venv", "__pycache__", ".mypy_cache", ".pytest_cache",
                ".ruff_cache", "outputs", "multirun", ".ipynb_checkpoints", "node_modules"}


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.decode("utf-8", "replace") if proc.returncode == 0 else None


def git_state(root: Path) -> dict[str, Any]:
    """Commit, dirty flag and the uncommitted diff of the project (empty outside git)."""
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return {}
    status = _git(root, "status", "--porcelain") or ""
    diff = _git(root, "diff", "HEAD") or ""
    return {
        "commit": commit.strip(),
        "dirty": bool(status.strip()),
        "diff": diff,
        "untracked": [line[3:] for line in status.splitlines() if line.startswith("??")],
    }


def _ignore_patterns(root: Path) -> list[str]:
    f = root / ".runnerignore"
    if not f.is_file():
        return []
    return [ln.strip() for ln in f.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        p = pat.rstrip("/")
        if p.startswith("/"):
            if fnmatch.fnmatch(rel, p[1:]) or rel.startswith(p[1:] + "/"):
                return True
        elif any(fnmatch.fnmatch(part, p) for part in parts) or fnmatch.fnmatch(rel, p):
            return True
    return False


def project_files(root: Path, exclude: tuple[Path, ...] = ()) -> list[str]:
    """Project-relative paths of the files a snapshot takes; files under ``exclude`` (data
    inputs that live in the project and travel as data) are left out."""
    return _project_files(root, exclude, [])


def _project_files(root: Path, exclude: tuple[Path, ...], outside: list[str]) -> list[str]:
    listed = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    if listed is not None:
        files = [f for f in listed.split("\0") if f]
    else:
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = Path(dirpath).relative_to(root)
            # links to folders are not walked into here: _through_links decides about them
            files += [(rel_dir / d).as_posix() for d in dirnames if (Path(dirpath) / d).is_symlink()]
            dirnames[:] = [d for d in dirnames
                           if d not in _ALWAYS_SKIP and not (Path(dirpath) / d).is_symlink()]
            files += [(rel_dir / f).as_posix() for f in filenames]
    patterns = _ignore_patterns(root)
    skip = []
    for e in exclude:
        try:
            skip.append(Path(e).resolve().relative_to(root.resolve()).as_posix())
        except ValueError:
            continue  # outside the project: not in the snapshot anyway

    def keep(f: str) -> bool:
        if set(f.split("/")[:-1]) & _ALWAYS_SKIP or _ignored(f, patterns):
            return False
        return not any(f == x or f.startswith(x + "/") for x in skip)

    linked = _through_links(root, [f for f in files if keep(f)], outside)
    return sorted(f for f in linked if keep(f) and (root / f).is_file())


def _inside(root: Path, path: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def _through_links(root: Path, files: list[str], outside: list[str]) -> list[str]:
    """``files`` with symbolic links handled: a link that points out of the project is left
    out (and named in ``outside``: a snapshot never copies what lies elsewhere, such as a
    link to /etc/passwd); a link to a file inside is taken as that file's content; a link to
    a folder inside stands for the files in that folder."""
    real_root = root.resolve()
    out: list[str] = []
    seen_dirs: set[Path] = set()
    linked_dir: dict[str, bool] = {}  # folder (relative) -> whether it or one above is a link

    def through_link(rel_dir: str) -> bool:
        if not rel_dir:
            return False
        if rel_dir not in linked_dir:
            parent = rel_dir.rpartition("/")[0]
            linked_dir[rel_dir] = through_link(parent) or (root / rel_dir).is_symlink()
        return linked_dir[rel_dir]

    todo = list(files)
    while todo:
        f = todo.pop()
        p = root / f
        if not through_link(f.rpartition("/")[0]) and not p.is_symlink():
            out.append(f)
            continue
        target = p.resolve()
        if not _inside(real_root, target):
            outside.append(f"{f} -> {os.readlink(p) if p.is_symlink() else target}")
            continue
        if target.is_dir():
            if target in seen_dirs:
                continue  # a loop of links
            seen_dirs.add(target)
            for dirpath, dirnames, filenames in os.walk(p, followlinks=False):
                rel = Path(dirpath).relative_to(root).as_posix()
                todo += [f"{rel}/{n}" for n in filenames]
                todo += [f"{rel}/{d}" for d in dirnames if (Path(dirpath) / d).is_symlink()]
                dirnames[:] = [d for d in dirnames
                               if d not in _ALWAYS_SKIP and not (Path(dirpath) / d).is_symlink()]
        elif target.is_file():
            out.append(f)
    return out


def take(root: Path, dest: Path, exclude: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Copy the project into ``dest``; return its manifest ``{path: [sha256, size, mode]}``.
    Paths under ``exclude`` stay out (see :func:`project_files`); links that point out of the
    project stay out too, and are named once on stderr."""
    outside: list[str] = []
    files = _project_files(root, exclude, outside)
    if outside:
        shown = ", ".join(sorted(outside)[:5]) + (" ..." if len(outside) > 5 else "")
        print(f"[runner] left out of the code snapshot: {len(outside)} link(s) pointing out of "
              f"the project ({shown}); copy what they point to into the project if the run "
              "needs it", file=sys.stderr, flush=True)
    total = sum((root / f).stat().st_size for f in files)
    if total > MAX_BYTES:
        biggest = sorted(files, key=lambda f: (root / f).stat().st_size, reverse=True)[:3]
        raise UserError(
            f"the project snapshot would be {total / 2**20:.0f} MiB (limit {MAX_BYTES / 2**20:.0f} MiB).",
            f"largest files: {', '.join(biggest)}",
            "list data and other large files in .runnerignore (gitignore syntax) and read them "
            "from their own location.",
        )
    manifest: dict[str, Any] = {}
    for f in files:
        src, dst = root / f, dest / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        data = dst.read_bytes()
        manifest[f] = [hashlib.sha256(data).hexdigest(), len(data), dst.stat().st_mode & 0o777]
    dest.mkdir(parents=True, exist_ok=True)
    return manifest
