"""Word when a run ends: the built-in notify plugin, through the CLI, with a webhook server
the test starts on loopback and a shell command; a failing notifier never fails the run."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.fixture
def hook_server() -> Iterator[tuple[str, list[dict]]]:
    """A webhook receiver on 127.0.0.1: (its URL, the JSON bodies it received)."""
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            n = int(self.headers["Content-Length"])
            got.append({"path": self.path, "type": self.headers["Content-Type"],
                        "body": json.loads(self.rfile.read(n))})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks/secret-token", got
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_and_command_hear_of_each_run_that_ends(project: Path, hook_server, tmp_path: Path) -> None:
    url, got = hook_server
    heard = tmp_path / "heard.txt"
    (project / ".runner" / "notify.yaml").write_text(
        "webhook_env: TEAM_HOOK_URL\n"
        f"command: echo \"$RUNNER_RUN_ID $RUNNER_RUN_STATE $RUNNER_RUN_SUMMARY\" >> {heard}\n")
    (project / "ok.py").write_text("import runner\nrunner.log_metric('acc', 0.75)\n")
    (project / "bad.py").write_text("raise SystemExit(3)\n")
    env = {"TEAM_HOOK_URL": url, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    ok = run_cli("submit", "model=script", "model.path=ok.py", cwd=project, env=env)
    assert ok.returncode == 0, ok.stderr
    bad = run_cli("submit", "model=script", "model.path=bad.py", cwd=project, env=env)
    assert bad.returncode == 1
    assert "warning" not in ok.stderr + bad.stderr
    assert [g["body"]["state"] for g in got] == ["SUCCEEDED", "FAILED"]
    first = got[0]
    assert first["path"] == "/hooks/secret-token" and first["type"] == "application/json"
    assert first["body"]["summary"] == {"acc": 0.75} and first["body"]["exit_code"] == 0
    assert got[1]["body"]["exit_code"] == 3 and "code 3" in got[1]["body"]["message"]
    lines = heard.read_text().splitlines()
    assert len(lines) == 2 and lines[0].split()[1] == "SUCCEEDED" and '{"acc": 0.75}' in lines[0]
    assert lines[0].split()[0] == first["body"]["run_id"]


def test_failing_notifiers_never_fail_the_run(project: Path, tmp_path: Path) -> None:
    """A command that fails, a webhook nobody answers, a URL variable that is unset: the run
    is SUCCEEDED all the same, with one warning each, and the URL is never printed."""
    import socket

    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (project / ".runner" / "notify.yaml").write_text(
        "webhook_env: TEAM_HOOK_URL\ncommand: exit 7\nbogus: 1\n")
    (project / "ok.py").write_text("print('fine')\n")
    url = f"http://127.0.0.1:{port}/token-abc123"
    res = run_cli("submit", "model=script", "model.path=ok.py", cwd=project,
                  env={"TEAM_HOOK_URL": url, "XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert res.returncode == 0 and "SUCCEEDED" in res.stderr, res.stderr
    assert "command failed" in res.stderr and "exited with code 7" in res.stderr
    assert "webhook (URL from $TEAM_HOOK_URL) failed" in res.stderr
    assert "unknown key(s) bogus" in res.stderr
    assert "token-abc123" not in res.stderr + res.stdout and "Traceback" not in res.stderr
    assert "SUCCEEDED" in run_cli("runs", cwd=project).stdout

    res = run_cli("submit", "model=script", "model.path=ok.py", cwd=project,
                  env={"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "TEAM_HOOK_URL": ""})
    assert res.returncode == 0 and "$TEAM_HOOK_URL is not set" in res.stderr


def test_user_config_applies_and_states_filter(project: Path, hook_server, tmp_path: Path) -> None:
    """The user's file applies in every project; ``states`` picks the states that notify."""
    url, got = hook_server
    (tmp_path / "xdg" / "runner").mkdir(parents=True)
    (tmp_path / "xdg" / "runner" / "notify.yaml").write_text(
        "webhook_env: TEAM_HOOK_URL\nstates: [FAILED]\n")
    (project / "ok.py").write_text("pass\n")
    (project / "bad.py").write_text("raise SystemExit(1)\n")
    env = {"TEAM_HOOK_URL": url, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert run_cli("submit", "model=script", "model.path=ok.py", cwd=project, env=env).returncode == 0
    assert run_cli("submit", "model=script", "model.path=bad.py", cwd=project, env=env).returncode == 1
    assert [g["body"]["state"] for g in got] == ["FAILED"]


def test_desktop_notification_goes_through_notify_send_on_path(project: Path, tmp_path: Path) -> None:
    """``desktop: true`` runs the ``notify-send`` found on PATH (here a stand-in that records
    its arguments: this machine has no desktop session); one that fails is one warning."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shown = tmp_path / "shown.txt"
    fake = bin_dir / "notify-send"
    fake.write_text(f"#!/bin/sh\nprintf '%s|' \"$@\" >> {shown}\necho >> {shown}\n"
                    "[ -z \"$NOTIFY_FAIL\" ] || { echo 'no notification daemon' >&2; exit 1; }\n")
    fake.chmod(0o755)
    (project / ".runner" / "notify.yaml").write_text("desktop: true\n")
    (project / "ok.py").write_text("import runner\nrunner.log_metric('acc', 0.5)\n")
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    ok = run_cli("submit", "model=script", "model.path=ok.py", cwd=project, env=env)
    assert ok.returncode == 0 and "warning" not in ok.stderr, ok.stderr
    run_id = ok.stderr.split("run ", 1)[1].split(":", 1)[0]
    (line,) = shown.read_text().splitlines()
    title, text, _ = line.split("|")
    assert title == "runner" and run_id in text and "SUCCEEDED" in text and "acc" in text
    failing = run_cli("submit", "model=script", "model.path=ok.py", cwd=project,
                      env={**env, "NOTIFY_FAIL": "1"})
    assert failing.returncode == 0, failing.stderr  # the run is not failed by its notifier
    warnings = [ln for ln in failing.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "desktop failed" in warnings[0], failing.stderr
    assert "exited with code 1: no notification daemon" in warnings[0]
