"""The worker bundle: the runner package (with its built-in plugins and models) and pluggy,
copied into one directory that a target's environment can put on ``sys.path``.

A virtualenv gets it through a ``.pth`` file; a Docker image copies it in. Its content hash
is part of every environment key, so an environment is rebuilt when the worker changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

_SKIP = {"__pycache__", ".mypy_cache", ".pytest_cache"}


def cache_root() -> Path:
    """Where environments and bundles are cached (``$RUNNER_CACHE_DIR`` or ``~/.cache/runner``)."""
    base = os.environ.get("RUNNER_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "runner"
    )
    return Path(base)


def _sources() -> list[tuple[str, Path]]:
    """(name inside the bundle, source directory) for every package the worker needs."""
    import pluggy

    import runner
    import runner.conf
    import runner.models
    import runner.plugins

    return [
        ("runner", Path(runner.__path__[0])),
        ("runner/plugins", Path(runner.plugins.__path__[0])),
        ("runner/models", Path(runner.models.__path__[0])),
        ("runner/conf", Path(runner.conf.__path__[0])),
        ("pluggy", Path(pluggy.__path__[0])),
    ]


def _files(src: Path, nested: set[Path]) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIP and (Path(dirpath) / d) not in nested
        )
        for f in sorted(filenames):
            if f.endswith((".py", ".yaml", ".typed")):
                out.append(Path(dirpath) / f)
    return out


def _plan() -> list[tuple[Path, str]]:
    sources = _sources()
    roots = {p.resolve() for _, p in sources}
    plan = []
    for name, src in sources:
        nested = {r for r in roots if r != src.resolve() and r.is_relative_to(src.resolve())}
        for f in _files(src.resolve(), nested):
            plan.append((f, f"{name}/{f.relative_to(src.resolve()).as_posix()}"))
    return plan


def bundle_hash() -> str:
    """Content hash of what the bundle holds (16 hex digits)."""
    h = hashlib.sha256()
    for src, rel in _plan():
        h.update(rel.encode() + b"\0" + src.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def worker_bundle() -> tuple[Path, str]:
    """Materialize the bundle in the cache (once per content) and return (path, hash)."""
    key = bundle_hash()
    dest = cache_root() / "bundle" / key
    if dest.is_dir():
        return dest, key
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{key}."))
    for src, rel in _plan():
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    try:
        os.replace(tmp, dest)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest, key
