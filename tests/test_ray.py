"""The ray backend against a real Ray head (started by scripts/testbed.sh, address in
RUNNER_TEST_RAY_ADDRESS): the backend contract suite, what is Ray-only, and a small sweep."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pytest

from runner.backend import RunHandle, RunState
from runner.rundir import RunDir
from runner.store import Store
from runner.testing import BackendContract, make_run, wait_until_gone

from .conftest import read_testbed_env

pytestmark = pytest.mark.ray

ADDRESS = read_testbed_env().get("RUNNER_TEST_RAY_ADDRESS", "")


def _head_answers(address: str) -> bool:
    if not address:
        return False
    try:
        with urllib.request.urlopen(address.rstrip("/") + "/api/version", timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


if not _head_answers(ADDRESS):
    pytest.skip(
        "no Ray head answers at RUNNER_TEST_RAY_ADDRESS "
        f"({ADDRESS or 'unset'}); `scripts/testbed.sh up` starts one",
        allow_module_level=True,
    )
pytest.importorskip("ray.job_submission", reason="the [ray] extra is not installed")

from runner.plugins.ray import BEGIN, RayBackend, RayConfig, RayHandle  # noqa: E402


class TestRayContract(BackendContract):
    timeout = 120.0

    @pytest.fixture
    def backend(self) -> RayBackend:
        return RayBackend(RayConfig(address=ADDRESS, num_cpus=0.5, stop_timeout=30))

    def assert_nothing_left(self, handle: RunHandle) -> None:
        assert isinstance(handle, RayHandle)
        super().assert_nothing_left(handle)  # no process of the run's script either (same kernel)
        assert handle.status().terminal
        # the job's own processes (the driver, the worker) carry the run id in their environment
        assert wait_until_gone(f"RUNNER_RUN_ID={handle.run_id}", source="environ") == []


def test_results_travel_in_the_log_but_users_never_see_them(tmp_path: Path) -> None:
    backend = RayBackend(RayConfig(address=ADDRESS, num_cpus=0.5))
    spec = make_run(tmp_path, backend, "import runner\nprint('visible')\nrunner.log_metric('acc', 0.75)")
    handle = backend.submit(spec, backend.prepare(spec))
    assert handle.wait(120).state == RunState.SUCCEEDED
    text = "".join(t for _, t in handle.logs(0))
    assert "visible" in text and BEGIN not in text
    rd = RunDir(spec.run_dir)
    assert rd.summary() == {"acc": 0.75}  # in the local run directory, no shared filesystem
    assert "visible" in rd.log.read_text()
    # a fresh handle (another shell) sees the same final state
    again = backend.reattach(spec.run_id, spec.run_dir, handle.locator)
    assert again.status().state == RunState.SUCCEEDED


def test_oversized_outputs_stay_on_the_cluster_and_the_log_says_so(tmp_path: Path) -> None:
    backend = RayBackend(RayConfig(address=ADDRESS, num_cpus=0.5, max_output_mb=0.01))
    spec = make_run(tmp_path, backend, "import runner\n"
                    "(runner.outputs_dir() / 'big.bin').write_bytes(b'x' * 100_000)\n"
                    "runner.log_metric('n', 1)")
    handle = backend.submit(spec, backend.prepare(spec))
    assert handle.wait(120).state == RunState.SUCCEEDED
    rd = RunDir(spec.run_dir)
    assert not (rd.outputs / "big.bin").exists()
    assert rd.summary() == {"n": 1.0}
    assert "over max_output_mb=0.01: not sent back" in rd.log.read_text()


def test_a_sweep_on_a_ray_target(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    (project / "job.py").write_text("import sys, runner\nrunner.log_metric('score', float(sys.argv[1]) * 2)\n")
    _cluster_target(project)
    res = cli("submit", "-m", "model=script", "model.path=job.py", "target=cluster",
              "model.args=[1],[2],[3]", timeout=300)
    assert res.returncode == 0, res.stderr
    runs = Store(project / ".runner").list()
    assert len(runs) == 3 and {r.state for r in runs} == {RunState.SUCCEEDED}
    assert sorted(r.summary["score"] for r in runs) == [2.0, 4.0, 6.0]
    # slots: 0 on a ray target: all three were handed to Ray before the first one ended
    progress = [line for line in res.stderr.splitlines() if line.startswith("[job ")]
    started = [i for i, line in enumerate(progress) if " RUNNING" in line]
    ended = [i for i, line in enumerate(progress) if " SUCCEEDED" in line]
    assert len(started) == 3 and max(started) < min(ended)


# -- env.requirements: the runtime env's pip list, installed on the cluster ------------------------
PINNED = "tomli==2.0.1"  # small, pure Python, and not what the head's own Python has


def _ray_project(project: Path, requirement: str) -> None:
    (project / "job.py").write_text(
        "from importlib.metadata import version\nimport tomli\n"
        "print('tomli', version('tomli'), 'parses', tomli.loads('a = 1'), flush=True)\n")
    for group, text in (
        ("target/cluster.yaml", f"backend: ray\naddress: {ADDRESS}\nnum_cpus: 0.5\n"),
        ("env/withpip.yaml", f"name: withpip\nrequirements:\n  - {requirement}\n"),
    ):
        path = project / "conf" / group
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_env_requirements_are_pip_installed_on_the_cluster(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    from importlib.metadata import PackageNotFoundError, version

    try:
        here = version("tomli")
    except PackageNotFoundError:
        here = None
    assert here != "2.0.1", "the head's Python already has the pinned version: the test proves nothing"
    _ray_project(project, PINNED)
    args = ("target=cluster", "env=withpip", "model=script", "model.path=job.py")
    res = cli("submit", *args, timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "tomli 2.0.1 parses {'a': 1}" in res.stdout
    (run,) = Store(project / ".runner").list()
    assert run.state == RunState.SUCCEEDED
    # built once: the next prepare of the same env is a cache hit
    again = cli("prepare", *args, timeout=120)
    assert again.returncode == 0 and "cached" in again.stderr, again.stderr


# slow: Ray tries a failed build three times (about 30s each) before it gives up; the head
# remembers the failure, so later runs against the same head take seconds
@pytest.mark.slow
def test_a_requirement_pip_cannot_install_is_a_clear_error(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    _ray_project(project, "tomli==999.0")
    res = cli("submit", "target=cluster", "env=withpip", "model=script", "model.path=job.py",
              timeout=600)
    assert res.returncode == 2, res.stdout + res.stderr
    assert ("error: env withpip: the Ray cluster at " in res.stderr
            and "could not install env.requirements: ERROR: No matching distribution found for "
                "tomli==999.0" in res.stderr), res.stderr
    assert "fix env.requirements" in res.stderr and "Traceback" not in res.stderr
    (run,) = Store(project / ".runner").list()
    assert run.state == RunState.FAILED and "tomli==999.0" in run.message


# -- data: shipped by content through Ray's runtime env, never read at the client's path ----------
READER = """import json, pathlib, runner
p = runner.data_path()
print('DATA', json.dumps({'path': str(p), 'a': (p / 'a.txt').read_text().strip(),
      'b': (p / 'sub' / 'b.txt').read_text().strip(), 'ignore': (p / '.gitignore').exists()}))
