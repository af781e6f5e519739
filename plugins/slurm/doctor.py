"""``runner doctor TARGET`` for a Slurm target: each thing a run needs, with its fix."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

from runner.backend import Check
from runner.errors import UserError
from runner.plugins.slurm.client import SSHSlurm
from runner.plugins.slurm.cluster import accounting, check_accounts, check_target

if TYPE_CHECKING:
    from runner.plugins.slurm.backend import SlurmBackend


def checks(b: SlurmBackend) -> list[Check]:
    slurm, c = b.slurm, b.config
    out: list[Check] = []
    if isinstance(slurm, SSHSlurm):  # the login node first: nothing else answers without it
        t0 = time.monotonic()
        try:
            slurm.session.connect()
        except UserError as e:
            return [Check("ssh", False, e.message, " ".join(e.hints)),
                    Check("slurm commands", False, "not checked: no SSH connection",
                          "fix ssh first")]
        out.append(Check("ssh", True, f"{slurm.where} in {time.monotonic() - t0:.2f}s "
                                      "(host key known)"))
    if not slurm.available():
        return out + [Check("slurm commands", False, f"sbatch/squeue are not on PATH on "
                            f"{slurm.where}", "run runner on the cluster's login node (or "
                            "point target.host at it), or install slurm-client")]
    r = slurm.run("sinfo", "-h", "-o", "%P %a %D %T %G %l")
    out.append(Check("sinfo", r.ok, r.out.strip().replace("\n", "; ") if r.ok else r.first_error(),
                     "check that slurmctld answers (scontrol ping) and SLURM_CONF / target.slurm_conf"))
    if not r.ok:
        return out
    try:
        part = check_target(c, None if c.gpus is None else str(c.gpus), slurm)
        gres = ", ".join(sorted(part.gres)) or "none"
        out.append(Check("partition", True, f"{part.name}: time limit "
                         f"{'unlimited' if part.max_minutes is None else f'{part.max_minutes:g} min'}, gres {gres}"))
    except UserError as e:
        out.append(Check("partition", False, e.message.splitlines()[0],
                         "\n".join(e.message.splitlines()[1:])))
    acct = slurm.run("sacct", "-n", "-X", "-S", "now-1minutes", "-o", "JobID")
    out.append(Check("sacct", True, "accounting answers" if acct.ok else
                     f"no accounting ({acct.first_error()}): states come from the run directory "
                     "and scontrol, which forgets ended jobs after MinJobAge"))
    kept = accounting(slurm) if acct.ok else None
    if kept is not None and kept.enforced:
        try:
            check_accounts(c, slurm)
            out.append(Check("account", True, f"cluster {kept.cluster} enforces accounting; "
                             f"account {c.account or '(your default)'}, "
                             f"QOS {c.qos or '(the default)'}: allowed"))
        except UserError as e:
            out.append(Check("account", False, e.message, "\n".join(e.hints)))
    out.append(_work_dir(b))
    return out


def _work_dir(b: SlurmBackend) -> Check:
    """Write a file where runs live, then read it back from a compute node (a tiny job)."""
    c, dirs = b.config, b.dirs
    fix = "make target.work_dir a folder on a file system the compute nodes mount"
    try:
        probe = dirs.doctor_dir()
    except (OSError, UserError) as e:
        return Check("work dir", False, str(e), fix)
    where = probe.rsplit("/", 1)[0]
    token = uuid.uuid4().hex
    dirs.write(f"{probe}/token", token)
    opts = [f"--partition={c.partition}"] if c.partition else []
    opts += [f"--account={c.account}"] if c.account else []
    opts += [f"--qos={c.qos}"] if c.qos else []
    try:
        r = b.slurm.run("sbatch", "--parsable", "--job-name=runner-doctor", "--time=1", *opts,
                        f"--output={probe}/seen", f"--wrap=cat {probe}/token", retry=False)
        if not r.ok:
            return Check("work dir", False, f"sbatch refused the probe job: {r.first_error()}", fix)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen = dirs.read(f"{probe}/seen")
            if seen is not None and token in seen.decode("utf-8", "replace"):
                return Check("work dir", True,
                             f"{where}: a compute node reads what the client wrote there")
            time.sleep(0.5)
        b.slurm.run("scancel", r.out.strip().split(";")[0])
        return Check("work dir", False, f"{where}: the probe job did not report within 60 s "
                     "(still queued, or the node does not see the folder)", fix)
    finally:
        dirs.remove(probe)
