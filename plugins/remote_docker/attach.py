"""``runner attach``: check a host (SSH, host key, Docker, work dir) and write its target file;
``--install-key`` asks once for a password, only to install a public key."""

from __future__ import annotations

import base64
import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any

from runner.backend import (
    Command,
)
from runner.errors import UserError
from runner.plugins._ssh import KeyRefused, Session, settings_of
from runner.plugins.remote_docker.backend import RemoteDockerBackend
from runner.plugins.remote_docker.config import RemoteDockerConfig, _attach_hint


# -- runner attach ------------------------------------------------------------------------------
def _attach_arguments(p: Any) -> None:
    p.add_argument("name", help="the target's name: writes conf/target/NAME.yaml")
    p.add_argument("--host", required=True, help="host name, address or ssh_config alias")
    p.add_argument("--user", help="login user (default: ssh_config's, else yours)")
    p.add_argument("--port", type=int, help="SSH port (default: ssh_config's, else 22)")
    p.add_argument("--key", help="private key file (the SSH agent is used too)")
    p.add_argument("--gpus", help='GPUs offered to runs: "all" or "0,1" (default: none)')
    p.add_argument("--slots", type=int, default=1, help="runs at once on the host (default 1)")
    p.add_argument("--work-dir", default=RemoteDockerConfig.work_dir,
                   help="folder on the host for code objects and run directories")
    p.add_argument("--docker", default="docker", help="docker command on the host")
    p.add_argument("--trust-host-key", metavar="SHA256:...",
                   help="the host key fingerprint you checked; added to the known_hosts file")
    p.add_argument("--ssh-config", help="ssh_config file with the host's alias (default ~/.ssh/config)")
    p.add_argument("--known-hosts", help="known_hosts file to check and to add a trusted key to")
    p.add_argument("--force", action="store_true", help="replace an existing target file")
    p.add_argument("--install-key", action="store_true",
                   help="when the host refuses the key: ask once for the account's password and "
                        "add KEY.pub to ~/.ssh/authorized_keys there (the password is not kept)")


def _yaml_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return json.dumps(str(v))


def target_yaml(c: RemoteDockerConfig, comment: str) -> str:
    """A commented target file for ``c``. It extends the backend's defaults (so every key
    can be set on the command line: ``target.memory=16g``); only the keys that differ from
    them are active, the rest are listed, commented out, to show what can be set."""
    from runner.config import SCHEMA_GROUP

    lines = [f"# {comment}",
             "# every key starts at its default; `runner submit --cfg job target=NAME` shows them",
             "defaults:", f"  - /{SCHEMA_GROUP}/remote_docker@_here_", "  - _self_",
             "backend: remote_docker"]
    defaults = RemoteDockerConfig()
    for f in dataclasses.fields(RemoteDockerConfig):
        if f.name == "backend":
            continue
        v = getattr(c, f.name)
        line = f"{f.name}: {_yaml_value(v)}"
        lines.append(line if v != getattr(defaults, f.name) or f.name in ("host", "slots", "gpus")
                     else f"# {line}")
    return "\n".join(lines) + "\n"


def install_public_key(session: Session, public_key: str) -> bool:
    """Append ``public_key`` (one authorized_keys line) to ``~/.ssh/authorized_keys`` on the
    host unless a line already has that key; ``~/.ssh`` is made 700 and the file 600.
    True when it was added, False when it was there already."""
    parts = public_key.split()
    marker = " ".join(parts[:2])  # key type and base64: the comment may differ
    r = session.run(
        f"umask 077; k={shlex.quote(public_key)}; m={shlex.quote(marker)}; "
        'f="$HOME/.ssh/authorized_keys"; '
        'mkdir -p "$HOME/.ssh" && chmod 700 "$HOME/.ssh" && touch "$f" && chmod 600 "$f" '
        "|| exit 3; "
        'if grep -qF -- "$m" "$f"; then echo present; exit 0; fi; '
        'if [ -s "$f" ] && [ -n "$(tail -c 1 "$f")" ]; then echo >>"$f"; fi; '
        "printf '%s\\n' \"$k\" >>\"$f\" && echo added",
        timeout=60, retry=False)
    out = r.stdout.strip()
    if not r.ok or out not in ("added", "present"):
        raise UserError(f"could not add the key to ~/.ssh/authorized_keys on {session.label}: "
                        f"{r.last_error()}",
                        "check that the account's home folder is writable; nothing was "
                        "written here.")
    return out == "added"


#: The key ``--install-key`` installs when ``--key`` is not given.
DEFAULT_KEY = "~/.ssh/id_ed25519"


