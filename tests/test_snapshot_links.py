"""What the code snapshot does with symbolic links, seen through `runner submit`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .conftest import run_cli

JOB = "import os\nprint('files', sorted(os.listdir('.')), os.listdir('lib') if os.path.isdir('lib') else '')\n"


@pytest.mark.parametrize("git", [True, False], ids=["git repository", "plain folder"])
def test_links_out_of_the_project_are_never_followed_and_links_inside_are(
        project: Path, tmp_path: Path, git: bool) -> None:
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("outside-content-7f3a\n")
    (project / "job.py").write_text(JOB)
    (project / "real").mkdir()
    (project / "real" / "helper.py").write_text("X = 1\n")
    os.symlink(secret, project / "passwd")  # out of the project: stays out
    os.symlink("real", project / "lib")  # a folder inside: its files come along
    os.symlink("job.py", project / "same_job.py")  # a file inside: its content
    if git:
        subprocess.run(["git", "init", "-q", str(project)], check=True)
        subprocess.run(["git", "-C", str(project), "add", "-A"], check=True)
    r = run_cli("submit", "model=script", "model.path=job.py", cwd=project)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("link(s) pointing out of the project") == 1
    assert "passwd ->" in r.stderr
    assert "'helper.py'" in r.stdout  # the linked folder's file is in the run's lib/
    code = next((project / ".runner" / "runs").iterdir()) / "code"
    assert not (code / "passwd").exists()
    assert (code / "lib" / "helper.py").read_text() == "X = 1\n"
    assert (code / "same_job.py").read_text() == JOB
    for p in code.rglob("*"):
        assert not p.is_symlink(), p
        if p.is_file():
            assert "outside-content-7f3a" not in p.read_text(errors="replace")
