"""The plugin contract: hook order, misspelt hooks, registration clashes, documented hooks."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pluggy
import pytest
from omegaconf import OmegaConf

from runner import hookimpl, hookspecs
from runner.backend import Backend, RunState
from runner.errors import UserError
from runner.launch import Runs
from runner.registry import collect, make_plugin_manager

HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("runner_"))


class Recorder:
    """A test plugin that records every lifecycle hook it sees, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @hookimpl
    def runner_register_backends(self, register: Any) -> None:
        self.calls.append(("runner_register_backends", None))

    @hookimpl
    def runner_register_models(self, register: Any) -> None:
        self.calls.append(("runner_register_models", None))

    @hookimpl
    def runner_register_commands(self, register: Any) -> None:
        self.calls.append(("runner_register_commands", None))

    @hookimpl
    def runner_before_prepare(self, spec: Any) -> None:
        self.calls.append(("runner_before_prepare", spec.run_id))

    @hookimpl
    def runner_after_submit(self, spec: Any, handle: Any) -> None:
        self.calls.append(("runner_after_submit", handle.locator))

    @hookimpl
    def runner_run_finished(self, run_id: str, status: Any, summary: Any) -> None:
        self.calls.append(("runner_run_finished", (status.state, dict(summary))))


def _submit(project: Path, recorder: Recorder, script: str) -> str:
    (project / "job.py").write_text(script)
    pm = make_plugin_manager(extra=(recorder,))
    runs = Runs(project, pm=pm)
    cfg = OmegaConf.create({
        "target": {"backend": "local"}, "env": {"name": "current"},
        "model": {"name": "script", "path": "job.py"}, "data": {}, "seed": 1,
    })
    import os

    cwd = os.getcwd()
    os.chdir(project)
    try:
        plan = runs.plan(cfg, [], {"target": "local", "env": "current", "model": "script"})
    finally:
        os.chdir(cwd)
    rec, spec = runs.record(plan)
    handle = runs.launch(plan, spec)
    runs.finish(rec.id, handle.wait(30))
    runs.finish(rec.id, handle.status())  # a second observer must not fire the hook again
    return rec.id


def test_lifecycle_hooks_fire_once_each_in_order(project: Path) -> None:
    rec = Recorder()
    run_id = _submit(project, rec, "import runner\nrunner.log_metric('acc', 0.5)\n")
    assert [c[0] for c in rec.calls] == [
        "runner_register_backends", "runner_register_models", "runner_register_commands",
        "runner_before_prepare", "runner_after_submit", "runner_run_finished"]
    life = rec.calls[3:]
    assert life[0][1] == run_id
    assert "pgid" in life[1][1]
    assert life[2][1] == (RunState.SUCCEEDED, {"acc": 0.5})


def test_a_failing_before_prepare_hook_aborts_the_run_before_it_starts(project: Path) -> None:
    class Veto:
        @hookimpl
        def runner_before_prepare(self, spec: Any) -> None:
            raise UserError("quota exceeded for this project")

    runs = Runs(project, pm=make_plugin_manager(extra=(Veto(),)))
    (project / "job.py").write_text("print(1)\n")
    cfg = OmegaConf.create({"target": {"backend": "local"}, "env": {}, "data": {}, "seed": 0,
                            "model": {"name": "script", "path": str(project / "job.py")}})
    plan = runs.plan(cfg, [], {"target": "local"})
    r, spec = runs.record(plan)
    with pytest.raises(UserError):
        runs.launch(plan, spec)
    after = runs.store.get(r.id)
    assert after.state == RunState.FAILED and "quota exceeded" in after.message


def test_a_misspelt_hook_is_rejected_loudly() -> None:
    class Typo:
        @hookimpl
        def runner_register_backend(self, register: Any) -> None:  # missing "s"
            pass

    with pytest.raises(pluggy.PluginValidationError, match="runner_register_backend"):
        make_plugin_manager(extra=(Typo(),))


def test_registering_a_name_twice_names_both_plugins() -> None:
    from runner.plugins.local import LocalBackend

    class Clash:
        @hookimpl
        def runner_register_backends(self, register: Any) -> None:
            register(LocalBackend)

    pm = make_plugin_manager(extra=(Clash(),))
    with pytest.raises(UserError, match="registered twice: by runner.plugins.local and by"):
        collect(pm)


def test_an_unknown_backend_lists_the_registered_ones() -> None:
    reg = collect(make_plugin_manager())
    with pytest.raises(UserError) as e:
        reg.backend("remote-docker")
    text = e.value.render()
    assert "backend 'remote-docker' is not registered" in text
    assert "local" in text and "a plugin package may be missing" in text


