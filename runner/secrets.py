"""Keeping secrets out of command lines, the ledger, logs and printed lines.

A secret travels by name, never by value: ``${oc.env:VAR}`` names the environment variable
that holds it, and the worker resolves the reference from its own environment on the target.

- A config key that looks like a secret (``*password*``, ``*token*``, ``*secret*``, ...) must
  take its value from the environment: an override (at any depth of a dict or list value)
  or a config file that sets one literally is refused (:func:`check_overrides`,
  :func:`check_config`).
- Any ``${oc.env:VAR}``, whatever its key, travels as a reference (:func:`keep_references`),
  and so does any resolved value that equals the value of a referenced variable (a copy made
  by interpolation): :func:`to_references` replaces such values with the reference again.
- Everything written for people (``config.yaml``, ``meta.json``, the log, ``worker.json``,
  status messages, printed lines) is masked by value (:func:`mask_text`, :func:`mask_values`,
  :class:`StreamMasker`, :func:`masked_stdout`), as are strings shaped like well-known
  credentials.

Values shorter than :data:`MIN_LENGTH` characters are neither masked nor replaced: masking
every ``1`` or ``ab`` in a log would hide more than it protects.

Only the standard library is needed at import time (the worker imports this module on targets
without Hydra or OmegaConf); the functions that parse overrides or wrap OmegaConf's resolver
import them when called.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TextIO

from runner.errors import UserError

MASK = "****"
#: the shortest value that is masked or replaced by its reference
MIN_LENGTH = 4
_SECRET_KEY = re.compile(r"(password|passwd|passphrase|token|secret|api_?key|credential|private_?key)", re.I)
#: key names that mention tokens but count them (``max_tokens``) or split text (``tokenizer``)
_NOT_SECRET_KEY = re.compile(
    r"tokeni[sz]|(^|_)(max|min|num|n|total|count)_?tokens?($|_)|tokens?_(per|count|len|limit|num)",
    re.I)
#: ``${oc.env:VAR}`` or ``${oc.env:VAR,default}``: how a secret travels (by name, never by value)
ENV_REF = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)(?:,([^}]*))?\}")
#: Shapes of well-known credentials, masked wherever they appear.
_SECRET_SHAPES = (r"(gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|sk-[A-Za-z0-9_-]{20,}"
                  r"|AKIA[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9-]{10,}|hf_[A-Za-z0-9]{20,}"
                  r"|-----BEGIN [A-Z ]*PRIVATE KEY-----)")
_SECRET_VALUE = re.compile(_SECRET_SHAPES)
_SECRET_VALUE_BYTES = re.compile(_SECRET_SHAPES.encode())
#: variables that describe the machine a process runs on, never a secret: a reference to one
#: resolves on the client, as written, and is neither masked nor sent to the target (where it
#: would replace the target's own HOME or PATH)
SYSTEM_VARS = frozenset({"HOME", "USER", "LOGNAME", "PATH", "PWD", "SHELL", "TMPDIR", "TEMP",
                         "TMP", "LANG", "TERM", "HOSTNAME", "XDG_CACHE_HOME", "XDG_DATA_HOME",
                         "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR"})
#: values that say "no secret here" in a config file: null, empty, Hydra's mandatory marker
_NO_VALUE = (None, "", "???")


def is_secret_key(key: str) -> bool:
    """True when the last part of a dotted key looks like it holds a secret (``api_token``,
    ``password``), not when it only counts or splits tokens (``max_tokens``, ``tokenizer``)."""
    return bool(_SECRET_KEY.search(_NOT_SECRET_KEY.sub("", key.rsplit(".", 1)[-1])))


def env_ref(value: Any) -> str | None:
    """The variable name if ``value`` is exactly ``${oc.env:VAR}`` (or with a default)."""
    if isinstance(value, str):
        m = ENV_REF.fullmatch(value.strip())
        if m:
            return m.group(1)
    return None


def env_refs(obj: Any) -> set[str]:
    """Names of every environment variable referenced anywhere in plain config data (or in a
    string), less :data:`SYSTEM_VARS`: what a run must receive and what its output masks."""
    if isinstance(obj, str):
        return {m.group(1) for m in ENV_REF.finditer(obj)} - SYSTEM_VARS
    out: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            out |= env_refs(k) | env_refs(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            out |= env_refs(v)
    return out


def env_values(names: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{name: value}`` of the variables among ``names`` that ``environ`` (default: this
    process's environment) sets."""
    env = os.environ if environ is None else environ
    return {n: env[n] for n in names if n in env}


