"""Nothing leaks: a secret's value reaches the run, never a file of the ledger or a printed line.

Each route is driven through the CLI as a user types it, with a unique value in an environment
variable referenced as ``${oc.env:VAR}``. The run proves it got the real value by printing its
sha256 (never the value itself); every file under ``.runner/`` and every output is searched for
the value's bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from runner.errors import UserError
from runner.secrets import (
    MASK,
    StreamMasker,
    check_config,
    check_overrides,
    env_refs,
    is_secret_key,
    keep_references,
    masked_stdout,
    resolve_refs,
    to_references,
)
from runner.store import Store

VAR = "MY_TOKEN"

#: prints the sha256 of the token it finds in its environment or, with ``--token``, in argv
SHA_SCRIPT = """\
import hashlib, os, sys
t = sys.argv[sys.argv.index("--token") + 1] if "--token" in sys.argv else os.environ["MY_TOKEN"]
print("sha", hashlib.sha256(t.encode()).hexdigest(), flush=True)
"""


def _token() -> str:
    return f"tok-{uuid.uuid4().hex}"


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _write(project: Path, name: str, text: str) -> Path:
    p = project / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def _last_run_id(project: Path) -> str:
    return Store(project / ".runner").list(limit=1)[0].id


def _assert_nowhere(project: Path, value: str, *outputs: subprocess.CompletedProcess[str]) -> None:
    """``value`` is in no file under the project's ``.runner/`` and in no CLI output."""
    files = [p for p in (project / ".runner").rglob("*") if p.is_file()]
    leaked = [str(p.relative_to(project)) for p in files if value.encode() in p.read_bytes()]
    assert not leaked, f"the secret is in {leaked}"
    for res in outputs:
        assert value not in res.stdout and value not in res.stderr, (res.args, res.stdout,
                                                                      res.stderr)


def _show_and_logs(cli: Any, project: Path) -> list[subprocess.CompletedProcess[str]]:
    run_id = _last_run_id(project)
    out = [cli("show", run_id), cli("logs", run_id)]
    for res in out:
        assert res.returncode == 0, res.stderr
    return out


# -- route 1: a value printed in two writes -----------------------------------------------------
def test_a_secret_printed_in_two_writes_is_masked_in_the_log_and_the_stream(
        project: Path, cli: Any) -> None:
    token = _token()
    _write(project, "job.py",
           "import hashlib, os, sys, time\n"
           "t = os.environ['MY_TOKEN']\n"
           "sys.stdout.write(t[:4]); sys.stdout.flush(); time.sleep(0.5); print(t[4:])\n"
           "sys.stdout.write('partial '); sys.stdout.flush(); time.sleep(0.5); print('line')\n"
           "print('sha', hashlib.sha256(t.encode()).hexdigest(), flush=True)\n")
    res = cli("submit", "model=script", "model.path=job.py", f"+data.api_token=${{oc.env:{VAR}}}",
              env={VAR: token})
    assert res.returncode == 0, res.stderr
    assert f"sha {_sha(token)}" in res.stdout
    assert MASK in res.stdout and "partial line" in res.stdout
    shown = _show_and_logs(cli, project)
    assert MASK in shown[1].stdout
    _assert_nowhere(project, token, res, *shown)
    _assert_nowhere(project, token[4:], res, *shown)


# -- route 2: a secret nested in a dict override -------------------------------------------------
@pytest.mark.parametrize("override", [
    "+data.auth={{token: {value}}}",
    "+data.auth={{inner: {{api_key: {value}}}}}",
    "+data.auth={{tokens: [{value}]}}",
    "+data.auth=[{{password: {value}}}]",
])
def test_a_literal_secret_nested_in_an_override_is_refused(project: Path, cli: Any,
                                                           override: str) -> None:
    token = _token()
    _write(project, "job.py", SHA_SCRIPT)
    res = cli("submit", "model=script", "model.path=job.py", override.format(value=token))
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    assert "looks like a secret" in res.stderr and "${oc.env:" in res.stderr
    _assert_nowhere(project, token, res)


def test_a_reference_nested_in_a_dict_override_travels_as_a_reference(project: Path,
                                                                       cli: Any) -> None:
    token = _token()
    _write(project, "job.py", SHA_SCRIPT)
    res = cli("submit", "model=script", "model.path=job.py",
              f"+data.auth={{token: ${{oc.env:{VAR}}}, user: me}}", env={VAR: token})
    assert res.returncode == 0, res.stderr
    assert f"sha {_sha(token)}" in res.stdout
    _assert_nowhere(project, token, res, *_show_and_logs(cli, project))