"""


def _cluster_target(project: Path, more: str = "") -> None:
    """``target=cluster``: the testbed's Ray head, half a CPU a run, and ``more`` YAML."""
    (project / "conf" / "target").mkdir(parents=True, exist_ok=True)
    (project / "conf" / "target" / "cluster.yaml").write_text(
        f"backend: ray\naddress: {ADDRESS}\nnum_cpus: 0.5\n{more}")


def _dataset(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha\n")
    (folder / "sub" / "b.txt").write_text("beta\n")
    (folder / ".gitignore").write_text("a.txt\n")  # the dataset's own: Ray must not apply it
    return folder


def _seen(stdout: str) -> dict[str, object]:
    import json

    (line,) = [ln for ln in stdout.splitlines() if ln.startswith("DATA ")]
    return dict(json.loads(line[5:]))


def test_data_reaches_the_run_by_content_after_the_client_folder_moved(project: Path, cli,  # type: ignore[no-untyped-def]
                                                                      tmp_path: Path) -> None:
    import shutil

    _cluster_target(project)
    (project / "job.py").write_text(READER)
    _dataset(project / "ds")
    args = ("submit", "target=cluster", "model=script", "model.path=job.py")
    first = cli(*args, "data.path=ds", timeout=180)
    assert first.returncode == 0, first.stdout + first.stderr
    one = _seen(first.stdout)
    assert one["a"] == "alpha" and one["b"] == "beta" and one["ignore"] is True
    assert not str(one["path"]).startswith(str(project))  # not the client's folder
    # the folder moves away; the same content, submitted from another folder, is the same package
    shutil.move(project / "ds", tmp_path / "gone")
    _dataset(project / "elsewhere" / "copy")
    second = cli(*args, "data.path=elsewhere/copy", timeout=180)
    assert second.returncode == 0, second.stdout + second.stderr
    two = _seen(second.stdout)
    assert two == one  # where Ray unpacked that content on the node, not either client path
    runs = Store(project / ".runner").list()
    assert {r.state for r in runs} == {RunState.SUCCEEDED} and len(runs) == 2


def test_data_over_the_ray_package_limit_is_refused_before_anything_is_sent(project: Path, cli  # type: ignore[no-untyped-def]
                                                                           ) -> None:
    _cluster_target(project)
    (project / "job.py").write_text(READER)
    (project / "big").mkdir()
    (project / "big" / "x.bin").write_bytes(b"x" * 4096)
    res = cli("submit", "target=cluster", "model=script", "model.path=job.py", "data.path=big",
              env={"RAY_max_grpc_message_size": "2048"})
    assert res.returncode == 2, res.stdout + res.stderr
    assert "over what Ray carries in a runtime env package" in res.stderr, res.stderr
    assert "data.path=target:/path/on/the/nodes" in res.stderr and "Traceback" not in res.stderr


def test_target_data_is_not_looked_for_on_the_client(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    _cluster_target(project)
    (project / "job.py").write_text("import runner\nprint('AT', runner.data_path())\n")
    res = cli("submit", "target=cluster", "model=script", "model.path=job.py",
              "data.path=target:/nowhere/on/the/nodes", timeout=180)
    assert res.returncode != 0
    assert "/nowhere/on/the/nodes does not exist on" in res.stdout + res.stderr  # said by the node
    (run,) = Store(project / ".runner").list()
    assert run.state == RunState.FAILED


@pytest.mark.tf
def test_sentiment_cnn_trains_on_ray_with_data_from_the_client(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("keras")
    from tests.test_sentiment_data import write_pos_neg
    from tests.test_sentiment_train import SMALL

    _cluster_target(project)
    write_pos_neg(project / "reviews", n=200)
    args = ["target=cluster", "model=sentiment_cnn", "data=text_files", "data.path=reviews",
            "data.format=pos_neg", *SMALL]
    for _ in range(2):  # the env is made ready once, then it is a hit
        prep = cli("prepare", *args, timeout=400)
        assert prep.returncode == 0, prep.stderr
    assert "cached" in prep.stderr, prep.stderr
    res = cli("submit", "--detach", *args, timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    (run,) = Store(project / ".runner").list()
    logs = cli("logs", run.id, "-f", timeout=400)
    assert "val_accuracy:" in logs.stdout, logs.stdout[-2000:] + logs.stderr
    (run,) = Store(project / ".runner").list()
    assert run.state == RunState.SUCCEEDED and run.summary["test_accuracy"] >= 0.7, run.summary
    rd = RunDir(project / ".runner" / "runs" / run.id)
    assert (rd.outputs / "model.keras").stat().st_size > 0  # came back through the log
    show = cli("show", run.id)
    assert "read at" in show.stdout and f"read at {project / 'reviews'}" not in show.stdout, \
        show.stdout  # the node's unpacked copy, not the client's folder
    pred = cli("predict", run.id, "a wonderful moving film", timeout=120)
    assert pred.returncode == 0 and "a wonderful moving film" in pred.stdout, pred.stderr


def test_staged_data_is_made_once_and_found_on_the_node_by_its_marker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Ray: two inputs staged (hard links, cache reused), unpacked as Ray would (one
    folder per package on PYTHONPATH), and the worker's data folder links both."""
    import shutil

    from runner.data import collect
    from runner.plugins.ray import _point_at_data, _stage_data
    from runner.request import DATA_DIR_ENV, RunRequest
    from runner.rundir import REQUEST, write_json_atomic

    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "cache"))  # the same content staged
    _dataset(tmp_path / "ds")                                      # by another test is a hit
    (tmp_path / "words.json").write_text("{}")
    inputs = collect({"path": "ds", "word_index": "words.json"}, {"path": "dir", "word_index": "file"},
                     cwd=tmp_path, cache_path=tmp_path / "hashes.db")
    staged = [_stage_data(d) for d in inputs]
    assert [_stage_data(d) for d in inputs] == staged  # a cache hit
    assert (staged[0] / "path" / "a.txt").stat().st_ino == (tmp_path / "ds" / "a.txt").stat().st_ino
    assert (staged[0] / "path" / ".gitignore.runner-escaped").is_file()  # Ray would apply it
    assert (staged[1] / "word_index" / "words.json").is_file()
    entries = []
    for i, pkg in enumerate(staged):  # where Ray unpacks py_modules: _ray_pkg_<hash>/<folder>
        shutil.copytree(pkg, tmp_path / "node" / f"_ray_pkg_{i}" / pkg.name)
        entries.append(str(tmp_path / "node" / f"_ray_pkg_{i}"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(entries))
    monkeypatch.setenv(DATA_DIR_ENV, "")  # recorded, so what the lookup sets is undone after
    monkeypatch.delenv(DATA_DIR_ENV)
    rd = tmp_path / "run"
    rd.mkdir()
    request = RunRequest(run_id="r1", model="script", model_config={}, data_inputs=inputs)
    write_json_atomic(rd / REQUEST, request.to_dict())
    _point_at_data(rd)
    where = os.environ[DATA_DIR_ENV]
    assert Path(inputs[0].target_path(where), ".gitignore").read_text() == "a.txt\n"
    assert Path(inputs[1].target_path(where)).read_text() == "{}"
    assert str(tmp_path / "ds") not in os.path.realpath(inputs[0].target_path(where))


# -- long runs: a cancel leaves a checkpoint that comes home, and a resume goes on from it ---------
def test_a_cancelled_ray_run_brings_its_checkpoint_home_and_resumes_from_it(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    import json
    import re
    import time

    from tests.test_resume import EPOCHS

    (project / "epochs.py").write_text(EPOCHS)
    _cluster_target(project, "cancel_grace: 5\n")
    # 30 slow epochs, so that the cancel comes mid-run however slowly `runner logs` answers;
    # the resumed run trains what is left at a faster pace (an override given to resume)
    r = cli("submit", "--detach", "target=cluster", "model=script", "model.path=epochs.py",
            "model.args=[30,1.0]", timeout=180)
    assert r.returncode == 0, r.stderr
    first = r.stderr.split("run ", 1)[1].split(":", 1)[0]
    deadline = time.monotonic() + 120
    while "epoch 2 done" not in cli("logs", first).stdout:
        assert time.monotonic() < deadline, "epoch 2 never ended on the cluster"
        time.sleep(0.5)
    c = cli("cancel", first, timeout=120)
    assert c.returncode == 0 and f"run {first}: CANCELLED" in c.stderr, c.stderr
    rd = project / ".runner" / "runs" / first
    # the checkpoint the script saved on Ray's SIGTERM came back with the results
    saved = json.loads((rd / "checkpoints" / "state.json").read_text())["epoch"]
    assert saved >= 2
    assert "checkpoint" in cli("show", first).stdout
    res = cli("resume", first, "model.args=[30,0.05]", timeout=300)
    assert res.returncode == 0, res.stderr
    second = res.stderr.split("run ", 1)[1].split(":", 1)[0]
    log = (project / ".runner" / "runs" / second / "log.txt").read_text()
    assert f"starting after epoch {saved}" in log
    assert [int(n) for n in re.findall(r"^epoch (\d+) done$", log, re.M)] == list(range(saved + 1, 31))
    steps = [json.loads(line)["step"] for line in
             (project / ".runner" / "runs" / second / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))  # the curve goes on from the parent's