def resolve_refs(obj: Any, environ: Mapping[str, str] | None = None) -> Any:
    """A copy of plain data with every ``${oc.env:VAR}`` replaced by the variable's value in
    ``environ`` (default: this process's environment), or its default, or ``""``."""
    env = os.environ if environ is None else environ
    if isinstance(obj, str):
        return ENV_REF.sub(lambda m: env.get(m.group(1), m.group(2) or ""), obj)
    if isinstance(obj, dict):
        return {resolve_refs(k, env): resolve_refs(v, env) for k, v in obj.items()}
    if isinstance(obj, list):
        return [resolve_refs(v, env) for v in obj]
    return obj


def _by_value(values: Iterable[str]) -> list[str]:
    """The values worth looking for, longest first (a value inside a longer one loses)."""
    out: set[str] = set()
    for v in values:
        if not v:
            continue
        out.add(v)
        out |= {line for line in v.splitlines() if line.strip()}  # a key file, line by line
    return sorted((v for v in out if len(v) >= MIN_LENGTH), key=len, reverse=True)


def _map_strings(obj: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, dict):
        return {(fn(k) if isinstance(k, str) else k): _map_strings(v, fn) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_map_strings(v, fn) for v in obj]
    return obj


def to_references(obj: Any, values: Mapping[str, str]) -> Any:
    """A copy of plain data in which every occurrence of a variable's value (``values`` maps
    names to values) is replaced by ``${oc.env:NAME}``: :func:`resolve_refs` undoes it."""
    by_name = {v: n for n, v in values.items() if v and len(v) >= MIN_LENGTH}
    if not by_name:
        return obj
    pattern = re.compile("|".join(re.escape(v) for v in sorted(by_name, key=len, reverse=True)))
    return _map_strings(obj, lambda s: pattern.sub(lambda m: f"${{oc.env:{by_name[m[0]]}}}", s))