def _public_key(key: Path) -> str:
    """The one authorized_keys line of ``key``'s pair (``KEY.pub``), checked."""
    pub = key.with_name(key.name + ".pub")
    make = f"make one with: ssh-keygen -t ed25519 -f {key} (then load it into the SSH agent " \
           "if you give it a passphrase), and run this again"
    if not key.is_file() or not pub.is_file():
        missing = ", ".join(str(p) for p in (key, pub) if not p.is_file())
        raise UserError(f"--install-key: no key pair to install ({missing} does not exist).",
                        make + "; or name an existing pair's private key with --key.")
    lines = [ln for ln in pub.read_text(errors="replace").splitlines() if ln.strip()]
    parts = lines[0].split() if len(lines) == 1 else []
    try:
        ok = len(parts) >= 2 and bool(base64.b64decode(parts[1], validate=True))
    except ValueError:
        ok = False
    if not ok:
        raise UserError(f"--install-key: {pub} is not an OpenSSH public key (one line: "
                        "TYPE BASE64 [COMMENT]).", make + ".")
    return " ".join(parts)


def _install_key(c: RemoteDockerConfig, refused: KeyRefused, trust: str | None, hint: str) -> None:
    """Ask once for the password of the account that refused the key, log in with it (the
    host key checked as for any connection), install the public key and disconnect."""
    import getpass  # deferred: only this path asks anything
    import warnings

    key = Path(c.key or DEFAULT_KEY).expanduser()
    line = _public_key(key)
    try:
        with warnings.catch_warnings():  # without a terminal getpass says so itself, once
            warnings.simplefilter("ignore", getpass.GetPassWarning)
            password = getpass.getpass(
                f"password for {refused.where} (asked once, used only to install {key}.pub "
                "there; not stored): ")
    except (EOFError, KeyboardInterrupt):
        password = ""
    if not password:
        raise UserError(f"--install-key: no password was given for {refused.where}; nothing "
                        "was installed or written.",
                        "run the command again from a terminal and type the account's password "
                        "at the prompt.")
    session = Session(settings_of(c), trust=trust, trust_hint=hint)
    try:
        session.connect(password=password)
        del password
        added = install_public_key(session, line)
        label = session.label
    finally:
        session.close()
    print(f"{'installed' if added else 'already there:'} {key}.pub in ~/.ssh/authorized_keys "
          f"of {label}; the password is not kept")


def _attach(args: Any) -> int:
    from runner.store import find_project_root

    trust = args.trust_host_key
    if trust is not None and not trust.startswith("SHA256:"):
        raise UserError(f"--trust-host-key: '{trust}' is not a SHA256 fingerprint.",
                        "copy it as the refusal printed it: SHA256:<43 characters>")
    key = args.key or (DEFAULT_KEY if args.install_key else None)
    c = RemoteDockerConfig(
        host=args.host, user=args.user, port=args.port,
        key=str(Path(key).expanduser().resolve()) if key else None,
        ssh_config=str(Path(args.ssh_config).expanduser().resolve()) if args.ssh_config else None,
        known_hosts=str(Path(args.known_hosts).expanduser().resolve()) if args.known_hosts else None,
        gpus=args.gpus, slots=args.slots, work_dir=args.work_dir, docker=args.docker)
    root = find_project_root()
    path = root / "conf" / "target" / f"{args.name}.yaml"
    if path.exists() and not args.force:
        raise UserError(f"{path} already exists.", "pick another name, or pass --force to "
                        "replace it.")
    if args.install_key:
        _public_key(Path(c.key or DEFAULT_KEY))  # a missing pair is refused before any login
    hint = _attach_hint(c, args.name)
    session = Session(settings_of(c), trust=trust, trust_hint=hint)
    try:
        try:
            session.connect()
        except KeyRefused as refused:
            if not args.install_key:
                raise
            _install_key(c, refused, trust, hint)
            try:
                session.connect()
            except KeyRefused as e:
                raise UserError(
                    f"{e.where} still refuses {c.key} after it was added to "
                    "~/.ssh/authorized_keys there.",
                    "the host's sshd may read keys from another file (AuthorizedKeysFile) or "
                    "ignore them because the home folder is group- or world-writable "
                    "(StrictModes); `ssh -v` shows why.") from None
        backend = RemoteDockerBackend(c)
        backend._session = session
        facts = backend.facts()
        if c.gpus:
            r = session.run("nvidia-smi -L 2>&1", timeout=60)
            gpu_line = r.stdout.strip().splitlines()[0] if r.ok and r.stdout.strip() else \
                "nvidia-smi does not answer (`runner doctor` says more)"
        else:
            gpu_line = "none requested"
        label = session.label
    finally:
        session.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(target_yaml(c, f"{label}: a Docker engine reached over SSH (runner attach)"))
    print(f"attached {args.name}: {label}, Docker answers, work dir {facts.work_dir} "
          f"({(facts.free_kb or 0) // 1024} MiB free), GPUs: {gpu_line}")
    print(f"wrote {path}; use it with: runner submit target={args.name}")
    return 0


def attach_command() -> Command:
    return Command("attach", "attach a remote Docker host over SSH as a target "
                   "(writes conf/target/NAME.yaml)", _attach_arguments, _attach)
