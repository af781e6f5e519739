"""The ``notify`` plugin: word when a run ends, through ``runner_run_finished``.

Configured once per user (``~/.config/runner/notify.yaml``, or under ``$XDG_CONFIG_HOME``)
and/or per project (``.runner/notify.yaml``; its keys win), or in the file
``$RUNNER_NOTIFY_CONFIG`` names. Three notifiers, each optional:

- ``command``: a shell command, with the run in its environment (``RUNNER_RUN_ID``,
  ``RUNNER_RUN_STATE``, ``RUNNER_RUN_EXIT_CODE``, ``RUNNER_RUN_MESSAGE``,
  ``RUNNER_RUN_SUMMARY`` as JSON);
- ``webhook_env``: the name of an environment variable that holds a URL; the run is POSTed
  there as JSON (the URL often carries a token, so it never sits in a file);
- ``desktop``: a desktop notification through ``notify-send``, where it exists.

A notifier that fails prints one warning; it never changes how the run is recorded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import hookimpl

if TYPE_CHECKING:
    from runner.backend import RunStatus

#: the environment variable naming a notify config file to use instead of the usual two
CONFIG_ENV = "RUNNER_NOTIFY_CONFIG"
FILE_NAME = "notify.yaml"


@dataclass(frozen=True)
class NotifyConfig:
    """The keys of ``notify.yaml``."""

    states: tuple[str, ...] = ("SUCCEEDED", "FAILED", "CANCELLED", "LOST")  # states that notify
    command: str | None = None  # shell command run with RUNNER_RUN_* in its environment
    webhook_env: str | None = None  # name of the variable holding the webhook URL
    desktop: bool = False  # notify-send, where it exists
    timeout: float = 10.0  # seconds each notifier may take
    fields: tuple[str, ...] = field(default=(), repr=False)  # the keys the files set

    @property
    def active(self) -> bool:
        return bool(self.command or self.webhook_env or self.desktop)


def _warn(text: str) -> None:
    print(f"warning: notify: {text}", file=sys.stderr, flush=True)


def config_files() -> list[Path]:
    """The notify files that apply here, the one that wins last."""
    named = os.environ.get(CONFIG_ENV)
    if named:
        return [Path(named)]
    from runner.store import Store, find_project_root

    user = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "runner" / FILE_NAME
    return [user, Store.home_for(find_project_root()) / FILE_NAME]


def load_config(files: list[Path]) -> NotifyConfig:
    """The merged notify config of ``files`` (missing ones are skipped; a bad one warns)."""
    import yaml

    names = {f.name for f in dataclasses.fields(NotifyConfig)} - {"fields"}
    values: dict[str, Any] = {}
    for path in files:
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, yaml.YAMLError) as e:
            _warn(f"{path} cannot be read ({str(e).splitlines()[0]}); it is ignored.")
            continue
        if not isinstance(data, dict):
            _warn(f"{path} must be a mapping of {', '.join(sorted(names))}; it is ignored.")
            continue
        unknown = sorted(str(k) for k in set(data) - names)
        if unknown:
            _warn(f"{path}: unknown key(s) {', '.join(unknown)} ignored "
                  f"(valid: {', '.join(sorted(names))}).")
        values.update({k: v for k, v in data.items() if k in names})
    if isinstance(values.get("states"), str):
        values["states"] = [values["states"]]
    if "states" in values:
        values["states"] = tuple(str(s).upper() for s in values["states"] or ())
    return NotifyConfig(**values, fields=tuple(values))


def payload(run_id: str, status: RunStatus, summary: Mapping[str, Any]) -> dict[str, Any]:
    """What every notifier says about the run."""
    return {"run_id": run_id, "state": status.state.value, "exit_code": status.exit_code,
            "oom": status.oom, "message": status.message, "summary": dict(summary),
            "host": socket.gethostname()}


def _text(p: Mapping[str, Any]) -> str:
    metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in list(p["summary"].items())[:4])
    why = f" ({p['message']})" if p["message"] and p["state"] != "SUCCEEDED" else ""
    return f"run {p['run_id']} {p['state']}{why}" + (f": {metrics}" if metrics else "")


def run_command(c: NotifyConfig, p: Mapping[str, Any]) -> None:
    assert c.command
    env = dict(os.environ)
    env.update({"RUNNER_RUN_ID": p["run_id"], "RUNNER_RUN_STATE": p["state"],
                "RUNNER_RUN_EXIT_CODE": "" if p["exit_code"] is None else str(p["exit_code"]),
                "RUNNER_RUN_MESSAGE": p["message"], "RUNNER_RUN_SUMMARY": json.dumps(p["summary"]),
                "RUNNER_RUN_TEXT": _text(p)})
    done = subprocess.run(c.command, shell=True, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=c.timeout)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"exited with code {done.returncode} {tail[0]}".strip())


def post_webhook(c: NotifyConfig, p: Mapping[str, Any]) -> None:
    import urllib.error
    import urllib.request

    assert c.webhook_env
    url = os.environ.get(c.webhook_env)
    if not url:
        raise RuntimeError(f"${c.webhook_env} is not set (it holds the webhook's URL)")
    body = json.dumps({**p, "text": _text(p)}).encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=c.timeout) as resp:  # noqa: S310 - the user's URL
            resp.read()
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"the server answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise RuntimeError(f"no answer ({reason})") from None


def desktop(c: NotifyConfig, p: Mapping[str, Any]) -> None:
    exe = shutil.which("notify-send")
    if exe is None:
        return  # no desktop here (a server, a container): nothing to show it on
    r = subprocess.run([exe, "runner", _text(p)], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=c.timeout)
    if r.returncode != 0:
        said = (r.stderr.strip().splitlines() or [""])[-1]
        raise RuntimeError(f"{exe} exited with code {r.returncode}" + (f": {said}" if said else ""))


def notify(c: NotifyConfig, p: Mapping[str, Any]) -> None:
    """Run each configured notifier; a failure is one warning, never an exception."""
    if not c.active or p["state"] not in c.states:
        return
    for name, fn, wanted in (("command", run_command, c.command),
                             (f"webhook (URL from ${c.webhook_env})", post_webhook, c.webhook_env),
                             ("desktop", desktop, c.desktop)):
        if not wanted:
            continue
        try:
            fn(c, p)
        except Exception as e:  # noqa: BLE001 - a notifier never fails the run
            # the message names the variable, never the URL (it may hold a token)
            _warn(f"{name} failed for run {p['run_id']}: {type(e).__name__}: {e}")


@hookimpl
def runner_run_finished(run_id: str, status: RunStatus, summary: Mapping[str, Any]) -> None:
    try:
        config = load_config(config_files())
    except Exception as e:  # noqa: BLE001 - a bad config never fails the run either
        _warn(f"the notify config cannot be used: {e}")
        return
    notify(config, payload(run_id, status, summary))