def keep_references(raw: Any, resolved: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Plain config values as they travel: ``resolved``, except that a value written with
    ``${oc.env:VAR}`` (``raw``, the same config unresolved) keeps its reference, and any
    resolved value that contains a referenced variable's value (a copy by interpolation)
    gets the reference back (:func:`to_references`)."""
    env = os.environ if environ is None else environ
    values = env_values(env_refs(raw), env)

    def walk(r: Any, d: Any) -> Any:
        if isinstance(d, dict):
            rd = r if isinstance(r, dict) else {}
            return {k: walk(rd.get(k), v) for k, v in d.items()}
        if isinstance(d, list):
            rl = r if isinstance(r, list) and len(r) == len(d) else [None] * len(d)
            return [walk(a, b) for a, b in zip(rl, d, strict=True)]
        # the reference as written, when the worker resolving it gets what OmegaConf got
        if (isinstance(r, str) and ENV_REF.search(r) and _no_system_ref(r)
                and resolve_refs(r, env) == d):
            return r
        return to_references(d, values)

    return walk(raw, resolved)


def _no_system_ref(text: str) -> bool:
    return not any(m.group(1) in SYSTEM_VARS for m in ENV_REF.finditer(text))


# -- refusing literal secrets ---------------------------------------------------------------

def _suggest_var(key: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", key.upper()).strip("_")


def _literal_secrets(value: Any, key: str, *, interpolations: bool = False) -> Iterator[str]:
    """Dotted keys under ``key`` whose secret-looking name holds a literal value (with
    ``interpolations``, a ``${...}`` other than ``oc.env`` counts as no literal)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _literal_secrets(v, f"{key}.{k}" if key else str(k),
                                        interpolations=interpolations)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _literal_secrets(v, key, interpolations=interpolations)
    elif (is_secret_key(key) and value not in _NO_VALUE and env_ref(value) is None
          and not (interpolations and isinstance(value, str) and "${" in value)):
        yield key


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def _parsed(override: str) -> tuple[str, list[Any]] | None:
    """The key and the values (each choice of a sweep) of one override; None when Hydra
    cannot parse it (Hydra then says so itself)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        ov = OverridesParser.create().parse_override(override)
    except HydraException:
        return None
    key = str(ov.key_or_group)
    if ov.is_delete():
        return key, []
    if ov.is_discrete_sweep():
        return key, list(ov.sweep_iterator())
    if ov.is_sweep_override():  # a range or an interval: numbers
        return key, [str(ov.value())]
    return key, [ov.value()]


def check_overrides(overrides: Iterable[str]) -> None:
    """Refuse overrides that put a secret on the command line: a literal value under a
    secret-looking key, at any depth of a dict or list value (each choice of a sweep too), or
    a value shaped like a well-known credential."""
    for ov in overrides:
        key, sep, value = ov.partition("=")
        key = key.lstrip("+~")
        if not sep or ov.startswith("-"):
            continue
        parsed = _parsed(ov)
        if parsed is None:  # unparseable: the top key decides
            found = [key] if is_secret_key(key) and env_ref(value) is None else []
            shaped = bool(_SECRET_VALUE.search(value))
        else:
            key, choices = parsed
            found = [k for c in choices for k in _literal_secrets(c, key)]
            shaped = any(_SECRET_VALUE.search(s) for c in choices for s in _strings(c))
        if found:
            where, var = found[0], _suggest_var(found[0])
            if where == key:
                raise UserError(
                    f"override '{key}=...' looks like a secret; secrets on the command line end "
                    "up in shell history, process lists and the run ledger.",
                    f"put it in an environment variable and reference it: "
                    f"{key}='${{oc.env:{var}}}'")
            raise UserError(
                f"override '{key}=...' sets '{where}', which looks like a secret; secrets on the "
                "command line end up in shell history, process lists and the run ledger.",
                f"put it in an environment variable and reference it in the value: "
                f"{where.rsplit('.', 1)[-1]}: ${{oc.env:{var}}}")
        if shaped or _SECRET_VALUE.search(value):
            raise UserError(
                f"override '{key}=...' has a value that looks like a credential.",
                f"reference an environment variable instead: {key}='${{oc.env:VAR}}'",
            )


def check_config(raw: Mapping[Any, Any], where: Callable[[str], str]) -> None:
    """Refuse a composed config (unresolved, plain data) with a literal value under a
    secret-looking key: it came from a config file, which ends up in the code snapshot, the
    ledger and version control. ``where(key)`` names the file that set ``key``."""
    for key in _literal_secrets(dict(raw), "", interpolations=True):
        raise UserError(
            f"{where(key)}: '{key}' looks like a secret but holds a literal value; config "
            "files end up in version control, the code snapshot and the run ledger.",
            f"put it in an environment variable and reference it there: "
            f"{key.rsplit('.', 1)[-1]}: ${{oc.env:{_suggest_var(key)}}}",
            "or set it to null and pass it at submit: "
            f"+{key}='${{oc.env:{_suggest_var(key)}}}'",
        )


# -- masking by value -------------------------------------------------------------------------

def redact(obj: Any, _key: str = "") -> Any:
    """A copy of plain config data with secret-looking keys and values masked.

    ``${oc.env:VAR}`` references are kept: they name a variable, not its value.
    """
    if isinstance(obj, dict):
        return {k: redact(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v, _key) for v in obj]
    if isinstance(obj, str):
        if env_ref(obj):
            return obj
        if _key and is_secret_key(_key) and obj:
            return MASK
        return _SECRET_VALUE.sub(MASK, obj)
    if _key and is_secret_key(_key) and obj is not None:
        return MASK
    return obj


def secret_refs(obj: Any, _key: str = "") -> set[str]:
    """Names of environment variables referenced under secret-looking keys."""
    out: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            out |= secret_refs(v, str(k))
    elif isinstance(obj, list):
        for v in obj:
            out |= secret_refs(v, _key)
    else:
        var = env_ref(obj)
        if var and is_secret_key(_key):
            out.add(var)
    return out


def mask_text(text: str, values: Iterable[str] = ()) -> str:
    """``text`` with the given secret values and credential-shaped strings masked."""
    wanted = _by_value(values)
    if wanted:
        text = re.sub("|".join(re.escape(v) for v in wanted), MASK, text)
    return _SECRET_VALUE.sub(MASK, text)


def mask_values(obj: Any, values: Iterable[str] = ()) -> Any:
    """A copy of plain data (dicts, lists, scalars) with :func:`mask_text` applied to every
    string, keys included."""
    wanted = _by_value(values)
    return _map_strings(obj, lambda s: mask_text(s, wanted))


class StreamMasker:
    """Masks secret values in a byte stream that arrives in arbitrary chunks.

    Complete lines go out masked at once. A partial line goes out when the stream has been
    quiet for a moment (:meth:`partial`), except its tail when that tail may be the start of
    a secret value (at most the longest value less one byte): it waits for the next chunk, so
    a value written in two pieces is still masked whole.
    """

    def __init__(self, values: Iterable[str]) -> None:
        self._values = [v.encode() for v in _by_value(values)]
        self._pattern = re.compile(b"|".join(re.escape(v) for v in self._values)) if self._values else None
        self._buf = b""

    def _mask(self, data: bytes) -> bytes:
        if self._pattern is not None:
            data = self._pattern.sub(MASK.encode(), data)
        return _SECRET_VALUE_BYTES.sub(MASK.encode(), data)

    def _held(self, data: bytes) -> int:
        """How many trailing bytes of ``data`` may begin a secret value."""
        best = 0
        for v in self._values:
            for n in range(min(len(v) - 1, len(data)), best, -1):
                if data.endswith(v[:n]):
                    best = n
                    break
        return best

    def feed(self, chunk: bytes) -> bytes:
        """Take ``chunk``; return what may be written now (the complete lines, masked)."""
        self._buf += chunk
        cut = max(self._buf.rfind(b"\n"), self._buf.rfind(b"\r"))
        if cut < 0:
            return b""
        out, self._buf = self._buf[: cut + 1], self._buf[cut + 1 :]
        return self._mask(out)

    def partial(self) -> bytes:
        """The stream is quiet: return the partial line, masked, less a possible secret's start."""
        if not self._buf:
            return b""
        if self._pattern is not None:
            self._buf = self._pattern.sub(MASK.encode(), self._buf)
        keep = self._held(self._buf)
        out, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep :]
        return self._mask(out)

    def close(self) -> bytes:
        """The stream ended: return everything left, masked."""
        out, self._buf = self._buf, b""
        return self._mask(out)


class _MaskingWriter:
    """A text stream that masks the values in ``seen`` in what it writes to ``inner``."""

    def __init__(self, inner: TextIO, seen: set[str]) -> None:
        self._inner = inner
        self._seen = seen

    def write(self, text: str) -> int:
        self._inner.write(mask_text(text, self._seen))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, encoding, fileno, ...
        return getattr(self._inner, name)


@contextlib.contextmanager
def masked_stdout() -> Iterator[None]:
    """While it lasts, every value that OmegaConf's ``oc.env`` resolver returns is masked in
    what is written to ``sys.stdout`` (Hydra's ``--cfg job --resolve`` prints the resolved
    config there), and so are credential-shaped strings."""
    from omegaconf import OmegaConf
    from omegaconf.resolvers import oc

    seen: set[str] = set()

    def env(*args: Any) -> Any:
        value = oc.env(*args)
        if isinstance(value, str) and args and args[0] in os.environ:
            seen.add(value)
        return value

    OmegaConf.register_new_resolver("oc.env", env, replace=True)
    saved = sys.stdout
    sys.stdout = _MaskingWriter(saved, seen)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout = saved
        OmegaConf.register_new_resolver("oc.env", oc.env, replace=True)
