"""Keeping secrets out of command lines, the ledger and logs.

A config key that looks like a secret (``*password*``, ``*token*``, ``*secret*``, ...) must
take its value from the environment (``${oc.env:VAR}``): an override that sets one literally
is refused. Recorded configs show such keys redacted, and text that looks like a credential
(or equals the value of a referenced secret variable) is masked in the run's log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from runner.errors import UserError

MASK = "****"
_SECRET_KEY = re.compile(r"(password|passwd|passphrase|token|secret|api_?key|credential|private_?key)", re.I)
#: ``${oc.env:VAR}`` or ``${oc.env:VAR,default}``: how a secret travels (by name, never by value)
ENV_REF = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)(?:,([^}]*))?\}")
#: Shapes of well-known credentials, masked wherever they appear.
_SECRET_VALUE = re.compile(
    r"(gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|sk-[A-Za-z0-9_-]{20,}"
    r"|AKIA[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9-]{10,}|hf_[A-Za-z0-9]{20,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----)"
)


def is_secret_key(key: str) -> bool:
    """True when the last part of a dotted key looks like it holds a secret."""
    return bool(_SECRET_KEY.search(key.rsplit(".", 1)[-1]))


def env_ref(value: Any) -> str | None:
    """The variable name if ``value`` is exactly ``${oc.env:VAR}`` (or with a default)."""
    if isinstance(value, str):
        m = ENV_REF.fullmatch(value.strip())
        if m:
            return m.group(1)
    return None


def check_overrides(overrides: Iterable[str]) -> None:
    """Refuse overrides that put a secret on the command line."""
    for ov in overrides:
        key, sep, value = ov.partition("=")
        key = key.lstrip("+~")
        if sep and is_secret_key(key) and env_ref(value) is None:
            var = re.sub(r"[^A-Z0-9]+", "_", key.upper()).strip("_")
            raise UserError(
                f"override '{key}=...' looks like a secret; secrets on the command line end up "
                "in shell history, process lists and the run ledger.",
                f"put it in an environment variable and reference it: {key}='${{oc.env:{var}}}'",
            )
        if sep and _SECRET_VALUE.search(value):
            raise UserError(
                f"override '{key}=...' has a value that looks like a credential.",
                f"reference an environment variable instead: {key}='${{oc.env:VAR}}'",
            )


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
    for v in values:
        if v and len(v) >= 4:
            text = text.replace(v, MASK)
    return _SECRET_VALUE.sub(MASK, text)
