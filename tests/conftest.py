"""Shared fixtures: an isolated project, ledger and cache per test; the CLI as a subprocess."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "runner-cache"))
    monkeypatch.delenv("RUNNER_HOME", raising=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty user project (a folder with .runner/, so it is the project root)."""
    root = tmp_path / "proj"
    (root / ".runner").mkdir(parents=True)
    return root


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``runner ARGS`` in a fresh interpreter, as a user would type it."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", *args], cwd=cwd, env=full_env, text=True,
        capture_output=True, timeout=timeout, input=input,
    )


@pytest.fixture
def cli(project: Path):  # type: ignore[no-untyped-def]
    def call(*args: str, **kw):  # type: ignore[no-untyped-def]
        kw.setdefault("cwd", project)
        return run_cli(*args, **kw)

    return call


@pytest.fixture
def tiny_fs(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 512 KiB file system, mounted for one test (the 'full disk'); skipped where this
    user cannot mount one."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def as_at_a_terminal() -> None:
    """``preexec_fn`` for a CLI child that a test interrupts with SIGINT, as Ctrl-C would: a
    suite started in the background inherits SIGINT ignored, and so would the child."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def read_testbed_env() -> dict[str, str]:
    """What ``scripts/testbed.sh up`` recorded (its ``env`` file: hosts, keys, addresses),
    overridden by the real environment."""
    path = Path(os.environ.get("RUNNER_TESTBED_DIR", "/tmp/runner-testbed")) / "env"
    out: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = shlex.split(line)
            if len(parts) == 2 and parts[0] == "export" and "=" in parts[1]:
                k, v = parts[1].split("=", 1)
                out[k] = v
    return out | {k: v for k, v in os.environ.items() if k.startswith("RUNNER_")}
