"""From a composed Hydra config to typed, validated pieces: target, env, model.

Each backend owns the schema of its target files (``Backend.Config``) and each model the
schema of its model files (``Model.Config``); the core owns the env schema. A key a schema
does not know is an error naming the key, the file and the valid keys.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    InterpolationKeyError,
    InterpolationResolutionError,
    OmegaConfBaseException,
)

from runner.backend import Backend, BackendConfig, EnvSpec
from runner.errors import UserError
from runner.model import Model
from runner.registry import Registry

GROUPS = ("target", "env", "model", "data")


@dataclass
class EnvConfig:
    """Schema of ``conf/env/*.yaml``."""

    name: str = "current"  # the env's name (recorded with every run)
    python: str | None = None  # wanted Python version, e.g. "3.11"; null = as found
    requirements: list[str] = field(default_factory=list)  # pip lines; "-r FILE" allowed
    base_image: str | None = None  # Docker base image (Docker targets)
    apt: list[str] = field(default_factory=list)  # Debian packages (Docker targets)
    gpus: str | None = None  # GPUs the env needs: null, "all" or "0,1"
    require_gpu: bool = False  # fail the run at once when no GPU is visible
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific extras


def package_conf_dir() -> Path:
    import runner.conf

    return Path(runner.conf.__path__[0])


def conf_dirs(project_root: Path) -> list[Path]:
    """Where config groups are looked up: the project's ``conf/`` first, then the package's."""
    dirs = []
    user = project_root / "conf"
    pkg = package_conf_dir()
    if user.is_dir() and user.resolve() != pkg.resolve():
        dirs.append(user)
    dirs.append(pkg)
    return dirs


def config_file(group: str, choice: str, dirs: list[Path]) -> str:
    for d in dirs:
        p = d / group / f"{choice}.yaml"
        if p.is_file():
            return str(p)
    return f"{group}/{choice}.yaml"


def options(group: str, dirs: list[Path]) -> list[str]:
    names: set[str] = set()
    for d in dirs:
        if (d / group).is_dir():
            names |= {p.stem for p in (d / group).glob("*.yaml")}
    return sorted(names)


def _from_line(key: str, overrides: Sequence[str]) -> str | None:
    """The command-line override that set ``key`` or a section holding it (``model.args``
    for ``model.args[0]``), if one did."""
    found: tuple[int, str] | None = None
    for o in overrides:
        k, sep, _ = o.partition("=")
        k = k.lstrip("+~")
        if not sep or k in GROUPS:  # a group choice (model=script) sets no value itself
            continue
        if (k == key or key.startswith((f"{k}.", f"{k}["))) and (found is None or len(k) > found[0]):
            found = (len(k), o)
    return found[1] if found else None


def _full_key(prefix: str, key: Any) -> str:
    """``key`` as a full key of the composed config (errors raised while resolving in the
    whole config's context already name it in full)."""
    key = str(key)
    return key if key == prefix or key.startswith((f"{prefix}.", f"{prefix}[")) else f"{prefix}.{key}"


def _validate(schema: type, node: Any, *, what: str, path: str, prefix: str,
              overrides: Sequence[str] = ()) -> Any:
    """Merge ``node`` into the structured ``schema``; return the dataclass instance.

    A section of the composed config is resolved in the context of the whole config first,
    so ``${seed}`` or a swept ``${a}`` in ``model.args`` means what it means to Hydra (a
    section merged on its own would lose every key outside it). An error names the
    command-line override when the bad value came from there, else ``path``."""
    try:
        if isinstance(node, DictConfig) and node._get_parent() is not None:
            node = OmegaConf.to_container(node, resolve=True)
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except ConfigKeyError as e:
        valid = [f.name for f in dataclasses.fields(schema)]
        key = _full_key(prefix, e.key)
        line = _from_line(key, overrides)
        raise UserError(
            f"{f'the command line ({line})' if line else path}: key '{key}' is not "
            f"valid for {what}.",
            f"valid keys: {', '.join(valid)}",
        ) from None
    except InterpolationResolutionError as e:
        from runner.compose import unset_env_var

        unset = unset_env_var(e)
        if unset is not None:
            raise unset from None
        key = _full_key(prefix, getattr(e, "full_key", None) or prefix)
        line = _from_line(key, overrides)
        msg = str(e.msg if e.msg else e).splitlines()[0]
        hint = ("a key outside a section is read by its full name from the top of the config "
                "(${seed}, ${data.path}); add a new one on the command line with +NAME=VALUE")
        if isinstance(e, InterpolationKeyError) and e.msg:
            m = re.search(r"Interpolation key '([^']+)' not found", e.msg)
            if m:
                hint = (f"the config has no key '{m.group(1)}': add it on the command line "
                        f"(+{m.group(1)}=VALUE, or +{m.group(1)}=1,2 with -m), or fix the name")
        raise UserError(f"{f'the command line ({line})' if line else path}: key '{key}': {msg}",
                        hint) from None
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raw_key = getattr(e, "full_key", None) or getattr(e, "key", None)
        bad = _full_key(prefix, raw_key) if raw_key else None
        where = f"key '{bad}': " if bad else ""
        line = _from_line(bad, overrides) if bad else None
        raise UserError(f"{f'the command line ({line})' if line else path}: {where}{msg}") from None


def target_config(
    cfg: DictConfig, choice: str, registry: Registry, dirs: list[Path],
    overrides: Sequence[str] = (),
) -> tuple[type[Backend], BackendConfig]:
    path = config_file("target", choice, dirs)
    node = cfg.get("target")
    if not isinstance(node, DictConfig) or "backend" not in node:
        raise UserError(f"{path}: a target needs a 'backend' key.",
                        f"registered backends: {', '.join(sorted(registry.backends))}")
    if "defaults" in node:  # read from the file itself (doctor, gc), not composed by Hydra
        node = OmegaConf.masked_copy(node, [str(k) for k in node if k != "defaults"])
    name = str(node.backend)
    cls = registry.backend(name, where=f"target '{choice}' ({path}) asks for ")
    conf = _validate(cls.Config, node, what=f"backend '{name}'", path=path, prefix="target",
                     overrides=overrides)
    return cls, conf


def env_spec(cfg: DictConfig, choice: str, dirs: list[Path], project_root: Path,
             overrides: Sequence[str] = ()) -> EnvSpec:
    path = config_file("env", choice, dirs)
    conf: EnvConfig = _validate(EnvConfig, cfg.get("env") or {}, what="an env", path=path,
                                prefix="env", overrides=overrides)
    return EnvSpec(
        name=conf.name or choice,
        python=None if conf.python is None else str(conf.python),
        requirements=tuple(str(r) for r in conf.requirements),
        base_image=conf.base_image,
        apt=tuple(conf.apt),
        gpus=conf.gpus,
        require_gpu=conf.require_gpu,
        root=project_root,
        extra=dict(conf.options),
    )


def model_instance(cfg: DictConfig, choice: str, registry: Registry, dirs: list[Path],
                   overrides: Sequence[str] = ()) -> Model:
    path = config_file("model", choice, dirs)
    node = cfg.get("model")
    if not isinstance(node, DictConfig) or "name" not in node:
        raise UserError(f"{path}: a model config needs a 'name' key (the registered model).",
                        f"registered models: {', '.join(sorted(registry.models))}")
    cls = registry.model(str(node.name))
    conf = _validate(cls.Config, node, what=f"model '{cls.name}'", path=path, prefix="model",
                     overrides=overrides)
    return cls(conf)


#: Where each backend's target keys and their defaults are offered to target files, which
#: then list only what differs: ``defaults: [/runner/target/BACKEND@_here_, _self_]``.
SCHEMA_GROUP = "runner/target"
#: The same for env files: ``defaults: [/runner/env/base@_here_, _self_]``.
ENV_SCHEMA = "runner/env"


def schema_defaults(schema: type) -> dict[str, Any]:
    """Every key of a config dataclass with its default value."""
    return dataclasses.asdict(schema())


def store_plugin_configs(registry: Registry, dirs: list[Path]) -> None:
    """Offer every registered model and backend as a config option built from its schema's
    defaults (``model=NAME``, ``target=NAME``), so a plugin works without shipping YAML.
    A file of the same name in a ``conf/`` folder takes precedence.

    Each backend's defaults are also stored as ``runner/target/BACKEND``, untyped (the
    schema still validates after composition, with its own errors), so that a target file
    can extend them and every key can be overridden on the command line."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group=ENV_SCHEMA, name="base", node=schema_defaults(EnvConfig), provider="runner")
    for name, backend_cls in registry.backends.items():
        cs.store(group=SCHEMA_GROUP, name=name, node=schema_defaults(backend_cls.Config),
                 provider="runner-plugins")
    for name, model_cls in registry.models.items():
        if name in options("model", dirs):
            continue
        cs.store(group="model", name=name, node=model_cls.Config, provider="runner-plugins")
    for name, backend_cls in registry.backends.items():
        if name in options("target", dirs):
            continue
        cs.store(group="target", name=name, node=backend_cls.Config, provider="runner-plugins")
