"""The CLI end to end, as a user types it: submit, watch, find again, cancel, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.backend import RunState
from runner.commands import CommandContext
from runner.plugins.local import group_members
from runner.store import Store

from .conftest import REPO, as_at_a_terminal

METRIC_SCRIPT = """\
import sys, time
import runner
lr = float(sys.argv[sys.argv.index("--lr") + 1]) if "--lr" in sys.argv else 0.1
for step in range(3):
    runner.log_metric("loss", lr / (step + 1), step=step)
    print(f"step {step}", flush=True)
runner.log_metric("accuracy", 0.75)
(runner.outputs_dir() / "model.txt").write_text("weights")
"""

SLOW_SCRIPT = """\
import time
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""


def write(project: Path, name: str, text: str) -> Path:
    p = project / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def last_run(project: Path):  # type: ignore[no-untyped-def]
    return Store(project / ".runner").list(limit=1)[0]


def test_help_answers_without_importing_tensorflow_hydra_or_rich() -> None:
    code = (
        "import sys, runner.cli\n"
        "try:\n    runner.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'hydra', 'omegaconf', 'fabric', 'rich') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "submit" in out and "HEAVY []" in out


def test_submit_a_script_records_metrics_and_outputs(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write(project, "train.py", METRIC_SCRIPT)
    res = cli("submit", "model=script", "model.path=train.py", "model.args=[--lr,0.5]")
    assert res.returncode == 0, res.stderr
    assert "step 2" in res.stdout
    assert "SUCCEEDED" in res.stderr and "accuracy=0.75" in res.stderr
    rec = last_run(project)
    assert rec.state.value == "SUCCEEDED" and rec.exit_code == 0
    assert rec.summary == {"loss": pytest.approx(0.5 / 3), "accuracy": 0.75}
    assert (rec.run_dir / "outputs" / "model.txt").read_text() == "weights"

    listing = cli("runs")
    assert rec.id in listing.stdout and "SUCCEEDED" in listing.stdout and "accuracy=0.75" in listing.stdout
    shown = cli("show", rec.id[-4:])
    assert shown.returncode == 0, shown.stderr
    for expected in ("SUCCEEDED", "script train.py", "loss", "model.txt", "seed", "none visible"):
        assert expected in shown.stdout
    logs = cli("logs", "last")
    assert "step 0\nstep 1\nstep 2\n" in logs.stdout


def test_run_records_config_overrides_choices_and_environment(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    write(project, "train.py", METRIC_SCRIPT)
    subprocess.run(["git", "-C", str(project), "add", "."], check=True)
    subprocess.run(["git", "-C", str(project), "-c", "user.email=a@b", "-c", "user.name=a",
                    "commit", "-qm", "init"], check=True)
    write(project, "train.py", METRIC_SCRIPT + "# tuned\n")
    res = cli("submit", "model=script", "model.path=train.py", "seed=7")
    assert res.returncode == 0, res.stderr
    rd = last_run(project).run_dir
    meta = json.loads((rd / "meta.json").read_text())
    assert meta["overrides"] == ["model=script", "model.path=train.py", "seed=7"]
    assert meta["choices"]["target"] == "local" and meta["choices"]["model"] == "script"
    assert meta["git"]["dirty"] is True and "+# tuned" in meta["git"]["diff"]
    worker = json.loads((rd / "worker.json").read_text())
    assert worker["seed"] == 7 and worker["python"] and "pluggy" in worker["packages"]
    assert "seed: 7" in (rd / "config.yaml").read_text()
    assert (rd / "code" / "train.py").read_text().endswith("# tuned\n")


def test_a_run_never_sees_edits_made_after_submit(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write(project, "data.txt", "before\n")
    write(project, "train.py", "import time\ntime.sleep(1.5)\nprint(open('data.txt').read())\n")
    res = cli("submit", "--detach", "model=script", "model.path=train.py")
    assert res.returncode == 0, res.stderr
    write(project, "data.txt", "after\n")
    follow = cli("logs", "last", "-f")
    assert "before" in follow.stdout and "after" not in follow.stdout


def test_failing_script_fails_the_run_with_its_exit_code(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write(project, "train.py", "import sys\nprint('diverged')\nsys.exit(4)\n")
    res = cli("submit", "model=script", "model.path=train.py")
    assert res.returncode == 1
    assert "FAILED" in res.stderr and "exited with code 4" in res.stderr
    rec = last_run(project)
    assert rec.state.value == "FAILED" and rec.exit_code == 4


def _wait_for(pred, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_runner_cancel_stops_a_detached_run_and_leaves_no_process(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write(project, "train.py", SLOW_SCRIPT)
    res = cli("submit", "--detach", "model=script", "model.path=train.py")
    assert res.returncode == 0, res.stderr
    rec = last_run(project)
    _wait_for(lambda: "ready" in (rec.run_dir / "log.txt").read_text())
    pgid = Store(project / ".runner").get(rec.id).locator["pgid"]  # type: ignore[index]
    assert group_members(pgid)
    out = cli("cancel", rec.id)
    assert out.returncode == 0 and "CANCELLED" in out.stderr
    assert group_members(pgid) == []
    assert Store(project / ".runner").get(rec.id).state.value == "CANCELLED"
    again = cli("cancel", rec.id)  # idempotent
    assert again.returncode == 0 and "already ended: CANCELLED" in again.stderr


def test_ctrl_c_cancels_the_run_and_waits_until_it_stopped(project: Path) -> None:
    write(project, "train.py", SLOW_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "submit", "model=script", "model.path=train.py"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=as_at_a_terminal,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    while "ready" not in line:
        assert line, proc.stderr.read() if proc.stderr else ""
        line = proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    rec = last_run(project)
    assert rec.state.value == "CANCELLED"
    assert group_members(rec.locator["pgid"]) == []  # type: ignore[index]


def test_a_killed_client_leaves_a_run_the_next_command_reconciles(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write(project, "train.py", "import time\nprint('ready', flush=True)\ntime.sleep(2)\nprint('done')\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "submit", "model=script", "model.path=train.py"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    while "ready" not in proc.stdout.readline():
        pass
    proc.kill()
    proc.wait()
    assert last_run(project).state.value == "RUNNING"
    _wait_for(lambda: "done" in (last_run(project).run_dir / "log.txt").read_text())
    time.sleep(0.5)
    listing = cli("runs")
    assert "SUCCEEDED" in listing.stdout
    assert last_run(project).state.value == "SUCCEEDED"


def test_compare_shows_only_the_keys_that_differ_beside_metrics(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write(project, "train.py", METRIC_SCRIPT)
    for lr in ("0.5", "0.25"):
        assert cli("submit", "model=script", "model.path=train.py", f"model.args=[--lr,{lr}]").returncode == 0
    runs = Store(project / ".runner").list()
    out = cli("compare", runs[1].id, runs[0].id)
    assert out.returncode == 0, out.stderr
    assert "model.args" in out.stdout and "0.5" in out.stdout and "0.25" in out.stdout
    assert "model.path" not in out.stdout and "target.backend" not in out.stdout
    assert "loss" in out.stdout and "accuracy" in out.stdout


def test_hydra_flags_work_as_hydra_users_expect(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    res = cli("submit", "--cfg", "job", "model=script", "model.path=x.py", "target.slots=3")
    assert res.returncode == 0, res.stderr
    assert "slots: 3" in res.stdout and "path: x.py" in res.stdout
    info = cli("submit", "--info", "defaults")
    assert info.returncode == 0 and "target/local" in info.stdout
    resolved = cli("submit", "--cfg", "job", "--resolve", "+where=${target.backend}")
    assert resolved.returncode == 0 and "where: local" in resolved.stdout, resolved.stderr
    assert not (project / ".runner" / "runs.db").exists() or Store(project / ".runner").list() == []


def test_a_run_resolves_hydra_interpolations(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write(project, "t.py", "print('ok')\n")
    res = cli("submit", "model=script", "model.path=t.py", "+where=${hydra:runtime.choices.target}")
    assert res.returncode == 0, res.stderr
    assert "where: local" in (last_run(project).run_dir / "config.yaml").read_text()


def test_runs_says_when_it_shows_only_the_newest(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    store = Store(project / ".runner")
    for _ in range(24):
        rec = store.create_run(target="local", backend="local", model="script")
        store.update(rec.id, state=RunState.SUCCEEDED, finished=time.time())
    res = cli("runs")
    assert res.returncode == 0, res.stderr
    assert len([ln for ln in res.stdout.splitlines() if "SUCCEEDED" in ln]) == 20
    assert "showing 20 of 24; `-n 0` for all" in res.stderr
    everything = cli("runs", "-n", "0")
    assert len([ln for ln in everything.stdout.splitlines() if "SUCCEEDED" in ln]) == 24
    assert "showing" not in everything.stderr
    assert "showing" not in cli("runs", "-n", "24").stderr


def test_a_command_context_builds_the_ledger_once_and_only_when_used() -> None:
    made: list[int] = []

    def make() -> object:
        made.append(1)
        return object()

    ctx = CommandContext(debug=True, make_runs=make)  # type: ignore[arg-type]
    assert made == [] and ctx.debug
    assert ctx.runs is ctx.runs and made == [1]


def test_a_project_adds_its_own_targets_and_envs(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write(project, "conf/target/mybox.yaml", "backend: local\nslots: 4\ncancel_grace: 2\n")
    write(project, "conf/env/pinned.yaml", "name: pinned\nrequirements: []\n")
    write(project, "train.py", "print('on my box')\n")
    res = cli("submit", "target=mybox", "env=pinned", "model=script", "model.path=train.py")
    assert res.returncode == 0, res.stderr
    rec = last_run(project)
    assert rec.target == "mybox"
    assert json.loads((rec.run_dir / "meta.json").read_text())["target_config"]["slots"] == 4
    shown = cli("submit", "--cfg", "job", "target=mybox", "env=pinned")  # through a Hydra app
    assert shown.returncode == 0 and "slots: 4" in shown.stdout and "name: pinned" in shown.stdout


@pytest.mark.parametrize(
    ("args", "files", "expected"),
    [
        (["target=does_not_exist"], {}, ["unknown target 'does_not_exist'", "available target options: local"]),
        (["model=nope"], {}, ["unknown model 'nope'", "script"]),
        (["env=nope"], {}, ["unknown env 'nope'", "current"]),
        (["target=box", "model=script", "model.path=t.py"], {"conf/target/box.yaml": "backend: lokal\n"},
         ["backend 'lokal', which is not registered", "available: ", "local", "runner plugins"]),
        (["target=box", "model=script", "model.path=t.py"], {"conf/target/box.yaml": "backend: local\nslotz: 2\n"},
         ["box.yaml: key 'target.slotz' is not valid for backend 'local'", "valid keys: backend, slots"]),
        (["target=box"], {"conf/target/box.yaml": "backend: local\n  slots: [\n"},
         ["malformed YAML", "box.yaml, line 2"]),
        (["model=script", "model.path=missing.py"], {}, ["script 'missing.py' not found"]),
        (["model=script", "model.path=t.py", "model.pth=x"], {}, ["key 'model.pth' is not in the composed config"]),
        (["target.password=hunter2"], {}, ["looks like a secret", "${oc.env:TARGET_PASSWORD}"]),
        (["model=script", "model.path=t.py", "seed=abc"], {}, ["seed"]),
        (["model=[a"], {}, ["cannot parse the override 'model=[a'", "override grammar"]),
        (["hydra.launcher.max_parallel=abc"], {},
         ["hydra.launcher.max_parallel=abc", "could not be converted to Integer"]),
        (["-m", "model=script", "model.path=t.py", "target=nope,local"], {},
         ["unknown target 'nope'", "available target options: local"]),
        (["-m", "model=script", "model.path=t.py", "model.pth=1,2"], {},
         ["key 'model.pth' is not in the composed config"]),
        (["--cfg", "job", "-m"], {}, ["--cfg and -m do not go together"]),
        (["--resolve"], {}, ["--resolve only applies with --cfg"]),
    ],
)
def test_bad_input_gets_one_clear_error_and_exit_code_2(
    project: Path, cli, args: list[str], files: dict[str, str], expected: list[str]  # type: ignore[no-untyped-def]
) -> None:
    write(project, "t.py", "print(1)\n")
    for name, text in files.items():
        write(project, name, text)
    res = cli("submit", *args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stderr.startswith("error: ")
    for e in expected:
        assert e in res.stderr
    assert "Traceback" not in res.stderr
    assert "hunter2" not in res.stderr


def test_unknown_run_id_lists_recent_runs(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    res = cli("show", "zzzz")
    assert res.returncode == 2 and "no run 'zzzz'" in res.stderr and "Traceback" not in res.stderr


def test_debug_shows_the_traceback(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    res = cli("--debug", "submit", "target=does_not_exist")
    assert res.returncode == 2 and "Traceback" in res.stderr


def test_secrets_travel_as_references_and_never_reach_ledger_or_log(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write(project, "conf/model/secretive.yaml",
          "name: script\npath: t.py\nmodule: null\nargs: []\npython: null\n")
    write(project, "t.py", "import os\nprint('the token is', os.environ['HUB_TOKEN'])\n"
                            "print('a key ghp_' + 'A' * 30)\n")
    write(project, "conf/target/hub.yaml", "backend: local\n")
    token = "s3cr3t-value-123456"
    res = cli("submit", "model=secretive", "+model_token=${oc.env:HUB_TOKEN}",
              env={"HUB_TOKEN": token})
    assert res.returncode == 0, res.stderr
    rec = last_run(project)
    everything = "".join(p.read_text(errors="replace") for p in rec.run_dir.rglob("*") if p.is_file())
    everything += (project / ".runner" / "runs.db").read_bytes().decode("latin-1")
    assert token not in everything and token not in res.stdout
    assert "the token is ****" in (rec.run_dir / "log.txt").read_text()
    assert "ghp_AAAA" not in (rec.run_dir / "log.txt").read_text()
    assert "${oc.env:HUB_TOKEN}" in (rec.run_dir / "config.yaml").read_text()


def test_plugins_lists_what_is_loaded(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    res = cli("plugins")
    assert res.returncode == 0, res.stderr
    assert "runner.plugins.local" in res.stdout and "backend local" in res.stdout
    assert "model script" in res.stdout and "runner_register_models" in res.stdout


@pytest.fixture(scope="module")
def example_plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example third-party plugin, pip-installed as a real distribution into its own dir."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO / "tests" / "example_plugin")],
        check=True, capture_output=True,
    )
    return target


def test_a_pip_installed_plugin_is_listed_and_its_backend_runs_a_job(
    project: Path, cli, example_plugin_path: Path  # type: ignore[no-untyped-def]
) -> None:
    env = {"PYTHONPATH": os.pathsep.join([str(example_plugin_path), os.environ.get("PYTHONPATH", "")])}
    # the distribution carries the backend of docs/plugins.md itself, not a link back here
    installed = example_plugin_path / "runner_example_plugin" / "subprocess_backend.py"
    assert not installed.is_symlink()
    assert installed.read_text() == (REPO / "docs" / "examples" / "subprocess_backend.py").read_text()
    listed = cli("plugins", env=env)
    assert "runner-example-plugin 0.3.0" in listed.stdout
    assert "backend subprocess" in listed.stdout and "model countdown" in listed.stdout
    assert "liftoff" in cli("--help", env=env).stdout  # a plugin's own subcommand
    assert cli("liftoff", "--from", "2", env=env).stdout == "2 1 0 liftoff\n"
    # neither needs YAML: their config schemas are offered as options
    res = cli("submit", "target=subprocess", "target.cancel_grace=3", "model=countdown",
              "model.start=2", env=env)
    assert res.returncode == 0, res.stderr
    assert "countdown 2\ncountdown 1\ncountdown 0\n" in res.stdout and "SUCCEEDED" in res.stderr
    rec = last_run(project)
    assert rec.state.value == "SUCCEEDED" and rec.exit_code == 0
    assert rec.backend == "subprocess" and rec.summary == {"remaining": 0.0}
    assert (rec.run_dir / "outputs" / "liftoff.txt").read_text() == "liftoff\n"
    assert json.loads((rec.run_dir / "meta.json").read_text())["target_config"]["cancel_grace"] == 3
    listing = cli("runs", env=env)
    assert rec.id in listing.stdout and "SUCCEEDED" in listing.stdout and "remaining=0" in listing.stdout
    shown = cli("show", "last", env=env)
    assert shown.returncode == 0, shown.stderr
    for expected in (rec.id, "SUCCEEDED", "subprocess (backend subprocess)", "remaining", "liftoff.txt"):
        assert expected in shown.stdout
    assert "countdown 0\n" in cli("logs", "last", env=env).stdout
    # a second run finds its environment prepared; a detached one is cancelled from another
    # process, which finds it again from the locator in the ledger
    again = cli("submit", "--detach", "target=subprocess", "model=countdown", "model.start=600",
                "model.delay=0.1", env=env)
    assert again.returncode == 0, again.stderr
    assert "env current: cached" in again.stderr
    cancelled = cli("cancel", "last", env=env)
    assert cancelled.returncode == 0 and "CANCELLED" in cancelled.stderr, cancelled.stderr
    rec = last_run(project)
    assert rec.state.value == "CANCELLED" and group_members(rec.locator["pid"]) == []
    write(project, "gpu.py", "import os\nprint('visible', os.environ['CUDA_VISIBLE_DEVICES'])\n")
    # an env it would have to build is refused, saying where to go instead
    res = cli("submit", "target=subprocess", "env=docker_python", "model=script",
              "model.path=gpu.py", env=env)
    assert res.returncode == 2 and "installs nothing" in res.stderr and "Traceback" not in res.stderr
    # the GPUs the target offers win over a CUDA_VISIBLE_DEVICES the client happens to have
    res = cli("submit", "target=subprocess", "target.gpus=1", "model=script", "model.path=gpu.py",
              env={**env, "CUDA_VISIBLE_DEVICES": "0"})
    assert res.returncode == 0 and "visible 1\n" in res.stdout, res.stdout + res.stderr


def test_a_project_with_its_own_models_and_plugins_packages_is_not_shadowed(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write(project, "models/__init__.py", "WHOSE = 'the project'\n")
    write(project, "plugins/__init__.py", "WHOSE = 'the project'\n")
    write(project, "train.py", "import models, plugins\nprint('models:', models.WHOSE, '| plugins:', plugins.WHOSE)\n")
    res = cli("submit", "model=script", "model.path=train.py")
    assert res.returncode == 0, res.stderr
    assert "models: the project | plugins: the project" in res.stdout
