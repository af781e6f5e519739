"""The slurm backend's parts that need no cluster: its keys, Slurm's time format, and how
Slurm's job states become run states."""

from __future__ import annotations

import dataclasses

import pytest

from runner.backend import RunState
from runner.errors import UserError
from runner.plugins.slurm.client import Result, Slurm
from runner.plugins.slurm.cluster import check_accounts, refused
from runner.plugins.slurm.config import SlurmConfig, check, sbatch_options, time_limit_minutes
from runner.plugins.slurm.states import parse_sacct, parse_scontrol


@pytest.mark.parametrize(("text", "minutes"), [
    ("30", 30), ("10:00", 10), ("2:00:00", 120), ("1-00", 1440), ("1-2:30", 1590),
    ("1-0:0:30", 1440.5), ("UNLIMITED", None), ("infinite", None),
])
def test_slurm_time_formats(text: str, minutes: float | None) -> None:
    assert time_limit_minutes(text, "k") == minutes


def test_keys_become_sbatch_options() -> None:
    c = SlurmConfig(partition="gpu", account="lab", qos="high", time_limit="1:00:00", gpus="2",
                    mem_mb=4096, warn_before_s=90, sbatch_args=["--exclusive"])
    check(c)
    assert sbatch_options(c, c.gpus) == [
        "--partition=gpu", "--account=lab", "--qos=high", "--time=1:00:00",
        "--cpus-per-task=1", "--mem=4096M", "--gres=gpu:2", "--signal=B:USR1@90", "--exclusive"]
    typed = SlurmConfig(gres="gpu:a100:1", warn_before_s=0)
    assert sbatch_options(typed, None) == ["--cpus-per-task=1", "--gres=gpu:a100:1"]


@pytest.mark.parametrize(("config", "key"), [
    (SlurmConfig(gpus="1", gres="gpu:1"), "target.gpus and target.gres"),
    (SlurmConfig(gpus="0,1"), "target.gpus"),
    (SlurmConfig(time_limit="tomorrow"), "target.time_limit"),
    (SlurmConfig(cpus_per_task=0), "target.cpus_per_task"),
    (SlurmConfig(slurm_conf="/nonexistent/slurm.conf"), "target.slurm_conf"),
])
def test_bad_keys_name_the_key(config: SlurmConfig, key: str) -> None:
    with pytest.raises(UserError) as e:
        check(config)
    assert key in e.value.message


SCONTROL = ("JobId=7 JobName=runner-x UserId=root(0) JobState={state} Reason={reason} "
            "Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 ExitCode={code}")


@pytest.mark.parametrize(("state", "code", "want", "oom", "says"), [
    ("TIMEOUT", "0:15", RunState.FAILED, False, "time limit"),
    ("OUT_OF_MEMORY", "0:125", RunState.FAILED, True, "memory"),
    ("PREEMPTED", "0:15", RunState.LOST, False, "preempted"),
    ("NODE_FAIL", "0:0", RunState.LOST, False, "node failed"),
    ("CANCELLED", "0:15", RunState.CANCELLED, False, "cancelled"),
    ("FAILED", "3:0", RunState.FAILED, False, "failed"),
    ("COMPLETED", "0:0", RunState.LOST, False, "without the worker's final status"),
])
def test_how_a_job_ended_becomes_the_run_status(state: str, code: str, want: RunState, oom: bool,
                                                says: str) -> None:
    info = parse_scontrol(SCONTROL.format(state=state, reason="None", code=code))
    assert info is not None and info.ended
    st = info.run_status(cancel_requested=False)
    assert (st.state, st.oom) == (want, oom)
    assert says in st.message
    exit_code, _, sig = code.partition(":")
    assert st.exit_code == (128 + int(sig) if int(sig) else int(exit_code))


def test_a_live_job_and_a_requested_cancel() -> None:
    pending = parse_scontrol(SCONTROL.format(state="PENDING", reason="Resources", code="0:0"))
    assert pending is not None and not pending.ended
    st = pending.queued_status()
    assert st.state == RunState.QUEUED and "Resources" in st.message
    running = parse_scontrol(SCONTROL.format(state="RUNNING", reason="None", code="0:0"))
    assert running is not None and running.queued_status().state == RunState.RUNNING
    killed = parse_scontrol(SCONTROL.format(state="FAILED", reason="None", code="0:9"))
    assert killed is not None and killed.run_status(cancel_requested=True).state == RunState.CANCELLED
    assert parse_scontrol("slurm_load_jobs error: Invalid job id specified") is None


