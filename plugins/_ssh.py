"""The SSH layer of the remote backends: one connection per host, host keys checked against a
known_hosts file the target names, commands run as exec channels with binary stdin/stdout, and a
dropped connection reopened for commands that are safe to repeat.

fabric resolves what ``ssh`` would (an ssh_config file's ``Host`` aliases, ``HostName``, ``User``,
``Port``, ``IdentityFile`` and ``ProxyCommand``); the exec channels are paramiko's, underneath it,
because the runner streams tar archives both ways and needs bytes, not text.

Host keys are never accepted silently: an unknown host fails with its SHA256 fingerprint and the
command that trusts it; a changed key fails louder. Logins use keys and the SSH agent. The one
exception is ``runner attach --install-key``: a password the user types at a prompt opens one
connection that installs the public key, and is then dropped (never read from anywhere else,
never logged or stored).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import UserError
from runner.plugins._docker.engine import Result

# paramiko's transport thread logs a failed connection with its traceback; with no handler of
# the user's own, Python's last-resort handler would print it to the terminal. Every failure
# reaches the user once, as a UserError that says what to do.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


@dataclass(frozen=True)
class SSHSettings:
    """Where and how to connect; ``None`` fields come from the ssh_config file or defaults."""

    host: str  # a hostname, an address, or a Host alias of the ssh_config file
    user: str | None = None  # login user (default: ssh_config's User, else the local user)
    port: int | None = None  # default: ssh_config's Port, else 22
    key: str | None = None  # private key file; the agent and ssh_config's IdentityFile too
    ssh_config: str | None = None  # ssh_config file (default: ~/.ssh/config when it exists)
    known_hosts: str | None = None  # default: ssh_config's UserKnownHostsFile, else ~/.ssh/known_hosts
    connect_timeout: float = 15.0  # seconds to wait for the TCP connection and the handshake


@dataclass
class SSHTarget:
    """The keys of a target reached over SSH (mixed into its config dataclass): where the
    host is, how to log in, and how much of a run directory may come back."""

    host: str = ""  # host name, address, or a Host alias of the ssh_config file
    user: str | None = None  # login user (default: the ssh_config's User, else your local user)
    port: int | None = None  # SSH port (default: the ssh_config's Port, else 22)
    key: str | None = None  # private key file (the SSH agent is used too); never a password
    ssh_config: str | None = None  # ssh_config file for aliases/ProxyCommand (default ~/.ssh/config)
    known_hosts: str | None = None  # known_hosts file checked (default: ssh_config's, else ~/.ssh/known_hosts)
    connect_timeout: float = 15.0  # seconds for the SSH connection and handshake
    max_fetch_mb: int = 2048  # outputs larger than this stay on the host (with a message)


def settings_of(c: SSHTarget) -> SSHSettings:
    """The connection settings a target's keys give."""
    return SSHSettings(host=c.host, user=c.user, port=c.port, key=c.key, ssh_config=c.ssh_config,
                       known_hosts=c.known_hosts, connect_timeout=c.connect_timeout)


_SESSIONS: dict[tuple[SSHSettings, str | None], Session] = {}


def session_of(c: SSHTarget, *, trust: str | None = None, trust_hint: str | None = None) -> Session:
    """The process-wide connection to a target's host (prepare, submit and every handle of one
    client share it)."""
    key = (settings_of(c), trust)
    s = _SESSIONS.get(key)
    if s is None:
        s = _SESSIONS[key] = Session(key[0], trust=trust, trust_hint=trust_hint)
    return s