# -- route 3: a copy by interpolation ------------------------------------------------------------
def test_a_copy_of_a_secret_by_interpolation_is_kept_as_a_reference(project: Path,
                                                                    cli: Any) -> None:
    token = _token()
    _write(project, "job.py", SHA_SCRIPT + "print('again', os.environ['MY_TOKEN'], flush=True)\n")
    res = cli("submit", "model=script", "model.path=job.py",
              f"+data.api_token=${{oc.env:{VAR}}}", "+data.copy=${data.api_token}",
              "+data.header=Bearer ${data.api_token}", env={VAR: token})
    assert res.returncode == 0, res.stderr
    assert f"sha {_sha(token)}" in res.stdout and f"again {MASK}" in res.stdout
    _assert_nowhere(project, token, res, *_show_and_logs(cli, project))
    run_dir = next((project / ".runner" / "runs").iterdir())
    assert f"${{oc.env:{VAR}}}" in (run_dir / "config.yaml").read_text()


# -- route 4: a literal secret in the project's own YAML -----------------------------------------
def test_a_literal_secret_in_project_yaml_is_refused(project: Path, cli: Any) -> None:
    _write(project, "job.py", SHA_SCRIPT)
    _write(project, "conf/data/mine.yaml", "name: mine\napi_token: abc123secret\n")
    res = cli("submit", "model=script", "model.path=job.py", "data=mine")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    assert "mine.yaml" in res.stderr and "data.api_token" in res.stderr
    assert "${oc.env:" in res.stderr
    assert "abc123secret" not in res.stderr + res.stdout
    assert not any(b"abc123secret" in p.read_bytes()
                   for p in (project / ".runner").rglob("*") if p.is_file())
    # the same file referencing the environment runs, and the value stays out of the ledger
    token = _token()
    _write(project, "conf/data/mine.yaml", f"name: mine\napi_token: ${{oc.env:{VAR}}}\n")
    res = cli("submit", "model=script", "model.path=job.py", "data=mine", env={VAR: token})
    assert res.returncode == 0, res.stderr
    assert f"sha {_sha(token)}" in res.stdout
    _assert_nowhere(project, token, res, *_show_and_logs(cli, project))


def test_ordinary_keys_that_mention_tokens_are_not_secrets(project: Path, cli: Any) -> None:
    _write(project, "job.py", "print('ok')\n")
    _write(project, "conf/data/mine.yaml", "name: mine\ntokenizer: bert\nmax_tokens: 512\n")
    res = cli("submit", "model=script", "model.path=job.py", "data=mine", "+data.num_tokens=3")
    assert res.returncode == 0, res.stderr


# -- route 5: a reference under a key that is not secret-looking ---------------------------------
def test_a_reference_under_any_key_travels_as_a_reference_and_is_masked(project: Path,
                                                                        cli: Any) -> None:
    token = _token()
    _write(project, "job.py", SHA_SCRIPT + "print('argv', sys.argv[1:], flush=True)\n")
    res = cli("submit", "model=script", "model.path=job.py",
              f"model.args=[--token,${{oc.env:{VAR}}}]", env={VAR: token})
    assert res.returncode == 0, res.stderr
    assert f"sha {_sha(token)}" in res.stdout
    assert f"argv ['--token', '{MASK}']" in res.stdout
    run_dir = next((project / ".runner" / "runs").iterdir())
    request = (run_dir / "request.json").read_text()
    assert f"${{oc.env:{VAR}}}" in request and f'"{VAR}"' in request  # joins secret_env
    _assert_nowhere(project, token, res, *_show_and_logs(cli, project))


