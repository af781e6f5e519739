"""The plugin manager: built-ins and entry-point plugins, through the same door."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from runner import hookspecs
from runner.backend import CAPABILITIES, Backend, Capability, Command
from runner.errors import UserError
from runner.model import Model

#: Plugins that ship with the runner. Each is an ordinary plugin module.
BUILTIN_PLUGINS = (
    "runner.plugins.local",
    "runner.plugins.local_docker",
    "runner.plugins.remote_docker",
    "runner.plugins.ray",
    "runner.plugins.slurm",
    "runner.plugins.ledger",
    "runner.plugins.mlflow_mirror",
    "runner.plugins.plots",
    "runner.plugins.tensorboard",
    "runner.plugins.notify",
    "runner.models.script",
    "runner.models.sentiment_cnn",
    "runner.models.hydra_job",
)
ENTRY_POINT_GROUP = "runner.plugins"


@dataclass
class Registry:
    """What the plugins registered, by name, with the plugin that registered each."""

    backends: dict[str, type[Backend]] = field(default_factory=dict)
    models: dict[str, type[Model]] = field(default_factory=dict)
    commands: dict[str, Command] = field(default_factory=dict)
    origin: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> plugin

    def backend(self, name: str, *, where: str = "") -> type[Backend]:
        """The backend class called ``name``, or a clear error listing the registered ones."""
        try:
            return self.backends[name]
        except KeyError:
            raise UserError(
                f"{where}backend '{name}', which is not registered." if where
                else f"backend '{name}' is not registered.",
                f"available: {', '.join(sorted(self.backends))}",
                "a plugin package may be missing: `runner plugins` lists what is loaded.",
            ) from None

    def model(self, name: str) -> type[Model]:
        """The model class called ``name``, or a clear error listing the registered ones."""
        try:
            return self.models[name]
        except KeyError:
            raise UserError(
                f"model '{name}' is not registered.",
                f"available: {', '.join(sorted(self.models))}",
                "a plugin package may be missing: `runner plugins` lists what is loaded.",
            ) from None


def make_plugin_manager(
    *, entry_points: bool = True, extra: tuple[Any, ...] = ()
) -> pluggy.PluginManager:
    """A plugin manager with the hookspecs, the built-ins, the entry-point plugins and
    ``extra`` (plugin objects a caller adds, e.g. a test), checked for misspelt hooks."""
    pm = pluggy.PluginManager("runner")
    pm.add_hookspecs(hookspecs)
    for name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra:
        pm.register(plugin)
    pm.check_pending()
    return pm


def _check_capabilities(cls: type[Backend], plugin: str) -> None:
    caps: Any = getattr(cls, "capabilities", frozenset())
    unknown = sorted(str(c) for c in caps if c not in CAPABILITIES)
    if unknown or isinstance(caps, str):
        raise TypeError(
            f"plugin {plugin}: backend {cls.__name__} declares unknown capabilities {unknown or caps!r}; "
            f"valid: {', '.join(sorted(CAPABILITIES))} (runner.backend.Capability)")
    cls.capabilities = frozenset(Capability(c) for c in caps)


def collect(pm: pluggy.PluginManager) -> Registry:
    """Call the register hooks of every plugin and return the filled registry."""
    reg = Registry()

    def _registrar(kind: str, table: dict[str, Any], base: type, plugin: str) -> Callable:
        def register(cls: Any) -> None:
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError(f"plugin {plugin} registered {cls!r}, not a {base.__name__} subclass")
            name: str = getattr(cls, "name", "")
            if not name:
                raise TypeError(f"plugin {plugin} registered {cls.__name__} without a `name`")
            if issubclass(cls, Backend):
                _check_capabilities(cls, plugin)
            if name in table:
                raise UserError(
                    f"{kind} '{name}' is registered twice: by "
                    f"{reg.origin[(kind, name)]} and by {plugin}."
                )
            table[name] = cls
            reg.origin[(kind, name)] = plugin

        return register

    # Each implementation gets a register bound to its plugin's name, so the registry can
    # say which plugin registered what (and name both sides of a clash).
    for impl in pm.hook.runner_register_backends.get_hookimpls():
        impl.function(register=_registrar("backend", reg.backends, Backend, impl.plugin_name))
    for impl in pm.hook.runner_register_models.get_hookimpls():
        impl.function(register=_registrar("model", reg.models, Model, impl.plugin_name))
    for impl in pm.hook.runner_register_commands.get_hookimpls():
        impl.function(register=_command_registrar(reg, impl.plugin_name))
    return reg


def _command_registrar(reg: Registry, plugin: str) -> Callable[[Command], None]:
    def register(cmd: Command) -> None:
        if not isinstance(cmd, Command):
            raise TypeError(f"plugin {plugin} registered {cmd!r}, not a runner.backend.Command")
        if cmd.name in reg.commands:
            raise UserError(f"command '{cmd.name}' is registered twice: by "
                            f"{reg.origin[('command', cmd.name)]} and by {plugin}.")
        reg.commands[cmd.name] = cmd
        reg.origin[("command", cmd.name)] = plugin

    return register


def plugin_distributions(pm: pluggy.PluginManager) -> dict[str, str]:
    """Plugin name -> "distribution version" it came from (built-ins come from runner)."""
    out: dict[str, str] = {}
    for plugin, dist in pm.list_plugin_distinfo():
        name = pm.get_name(plugin)
        if name:
            out[name] = f"{dist.project_name} {dist.version}"
    return out