def test_a_backend_declaring_an_unknown_capability_is_refused_at_registration() -> None:
    from runner.plugins.local import LocalBackend

    class Boasting(LocalBackend):
        name = "boasting"
        capabilities = frozenset({"cancel", "teleport"})

    class Plugin:
        @hookimpl
        def runner_register_backends(self, register: Any) -> None:
            register(Boasting)

    with pytest.raises(TypeError) as e:
        collect(make_plugin_manager(extra=(Plugin(),)))
    assert "['teleport']" in str(e.value) and "follow_logs" in str(e.value)


def test_declared_capabilities_become_the_enum() -> None:
    from runner.backend import Capability

    reg = collect(make_plugin_manager())
    for cls in reg.backends.values():
        assert all(isinstance(c, Capability) for c in cls.capabilities), cls
    assert Capability.REMOTE in reg.backends["remote_docker"].capabilities
    assert Capability.REMOTE not in reg.backends["local"].capabilities


def test_gpu_ids_of_a_target() -> None:
    from runner.gpus import count_listed, device_ids

    listing = "GPU 0: NVIDIA H100 (UUID: GPU-1)\nGPU 1: NVIDIA H100 (UUID: GPU-2)\n"
    assert count_listed(listing) == 2
    assert device_ids("all", lambda: count_listed(listing)) == ["0", "1"]
    assert device_ids("1, 3", lambda: 99) == ["1", "3"]
    assert device_ids("all", lambda: None) is None  # cannot be told apart: shared
    assert device_ids(None, lambda: 2) is None
    assert device_ids("none", lambda: 2) is None


def test_a_backend_missing_a_method_cannot_be_instantiated() -> None:
    class Half(Backend):
        name = "half"

        def prepare(self, spec: Any) -> Any:
            return None

    with pytest.raises(TypeError, match="abstract"):
        Half(Backend.Config())  # type: ignore[abstract]


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_is_in_the_plugin_guide(name: str) -> None:
    guide = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text()
    assert f"| `{name}(" in guide, f"docs/plugins.md lists no {name}"


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_is_documented(name: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    params = list(inspect.signature(getattr(hookspecs, name)).parameters)
    assert len(doc) > 80
    for p in params:
        assert f":param {p}:" in doc
    assert ":return:" in doc


def test_every_hook_is_exercised_by_these_tests(project: Path) -> None:
    rec = Recorder()
    _submit(project, rec, "print(1)\n")  # the registry is collected first: the register hooks
    seen = {c[0] for c in rec.calls}
    assert seen == set(HOOKS)
    reg = collect(make_plugin_manager())
    assert "local" in reg.backends and "script" in reg.models


def test_a_model_missing_its_framework_fails_with_what_it_requires(project: Path) -> None:
    import json
    import subprocess
    import sys

    from runner.plugins.local import LocalBackend, LocalConfig
    from runner.rundir import RunDir
    from runner.testing import make_run

    spec = make_run(project, LocalBackend(LocalConfig()), "")
    req = spec.run_dir / "request.json"
    data = json.loads(req.read_text())
    data["model"], data["model_config"] = "needs_framework", {}
    req.write_text(json.dumps(data))
    # the worker, in its own process, with one more built-in: a model whose framework is absent
    (project / "start_worker.py").write_text(
        "import sys\n"
        "from dataclasses import dataclass\n"
        "import runner.registry as registry\n"
        "from runner import hookimpl\n"
        "from runner.model import Model\n"
        "@dataclass\n"
        "class C:\n    name: str = 'needs_framework'\n"
        "class NeedsFramework(Model):\n"
        "    name = 'needs_framework'\n    Config = C\n    requires = ('no_such_framework>=1',)\n"
        "    def run(self, ctx):\n        import no_such_framework\n        return 0\n"
        "class Plugin:\n"
        "    @hookimpl\n    def runner_register_models(self, register):\n"
        "        register(NeedsFramework)\n"
        "orig = registry.make_plugin_manager\n"
        "registry.make_plugin_manager = lambda **kw: orig(**{**kw, 'extra': (Plugin(),)})\n"
        "from runner.worker import main\n"
        "sys.exit(main([sys.argv[1]]))\n"
    )
    proc = subprocess.run([sys.executable, str(project / "start_worker.py"), str(spec.run_dir)],
                          capture_output=True, text=True, timeout=60)
    st = RunDir(spec.run_dir).status()
    assert proc.returncode == 1 and st is not None and st.state == RunState.FAILED
    assert "needs no_such_framework>=1" in st.message and "No module named" in st.message
    assert "Traceback" not in proc.stdout + proc.stderr