# -- route 6: the composed config printed resolved -----------------------------------------------
def test_masked_stdout_masks_values_the_environment_resolver_returns(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from omegaconf import OmegaConf

    token = _token()
    monkeypatch.setenv(VAR, token)
    cfg = OmegaConf.create({"data": {"api_token": f"${{oc.env:{VAR}}}", "copy": "${data.api_token}"},
                            "model": {"args": ["--token", f"${{oc.env:{VAR}}}"]}})
    with masked_stdout():
        resolved = OmegaConf.to_container(cfg, resolve=True)
        sys.stdout.write(OmegaConf.to_yaml(cfg, resolve=True))
    assert resolved["data"]["copy"] == token  # type: ignore[index]
    out = capsys.readouterr().out
    assert token not in out and out.count(MASK) == 3
    assert OmegaConf.create({"x": f"${{oc.env:{VAR}}}"}).x == token  # the resolver is restored


def test_cfg_job_resolve_masks_secret_values(project: Path, cli: Any) -> None:
    token = _token()
    res = cli("submit", "--cfg", "job", "--resolve", f"+data.api_token=${{oc.env:{VAR}}}",
              "model=script", f"model.args=[--token,${{oc.env:{VAR}}}]", env={VAR: token})
    assert res.returncode == 0, res.stderr
    assert MASK in res.stdout
    assert token not in res.stdout + res.stderr


# -- the pieces, in process ----------------------------------------------------------------------
@pytest.mark.parametrize(("override", "refused"), [
    ("target.password=hunter2", True),
    ("+data.auth={token: hunter2}", True),
    ("+data.auth={a: {b: [{secret: hunter2}]}}", True),
    ("+data.max_tokens=[512]", False),
    ("+data.api_tokens=[hunter2]", True),
    ("+data.auth={token: '${oc.env:X}'}", False),
    ("+data.auth={token: ${oc.env:X}}", False),
    ("+data.auth={token: null}", False),
    ("+data.x=ghp_" + "A" * 30, True),
    ("+data.x=[ok, ghp_" + "A" * 30 + "]", True),
    ("-m", False),
    ("model.lr=0.1,0.2", False),
    ("+data.password=a,b", True),
    ("target.password=hunter2[", True),
])
def test_check_overrides_looks_at_every_depth(override: str, refused: bool) -> None:
    if refused:
        with pytest.raises(UserError) as e:
            check_overrides([override])
        assert "hunter2" not in e.value.render() and "${oc.env:" in e.value.render()
    else:
        check_overrides([override])


def test_check_config_names_the_file_and_key(tmp_path: Path) -> None:
    raw = {"data": {"name": "mine", "auth": {"api_token": "abc123secret"}}, "model": {}}
    with pytest.raises(UserError) as e:
        check_config(raw, lambda key: f"conf/{key.split('.')[0]}/mine.yaml")
    text = e.value.render()
    assert "conf/data/mine.yaml" in text and "data.auth.api_token" in text
    assert "abc123secret" not in text and "${oc.env:" in text
    check_config({"data": {"api_token": "${oc.env:T}", "password": None, "secret": "???"}},
                 lambda key: "x")


def test_is_secret_key() -> None:
    for key in ("password", "data.api_token", "hf_token", "authToken", "API_KEY", "token",
                "client_secret", "ssh.passphrase", "access_tokens"):
        assert is_secret_key(key), key
    for key in ("tokenizer", "max_tokens", "num_tokens", "model.tokens_per_batch", "lr", "path"):
        assert not is_secret_key(key), key


def test_references_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("A_SECRET", "sesame-open")
    monkeypatch.setenv("SHORT", "ab")
    raw: dict[str, Any] = {"a": "${oc.env:A_SECRET}", "b": "${a}", "c": ["x", "Bearer ${a}"],
                           "d": "${oc.env:SHORT}", "e": 3, "f": "${oc.env:UNSET,fallback}"}
    resolved = {"a": "sesame-open", "b": "sesame-open", "c": ["x", "Bearer sesame-open"],
                "d": "ab", "e": 3, "f": "fallback"}
    kept = keep_references(raw, resolved, os.environ)
    assert kept == {"a": "${oc.env:A_SECRET}", "b": "${oc.env:A_SECRET}",
                    "c": ["x", "Bearer ${oc.env:A_SECRET}"], "d": "${oc.env:SHORT}", "e": 3,
                    "f": "${oc.env:UNSET,fallback}"}
    assert resolve_refs(kept, os.environ) == resolved
    assert env_refs(kept) == {"A_SECRET", "SHORT", "UNSET"}
    assert to_references({"k": ["/p/sesame-open/q"]}, {"A_SECRET": "sesame-open"}) == {
        "k": ["/p/${oc.env:A_SECRET}/q"]}
    # the machine's own variables resolve on the client and never join the secrets
    raw = {"p": "${oc.env:HOME}/data", "q": "${oc.env:HOME}/${oc.env:A_SECRET}"}
    home = os.environ["HOME"]
    kept = keep_references(raw, {"p": f"{home}/data", "q": f"{home}/sesame-open"}, os.environ)
    assert kept == {"p": f"{home}/data", "q": f"{home}/${{oc.env:A_SECRET}}"}
    assert env_refs(raw) == {"A_SECRET"}


def test_stream_masker_holds_only_what_may_begin_a_secret() -> None:
    m = StreamMasker(["abcdefgh", "zzzz"])
    assert m.feed(b"x abc") == b""  # no newline yet
    assert m.partial() == b"x "  # quiet: the partial line, less what may begin a secret
    assert m.feed(b"def") == b""
    assert m.partial() == b""
    assert m.feed(b"gh y\n") == MASK.encode() + b" y\n"
    assert m.feed(b"progress 10%") == b"" and m.partial() == b"progress 10%"
    assert m.feed(b"zz") == b"" and m.partial() == b""
    assert m.feed(b"zz\nabc") == MASK.encode() + b"\n"
    assert m.close() == b"abc"


def test_stream_masker_through_a_pipe_with_split_writes() -> None:
    out = io.BytesIO()
    m = StreamMasker(["s3cr3t-value"])
    for chunk in (b"a s3c", b"r3t-v", b"alue b\nnext s3cr3t", b"-value\n"):
        out.write(m.feed(chunk))
        out.write(m.partial())
    out.write(m.close())
    assert out.getvalue() == f"a {MASK} b\nnext {MASK}\n".encode()