def test_sacct_lines() -> None:
    info = parse_sacct("CANCELLED by 0|0:15|None\n")
    assert info is not None and info.state == "CANCELLED" and info.signal == 15
    assert parse_sacct("") is None


def test_over_ssh_the_work_dir_is_required_and_slurm_conf_names_a_file_on_the_login_node() -> None:
    with pytest.raises(UserError) as e:
        check(SlurmConfig(host="login"))
    assert "target.work_dir is unset" in e.value.message and "target.host=login" in e.value.message
    # a path on the login node: not looked for on this machine
    check(SlurmConfig(host="login", work_dir="~/runner", slurm_conf="/etc/slurm/on-the-cluster.conf"))
    with pytest.raises(UserError, match="target.slurm_conf"):
        check(SlurmConfig(slurm_conf="/etc/slurm/on-the-cluster.conf"))


def test_the_composed_slurm_target_has_the_ssh_keys_of_the_remote_targets() -> None:
    from runner.plugins._ssh import SSHTarget

    ssh_keys = {f.name for f in dataclasses.fields(SSHTarget)}
    assert ssh_keys <= {f.name for f in dataclasses.fields(SlurmConfig)}
    assert SlurmConfig().host == ""  # no host: runner runs on the login node


@pytest.mark.parametrize(("line", "key"), [
    ("sbatch: error: Batch job submission failed: Invalid account or account/partition "
     "combination specified", "target.account"),
    ("sbatch: error: Batch job submission failed: Invalid qos specification", "target.qos"),
    ("sbatch: error: Batch job submission failed: Invalid partition name specified",
     "target.partition"),
])
def test_what_sbatch_refuses_names_the_key(line: str, key: str) -> None:
    e = refused(line)
    assert e.message.startswith(f"{key}: Slurm refused the job: ") and line in e.message


class _Cluster(Slurm):
    """A stand-in for the Slurm commands: each command's output by its first words."""

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__(SlurmConfig())
        self.answers = answers
        self.asked: list[str] = []

    def user(self) -> str:
        return "ana"

    def run(self, *argv: str, retry: bool = True) -> Result:
        key = next((k for k in self.answers if " ".join(argv).startswith(k)), None)
        self.asked.append(" ".join(argv[:3]))
        return Result(0, self.answers[key], "") if key else Result(1, "", "no such command")


_ENFORCED = ("ClusterName = lab\nAccountingStorageType = accounting_storage/slurmdbd\n"
             "AccountingStorageEnforce = associations,limits,qos\n")


@pytest.mark.parametrize("config", [
    "AccountingStorageType = accounting_storage/none\n",
    "ClusterName = lab\nAccountingStorageType = accounting_storage/slurmdbd\n"
    "AccountingStorageEnforce = none\n",
])
def test_without_enforced_accounting_sbatch_decides(config: str) -> None:
    slurm = _Cluster({"scontrol show config": config})
    check_accounts(SlurmConfig(account="nope", qos="nope"), slurm)  # no error: sbatch decides
    assert slurm.asked == ["scontrol show config"]


def test_a_qos_is_checked_against_the_account_it_runs_under() -> None:
    slurm = _Cluster({"scontrol show config": _ENFORCED,
                      "sacctmgr -nP show assoc": "gpu|high,normal\ncpu|normal\n",
                      "sacctmgr -nP show user": "cpu\n",
                      "sacctmgr -nP show qos": "normal\nhigh\n"})
    check_accounts(SlurmConfig(account="GPU", qos="High"), slurm)  # names are case-blind
    for config in (SlurmConfig(account="cpu", qos="high"), SlurmConfig(qos="high")):  # default: cpu
        with pytest.raises(UserError) as e:
            check_accounts(config, slurm)
        assert "account 'cpu' may not use QOS 'high'" in e.value.message
        assert "valid for account 'cpu': normal" in e.value.hints[0]
