"""The ledger under concurrent writers, and every packaged config composing and validating."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from runner import config as conf
from runner.backend import RunState
from runner.errors import UserError
from runner.registry import collect, make_plugin_manager
from runner.store import Store


def _writer(home: str, n: int) -> None:
    store = Store(Path(home))
    for i in range(n):
        rec = store.create_run(target="local", backend="local", model="script")
        store.update(rec.id, state=RunState.RUNNING)
        store.update(rec.id, state=RunState.SUCCEEDED, summary={"i": i})


def test_many_processes_write_the_ledger_at_once(tmp_path: Path) -> None:
    home = tmp_path / ".runner"
    Store(home)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(home), 25)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    runs = Store(home).list()
    assert len(runs) == 100 and len({r.id for r in runs}) == 100
    assert all(r.state == RunState.SUCCEEDED for r in runs)


def test_a_terminal_state_is_never_overwritten(tmp_path: Path) -> None:
    store = Store(tmp_path / ".runner")
    rec = store.create_run(target="t", backend="local", model="m")
    store.update(rec.id, state=RunState.CANCELLED)
    store.update(rec.id, state=RunState.RUNNING)  # a late observer
    assert store.get(rec.id).state == RunState.CANCELLED


def test_runs_are_found_by_prefix_suffix_or_last_and_ambiguity_is_explained(tmp_path: Path) -> None:
    store = Store(tmp_path / ".runner")
    a = store.create_run(target="t", backend="local", model="m")
    b = store.create_run(target="t", backend="local", model="m")
    assert store.resolve("last").id == b.id
    assert store.resolve(a.id[-4:]).id == a.id
    common = a.id[:6]
    with pytest.raises(UserError, match="ambiguous"):
        store.resolve(common)


def _options() -> list[tuple[str, str]]:
    dirs = [conf.package_conf_dir()]
    return [(g, o) for g in conf.GROUPS for o in conf.options(g, dirs)]


@pytest.mark.parametrize(("group", "option"), _options())
def test_every_packaged_config_composes_and_validates(group: str, option: str) -> None:
    reg = collect(make_plugin_manager())
    dirs = [conf.package_conf_dir()]
    conf.store_plugin_configs(reg, dirs)  # the backends' defaults that target files extend
    with initialize_config_dir(config_dir=str(conf.package_conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[f"{group}={option}"])
    choices = {"target": "local", "env": "current", "model": "sentiment_cnn", "data": "imdb", group: option}
    conf.target_config(cfg, choices["target"], reg, dirs)
    conf.env_spec(cfg, choices["env"], dirs, Path.cwd())
    conf.model_instance(cfg, choices["model"], reg, dirs)
    # the option's own file is what was composed into its group
    import yaml

    own = yaml.safe_load((conf.package_conf_dir() / group / f"{option}.yaml").read_text())
    composed = OmegaConf.to_container(cfg[group], resolve=False)
    assert isinstance(composed, dict)
    for key, value in own.items():
        if key != "defaults":
            assert composed[key] == value, (group, option, key)


def test_a_target_file_lists_only_what_differs_and_every_key_can_be_overridden(
    project: Path, cli  # type: ignore[no-untyped-def]
) -> None:
    import yaml

    target = project / "conf" / "target"
    target.mkdir(parents=True)
    (target / "box.yaml").write_text(
        "defaults:\n  - /runner/target/local_docker@_here_\n  - _self_\n"
        "backend: local_docker\ngpus: all\n")
    res = cli("submit", "--cfg", "job", "target=box", "target.memory=4g", "model=script",
              "model.path=x.py")
    assert res.returncode == 0, res.stderr
    shown = yaml.safe_load(res.stdout)["target"]
    assert shown["gpus"] == "all" and shown["memory"] == "4g"  # from the file, from the line
    assert shown["cancel_grace"] == 10.0 and shown["network"] == "default"  # the defaults
    # the packaged targets are written the same way
    res = cli("submit", "--cfg", "job", "target=local_docker", "target.shm_size=1g",
              "model=script", "model.path=x.py")
    assert res.returncode == 0 and yaml.safe_load(res.stdout)["target"]["shm_size"] == "1g"
    # a misspelt key is still refused, with the fix
    res = cli("submit", "target=box", "target.memroy=4g", "model=script", "model.path=x.py")
    assert res.returncode == 2 and "target.memroy" in res.stderr and "Traceback" not in res.stderr
    # runner doctor reads the file itself (not composed by Hydra): the defaults entry is no key
    res = cli("doctor", "box")
    assert "defaults" not in res.stderr and "not valid" not in res.stderr, res.stderr


def test_a_bad_value_names_its_full_key() -> None:
    reg = collect(make_plugin_manager())
    cfg = OmegaConf.create({"target": {"backend": "local", "slots": "many"}})
    with pytest.raises(UserError) as e:
        conf.target_config(cfg, "local", reg, [conf.package_conf_dir()])
    assert "target.slots" in e.value.render() and "many" in e.value.render()
