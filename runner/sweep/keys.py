"""What makes two jobs of sweeps the same job: a key over the resolved config, the code and
the env; and which override keys a sweep varies."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from runner.views import override_values


def _digest(value: Any) -> str:
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def job_key(values: dict[str, Any], manifest_digest: str, env_key: str) -> str:
    """The key of a job: its resolved config, the code it runs, the env it runs in."""
    return _digest({"config": values, "code": manifest_digest, "env": env_key})


def swept_keys(overrides: Sequence[Sequence[str]]) -> list[str]:
    """The override keys whose values differ between the jobs (the swept keys), in order."""
    per_job = [override_values(o) for o in overrides]
    keys = list(dict.fromkeys(k for o in per_job for k in o))
    return [k for k in keys if len({o.get(k) for o in per_job}) > 1]
