"""Environment keys: a content hash of everything that goes into an environment.

Backends that build environments (a virtualenv, a Docker image) key their cache with
:func:`env_inputs` + :func:`env_key`, and explain a miss with :func:`explain_miss` against the
closest cached inputs. Requirements are normalized (sorted, blank lines and comments
dropped) and ``-r FILE`` lines are replaced by the normalized contents of the file, so the
key changes when a referenced file changes and not when lines are merely reordered.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from runner.backend import EnvSpec
from runner.errors import UserError


def build_venv(venv: Path, python: str, inputs: Mapping[str, Any], bundle: Path) -> None:
    """Make the virtualenv ``venv`` of an env key: ``python -m venv``, its requirements
    (``inputs["requirements"]``), the worker bundle on its path, and its inputs recorded
    (``inputs.json``, what a later miss is explained against). Built beside it and renamed
    into place, so a half-built env is never used; a concurrent build of the same key wins
    once. A requirement pip cannot install is a UserError (pip's output says which)."""
    tmp = venv.with_name(f"{venv.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([python, "-m", "venv", str(tmp)], check=True)
    reqs = [str(r) for r in inputs["requirements"]]
    if reqs:
        proc = subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install",
                               "--disable-pip-version-check", *reqs])
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(f"env: pip could not install the requirements (exit {proc.returncode}).",
                            "the pip output above says which requirement failed.")
    site = next((tmp / "lib").glob("python*/site-packages"))
    (site / "runner-worker.pth").write_text(str(bundle) + "\n")
    (tmp / "inputs.json").write_text(json.dumps(dict(inputs), indent=1, sort_keys=True))
    (tmp / ".complete").touch()
    # the venv's scripts hard-code the path they were made at; only bin/python is used
    try:
        os.replace(tmp, venv)
    except OSError:  # another client built the same key first
        shutil.rmtree(tmp, ignore_errors=True)


def expand_requirements(lines: Iterable[str], root: Path, _seen: frozenset[Path] = frozenset()) -> list[str]:
    """Requirement lines with ``-r FILE`` expanded (recursively), comments and blanks
    dropped, whitespace normalized, sorted and de-duplicated."""
    out: set[str] = set()
    for raw in lines:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ", "-r\t")) or (line.startswith("-r") and len(line) > 2):
            name = line.split(None, 1)[1] if " " in line or "\t" in line else line[2:]
            path = (root / name.strip()).resolve()
            if path in _seen:
                continue
            try:
                text = path.read_text()
            except FileNotFoundError:
                raise UserError(
                    f"env requirements: '-r {name.strip()}' names a file that does not exist ({path}).",
                    "paths in -r lines are relative to the project root.",
                ) from None
            out.update(expand_requirements(text.splitlines(), path.parent, _seen | {path}))
        else:
            out.add(" ".join(line.split()))
    return sorted(out, key=str.lower)


def env_inputs(env: EnvSpec, *, python: str | None, runner_hash: str, **extra: Any) -> dict[str, Any]:
    """The normalized inputs of an environment (what its key is the hash of)."""
    inputs: dict[str, Any] = {
        "python": python,
        "requirements": expand_requirements(env.requirements, env.root or Path.cwd()),
        "runner": runner_hash,
    }
    if env.base_image is not None:
        inputs["base_image"] = env.base_image
    if env.apt:
        inputs["apt"] = sorted(set(env.apt))
    inputs.update(extra)
    return inputs


def env_key(inputs: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the canonical JSON of ``inputs``."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def explain_miss(new: Mapping[str, Any], cached: Iterable[Mapping[str, Any]]) -> str:
    """One line saying what differs between ``new`` and the closest of ``cached``."""
    best: tuple[int, list[str]] | None = None
    for old in cached:
        diffs = _diff(new, old)
        if best is None or len(diffs) < best[0]:
            best = (len(diffs), diffs)
    if best is None:
        return "not cached: no environment built yet"
    return "not cached: " + "; ".join(best[1]) + " (against the closest cached env)"


def _diff(new: Mapping[str, Any], old: Mapping[str, Any]) -> list[str]:
    out = []
    for k in sorted(set(new) | set(old)):
        a, b = new.get(k), old.get(k)
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list):
            added = [x for x in a if x not in b]
            removed = [x for x in b if x not in a]
            parts = [f"+{x}" for x in added] + [f"-{x}" for x in removed]
            out.append(f"{k} changed ({', '.join(parts)})")
        elif k == "runner":
            out.append("runner changed (the worker code is new)")
        else:
            out.append(f"{k} changed ({b!r} -> {a!r})")
    return out