def fingerprint(key: Any) -> str:
    """OpenSSH's fingerprint of a host key: ``SHA256:`` + unpadded base64 of its hash."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class UnknownHostKey(Exception):
    """The server offered a key that the known_hosts file does not have."""

    def __init__(self, name: str, key: Any) -> None:
        super().__init__(name)
        self.name = name  # the known_hosts name: host, or [host]:port
        self.key = key
        self.fingerprint = fingerprint(key)


class KeyRefused(UserError):
    """The server refused every key tried (``runner attach --install-key`` can install one)."""

    def __init__(self, where: str, message: str, *hints: str) -> None:
        super().__init__(message, *hints)
        self.where = where  # user@host:port as resolved


def _proxy_command_class() -> type:
    """paramiko's ProxyCommand, except that the proxy's end (its stdout at EOF: the proxy died
    or its network went away) reads as a closed socket. paramiko's own keeps polling a pipe
    at EOF until its timeout, so the transport never learns the connection is gone and every
    command waits for its full timeout instead of being retried on a new connection."""
    import select

    import paramiko

    class EofProxyCommand(paramiko.ProxyCommand):  # type: ignore[misc]
        def recv(self, size: int) -> bytes:
            out = bytearray()
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            try:
                while len(out) < size:
                    wait = None if deadline is None else deadline - time.monotonic()
                    if wait is not None and wait <= 0:
                        if out:
                            break
                        raise TimeoutError()
                    ready, _, _ = select.select([self.process.stdout], [], [], wait)
                    if not ready:
                        continue
                    chunk = os.read(self.process.stdout.fileno(), size - len(out))
                    if not chunk:  # EOF: the proxy is gone; b"" is how a socket says so
                        break
                    out += chunk
            except TimeoutError:  # the transport's poll: nothing yet (an OSError since 3.10)
                raise
            except OSError as e:
                raise paramiko.ProxyCommandFailure(" ".join(self.cmd), e.strerror) from e
            return bytes(out)

    return EofProxyCommand


class ConnectionLost(Exception):
    """The SSH connection dropped while a command ran (the command's outcome is unknown)."""


def _known_hosts_policy(trust: str | None, known_hosts: Path) -> Any:
    import paramiko  # deferred: paramiko pulls in cryptography (slow to import)

    class Policy(paramiko.MissingHostKeyPolicy):
        """Refuse unknown host keys, except the one whose fingerprint the user vouched for."""

        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            if trust is not None and fingerprint(key) == trust:
                add_known_host(known_hosts, hostname, key)
                client.get_host_keys().add(hostname, key.get_name(), key)
                return
            raise UnknownHostKey(hostname, key)

    return Policy()


def add_known_host(path: Path, name: str, key: Any) -> None:
    """Append ``name``'s key to a known_hosts file (created 0600 with its folder if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{name} {key.get_name()} {key.get_base64()}\n".encode())
    finally:
        os.close(fd)


class Session:
    """One SSH connection to one host, opened on first use and reopened after a drop.

    ``trust`` is a ``SHA256:...`` fingerprint the user vouched for (``runner attach
    --trust-host-key``): that key, and only that key, is added to the known_hosts file.
    ``trust_hint`` is the command a refusal of an unknown key tells the user to run.
    """

    def __init__(self, settings: SSHSettings, *, trust: str | None = None,
                 trust_hint: str | None = None) -> None:
        self.settings = settings
        self.trust = trust
        self.trust_hint = trust_hint
        self._conn: Any = None
        self._sh: _Shell | None = None
        self._sftp: Any = None
        self._lock = threading.RLock()
        self.reconnects = 0  # how many times a dropped connection was reopened
        self._opened = False

    # -- description ---------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """``user@host:port`` as resolved (the alias's real address after connecting)."""
        c = self._conn
        if c is None:
            s = self.settings
            user = f"{s.user}@" if s.user else ""
            return f"{user}{s.host}" + (f":{s.port}" if s.port else "")
        alias = f" ({self.settings.host})" if c.host != self.settings.host else ""
        return f"{c.user}@{c.host}:{c.port}{alias}"

    def known_hosts_path(self, conn: Any = None) -> Path:
        """The known_hosts file used: the target's, else ssh_config's, else ~/.ssh/known_hosts."""
        if self.settings.known_hosts:
            return Path(self.settings.known_hosts).expanduser()
        conf = conn.ssh_config if conn is not None else {}
        files = conf.get("userknownhostsfile")
        if files:
            first = files.split()[0] if isinstance(files, str) else files[0]
            return Path(first).expanduser()
        return Path("~/.ssh/known_hosts").expanduser()

    # -- connecting ----------------------------------------------------------------------------
    def _new_connection(self, password: str | None = None) -> Any:
        # deferred: fabric imports paramiko and invoke; `runner --help` must not pay for them
        from fabric import Config, Connection

        s = self.settings
        if s.ssh_config:
            path = Path(s.ssh_config).expanduser()
            if not path.is_file():
                raise UserError(f"ssh_config file {path} does not exist.",
                                "fix target.ssh_config (or --ssh-config), or leave it out to use "
                                "~/.ssh/config.")
            config = Config(runtime_ssh_path=str(path))
        else:
            config = Config()
        connect_kwargs: dict[str, Any] = {}
        if password is not None:  # a one-time login to install a key: the password only
            connect_kwargs = {"password": password, "look_for_keys": False, "allow_agent": False}
        elif s.key:
            key = Path(s.key).expanduser()
            if not key.is_file():
                raise UserError(f"SSH key {key} does not exist.",
                                "pass the private key file (not the .pub) with --key / target.key.")
            connect_kwargs["key_filename"] = [str(key)]
        class _Connection(Connection):  # type: ignore[misc]
            def open_gateway(self) -> Any:
                sock = super().open_gateway()
                proxy = _proxy_command_class()
                if isinstance(sock, proxy.__mro__[1]):  # a ProxyCommand: see the EOF above
                    sock.__class__ = proxy
                return sock

        return _Connection(s.host, user=s.user or None, port=s.port or None, config=config,
                           connect_timeout=int(s.connect_timeout), connect_kwargs=connect_kwargs)

    def connect(self, *, password: str | None = None) -> Any:
        """Open the connection (if not open); turn every way of failing into a clear UserError.

        ``password``: log in with it instead of keys (only to install a key; such a connection
        is not reopened after a drop, since the password is not kept).
        """
        import paramiko

        with self._lock:
            if self._conn is not None and self._conn.is_connected \
                    and self._conn.transport is not None and self._conn.transport.is_active():
                return self._conn
            self._close_quietly()
            conn = self._new_connection(password)
            known = self.known_hosts_path(conn)
            if known.is_file():
                conn.client.load_host_keys(str(known))
            conn.client.set_missing_host_key_policy(_known_hosts_policy(self.trust, known))
            where = f"{conn.user}@{conn.host}:{conn.port}" + (
                f" ({self.settings.host})" if conn.host != self.settings.host else "")
            try:
                conn.open()
            except UnknownHostKey as e:
                conn.close()
                hint = self.trust_hint or "runner attach NAME --host HOST"
                given = (f"the fingerprint given ({self.trust}) does not match the host's."
                         if self.trust else "")
                raise UserError(
                    f"cannot reach {where}: host key not in {known}.",
                    *([given] if given else []),
                    f"the host offered a {e.key.get_name()} key with fingerprint {e.fingerprint}",
                    "check it against the host's own (on the host: `ssh-keygen -lf "
                    "/etc/ssh/ssh_host_ed25519_key.pub`), then trust it:",
                    f"  {hint} --trust-host-key {e.fingerprint}",
                ) from None
            except paramiko.BadHostKeyException as e:
                conn.close()
                raise UserError(
                    f"cannot reach {where}: its host key CHANGED (now {fingerprint(e.key)}; "
                    f"{known} has {fingerprint(e.expected_key)}).",
                    "someone may be intercepting the connection, or the host was reinstalled.",
                    f"if you know it was reinstalled: ssh-keygen -R {e.hostname} -f {known}, "
                    "then attach again with --trust-host-key.",
                ) from None
            except paramiko.PasswordRequiredException:
                conn.close()
                raise UserError(f"cannot log in to {where}: the key is protected by a passphrase.",
                                "load it into the SSH agent (`ssh-add KEY`); the runner never asks "
                                "for or stores passphrases or passwords.") from None
            except paramiko.AuthenticationException as e:
                conn.close()
                if password is not None:
                    raise UserError(
                        f"cannot log in to {where}: the password was not accepted ({e}).",
                        "nothing was installed there and nothing was written here; run the "
                        "command again to retry.") from None
                keys = conn.connect_kwargs.get("key_filename") or []
                tried = ", ".join(str(k) for k in keys) or "the SSH agent's keys"
                hint = self.trust_hint or "runner attach NAME --host HOST --key KEY"
                raise KeyRefused(
                    where,
                    f"cannot log in to {where}: the server refused the key(s) tried ({tried}): {e}",
                    "install the public key on the host: `--install-key` asks for the account's "
                    f"password once, only to do that (`{hint} --install-key`), or use "
                    f"`ssh-copy-id -i KEY.pub -p {conn.port} {conn.user}@{conn.host}`;",
                    "or give the right key with --key / target.key. Passwords are never stored.",
                ) from None
            except (paramiko.SSHException, OSError, EOFError) as e:
                conn.close()
                proxy = conn.ssh_config.get("proxycommand")
                via = f" through ProxyCommand `{proxy}`" if proxy else ""
                cause = str(e) or type(e).__name__
                if isinstance(e, socket.timeout | TimeoutError):
                    cause = f"no answer within {self.settings.connect_timeout:.0f} s"
                raise UserError(
                    f"cannot reach {where}{via}: {cause}.",
                    "check the host name, port and that sshd runs there (`ssh -v` shows the same "
                    "path); an alias must be defined in the ssh_config file the target names.",
                ) from None
            if self._opened:
                self.reconnects += 1
            self._opened = True
            self._conn = conn
            return conn

    def _close_quietly(self) -> None:
        if self._sh is not None:
            self._sh.close()
            self._sh = None
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:
                pass
            self._sftp = None
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close_quietly()

    def drop(self) -> None:
        """Forget the connection (after a failure) so the next command reconnects."""
        with self._lock:
            self._close_quietly()

    def transport(self) -> Any:
        return self.connect().transport

    # -- commands ------------------------------------------------------------------------------
    # Every command goes through one long-lived `sh` on the host: a login shell's rc files (a
    # conda or pyenv init) run once per connection, not once per command. Bytes (tar archives,
    # logs, status files) go through SFTP, which starts no shell at all.
    def _shell(self) -> _Shell:
        with self._lock:
            conn = self.connect()
            if self._sh is None or self._sh.closed:
                self._sh = _Shell(conn.transport, self.settings.connect_timeout, self.label)
            return self._sh

    def sftp(self) -> Any:
        """The connection's SFTP client (opened once)."""
        import paramiko

        with self._lock:
            conn = self.connect()
            if self._sftp is None:
                try:
                    self._sftp = conn.client.open_sftp()
                except (paramiko.SSHException, OSError, EOFError) as e:
                    raise UserError(f"{self.label}: the SFTP subsystem is not available ({e}).",
                                    "enable it in the host's sshd_config (`Subsystem sftp "
                                    "internal-sftp`); the runner moves files with it.") from None
            return self._sftp

    def run(self, command: str, *, timeout: float | None = None, retry: bool = True,
            sink: Callable[[bytes], None] | None = None) -> Result:
        """Run a shell command on the host (stdin is /dev/null) and capture it.

        ``retry``: the command is safe to repeat, so a dropped connection is reopened and the
        command run again (once). ``sink`` receives stdout as it arrives instead of capturing it.
        """
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            try:
                with self._lock:  # one shell per connection: one command at a time
                    return self._shell().run(command, timeout=timeout, sink=sink)
            except ConnectionLost:
                self.drop()
                if attempt + 1 == attempts:
                    raise
        raise AssertionError("unreachable")

    def _file_op(self, op: Callable[[Any], Any], retry: bool = True) -> Any:
        import paramiko

        for attempt in range(2 if retry else 1):
            try:
                with self._lock:
                    return op(self.sftp())
            except (FileNotFoundError, PermissionError):
                raise
            except OSError as e:
                if e.errno is not None:  # a real file error reported by the server
                    raise
                self.drop()
                if attempt or not retry:
                    raise ConnectionLost(str(e)) from e
            except (paramiko.SSHException, EOFError) as e:
                self.drop()
                if attempt or not retry:
                    raise ConnectionLost(str(e) or type(e).__name__) from e
        raise AssertionError("unreachable")

    def read_file(self, path: str, offset: int = 0) -> bytes | None:
        """The bytes of a remote file past ``offset``; None when it does not exist."""
        def op(sftp: Any) -> bytes:
            with sftp.open(path, "rb") as f:
                f.seek(offset)
                size = f.stat().st_size
                if size <= offset:
                    return b""
                f.prefetch(size - offset)
                return bytes(f.read(size - offset))
        try:
            return self._file_op(op)  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write a remote file (not atomic: callers write to a temporary name and rename)."""
        def op(sftp: Any) -> None:
            with sftp.open(path, "wb") as f:
                f.set_pipelined(True)
                for i in range(0, len(data), 1 << 18):
                    f.write(data[i:i + (1 << 18)])
            sftp.chmod(path, mode)
        self._file_op(op)

    def get_file(self, path: str, sink: Callable[[bytes], None]) -> None:
        """Stream a remote file into ``sink``."""
        def op(sftp: Any) -> None:
            with sftp.open(path, "rb") as f:
                size = f.stat().st_size
                f.prefetch(size)
                done = 0
                while done < size:
                    chunk = f.read(min(1 << 20, size - done))
                    if not chunk:
                        break
                    done += len(chunk)
                    sink(chunk)
        self._file_op(op, retry=False)


class _Shell:
    """A long-lived ``sh`` on an exec channel; commands are framed by a random token."""

    def __init__(self, transport: Any, timeout: float, label: str) -> None:
        import paramiko

        self.label = label
        self.closed = False
        self._err = bytearray()
        self._cond = threading.Condition()
        try:
            self.chan = transport.open_session(timeout=timeout)
            # the login shell runs its rc files once, then hands over to a plain sh
            self.chan.exec_command("exec sh")
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise ConnectionLost(str(e) or type(e).__name__) from e
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self._out = bytearray()
        r = self.run("true", timeout=max(timeout, 60))  # whatever the rc files printed is skipped
        if r.returncode != 0:
            raise ConnectionLost(f"the shell on {label} did not start: {r.stderr.strip()}")

    def _read_stderr(self) -> None:
        try:
            while True:
                chunk = self.chan.recv_stderr(65536)
                if not chunk:
                    break
                with self._cond:
                    self._err.extend(chunk)
                    self._cond.notify_all()
        except Exception:
            pass
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def run(self, command: str, *, timeout: float | None,
            sink: Callable[[bytes], None] | None = None) -> Result:
        import paramiko

        token = secrets.token_hex(12).encode()
        script = (f"( {command}\n) </dev/null; printf '\\n%s %d\\n' {token.decode()} $?; "
                  f"printf '%s\\n' {token.decode()} >&2\n")
        deadline = None if timeout is None else time.monotonic() + timeout
        marker = b"\n" + token + b" "
        out = bytearray()
        buf = self._out
        start = 0  # bytes before this were searched already: a large answer is scanned once
        try:
            self.chan.sendall(script.encode())
            while True:
                i = buf.find(marker, start)
                if i >= 0:
                    j = buf.find(b"\n", i + len(marker))
                    if j >= 0:
                        code = int(buf[i + len(marker):j])
                        body, rest = bytes(buf[:i]), bytes(buf[j + 1:])
                        buf[:] = rest
                        break
                    start = i
                else:
                    start = max(0, len(buf) - len(marker))
                # pass on what cannot be part of the marker
                keep = len(marker) + 8
                if sink is not None and len(buf) > keep and i < 0:
                    sink(bytes(buf[:-keep]))
                    del buf[:-keep]
                    start = 0
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    self.chan.settimeout(left)
                else:
                    self.chan.settimeout(None)
                chunk = self.chan.recv(1 << 16)
                if not chunk:
                    raise ConnectionLost(f"the connection to {self.label} dropped")
                buf.extend(chunk)
        except TimeoutError:
            self.close()
            return Result(124, "", f"no answer from {self.label} within {timeout} s: "
                                   f"{command[:80]}")
        except (paramiko.SSHException, OSError, EOFError) as e:
            self.close()
            raise ConnectionLost(str(e) or type(e).__name__) from e
        except ConnectionLost:
            self.close()
            raise
        if sink is not None:
            if body:
                sink(body)
        else:
            out.extend(body)
        # stderr: everything up to this command's token
        err_marker = token + b"\n"
        with self._cond:
            end = time.monotonic() + 10
            while err_marker not in self._err and not self.closed and time.monotonic() < end:
                self._cond.wait(0.5)
            k = self._err.find(err_marker)
            if k >= 0:
                err = bytes(self._err[:k])
                del self._err[:k + len(err_marker)]
            else:
                err = bytes(self._err)
                self._err.clear()
        return Result(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    def close(self) -> None:
        self.closed = True
        try:
            self.chan.close()
        except Exception:
            pass
