"""Views of the ledger: the runs table, one run in full, runs side by side, a sweep's jobs.

Shared by the CLI and :mod:`runner.sweep`. rich is imported inside the functions that draw,
so importing this module costs nothing at start-up.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from runner.backend import RunState
    from runner.launch import Runs
    from runner.store import RunRecord

#: how a state is coloured wherever it is shown (SKIPPED: a sweep job whose key had succeeded)
STATE_STYLE = {"SUCCEEDED": "green", "FAILED": "red", "LOST": "magenta", "CANCELLED": "yellow",
               "RUNNING": "cyan", "PREPARING": "cyan", "QUEUED": "dim", "SKIPPED": "green"}

#: the metrics shown first, when a run logged them
KEY_METRICS = ("test_accuracy", "val_accuracy", "accuracy", "val_loss", "loss")


# -- formatting ---------------------------------------------------------------------------------

def fmt(v: Any) -> str:
    """A value as a table cell: floats to 4 significant digits."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def age(t: float) -> str:
    """How long ago the epoch time ``t`` was: ``3m ago``."""
    d = max(0.0, time.time() - t)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= n:
            return f"{int(d // n)}{unit} ago"
    return f"{int(d)}s ago"


def key_metrics(summary: dict[str, float], objective: str | None = None, n: int = 3) -> str:
    """The ``n`` most telling final metrics as ``name=value``: the objective, then
    :data:`KEY_METRICS`, then the others by name."""
    preferred = ((objective,) if objective else ()) + KEY_METRICS
    names = [k for k in dict.fromkeys(preferred) if k in summary]
    names += sorted(k for k in summary if k not in names)
    return "  ".join(f"{k}={fmt(summary[k])}" for k in names[:n])


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"a.b.c": value}``."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


def compact(v: Any) -> str:
    """A recorded fact on one line: dicts as ``key value, ...`` (empty values as "none")."""
    if isinstance(v, dict):
        return ", ".join(f"{k} {compact(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "[" + "; ".join(compact(x) for x in v) + "]" if v else "none"
    return str(v)


def console(*, stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr); piped output (a file, grep, a test) is not cut
    to 80 columns."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, soft_wrap=False,
                   width=None if stream.isatty() else 240)


def _state(state: str) -> str:
    return f"[{STATE_STYLE.get(state, '')}]{state}[/]"


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the ledger ---------------------------------------------------------------------------------

def runs_table(runs: Runs, *, limit: int | None, states: tuple[RunState, ...] = (),
               sweep_id: str | None = None) -> int:
    """``runner runs``: the newest runs (``limit``; None = all) with state, target, model, key
    metrics and age; says how many more there are."""
    from rich.table import Table

    from runner.rundir import RunDir

    records = runs.store.list(limit=limit + 1 if limit else None, states=states, sweep_id=sweep_id)
    if not records:
        if sweep_id and runs.store.sweep(sweep_id) is None:
            from runner.errors import UserError

            recent = [r.sweep_id for r in runs.store.list(limit=200) if r.sweep_id]
            raise UserError(f"no sweep '{sweep_id}' in the ledger at {runs.store.home}.",
                            f"recent sweeps: {', '.join(dict.fromkeys(recent[:5]))}" if recent
                            else "no sweeps yet: `runner submit -m key=a,b` starts one.")
        _note("no runs match: `runner runs` lists them all." if states or sweep_id
              else "no runs yet: `runner submit` starts one.")
        return 0
    total = None
    if limit and len(records) > limit:
        records = records[:limit]
        total = len(runs.store.list(states=states, sweep_id=sweep_id))
    t = Table(box=None, pad_edge=False)
    for col in ("id", "state", "target", "model", "metrics", "age"):
        t.add_column(col, no_wrap=col != "metrics")
    for r in records:
        model = RunDir(r.run_dir).meta().get("model_description", r.model)
        how = (f" (attempt {r.attempt})" if r.attempt > 1 else " (resumed)") if r.parent else ""
        t.add_row(r.id, _state(r.state.value) + how, r.target, model, key_metrics(r.summary),
                  age(r.created))
    console().print(t)
    if total is not None:
        _note(f"showing {len(records)} of {total}; `-n 0` for all")
    return 0


def show_run(runs: Runs, ref: str) -> int:
    """``runner show RUN``: everything recorded about one run."""
    from rich.table import Table

    from runner.rundir import RunDir

    rec = runs.refresh(runs.store.resolve(ref))
    rd = RunDir(rec.run_dir)
    meta, worker = rd.meta(), rd.worker_info()
    con = console()
    con.print(f"run [bold]{rec.id}[/]  {_state(rec.state.value)}"
              + (f"  exit code {rec.exit_code}" if rec.exit_code is not None else "")
              + ("  [red]OOM-killed[/]" if rec.oom else ""))
    if rec.message:
        con.print(f"  {rec.message}", markup=False)
    t = Table(box=None, show_header=False, pad_edge=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for k, v in _facts(rec, meta, worker):
        t.add_row(k, str(v))
    for k, v in _continuation(runs, rec, rd):
        t.add_row(k, str(v))
    con.print(t)
    _metrics_table(con, rd.read_metrics())
    files, links = output_files(rd.outputs)
    if files or links:
        con.print("[bold]outputs[/]")
        for rel, size in files[:SHOWN_OUTPUTS]:
            con.print(f"  {rel}  ({size:,} bytes)", markup=False)
        if len(files) > SHOWN_OUTPUTS:
            con.print(f"  ... and {len(files) - SHOWN_OUTPUTS} more files "
                      f"({sum(s for _, s in files[SHOWN_OUTPUTS:]):,} bytes); all of them: "
                      f"runner fetch {rec.id}", markup=False)
        for rel in links[:10]:
            con.print(f"  {rel}  (a link: not followed, not fetched)", markup=False)
    return 0


def _continuation(runs: Runs, rec: RunRecord, rd: Any) -> list[tuple[str, str]]:
    """The rows about checkpoints: what the run left, and the runs that continued it."""
    from runner.checkpoint import checkpoint_size

    rows = []
    files, size = checkpoint_size(rd)
    if files:
        rows.append(("checkpoint", f"{files} files, {size:,} bytes in {rd.checkpoints}"))
    for child in runs.store.children(rec.id):
        how = f"retry, attempt {child.attempt}" if child.attempt > 1 else "resumed"
        rows.append(("continued by", f"{child.id} ({how}) {child.state.value}"))
    return rows


#: how many output files ``runner show`` lists
SHOWN_OUTPUTS = 50


def output_files(outputs: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """(``[(relative path, size)]`` of the regular files under ``outputs``, sorted; the links
    there, which are never followed: a run's outputs may point anywhere)."""
    import os
    import stat

    files: list[tuple[str, int]] = []
    links: list[str] = []
    if not outputs.is_dir() or outputs.is_symlink():
        return files, links
    for dirpath, dirnames, filenames in os.walk(outputs, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, outputs)
            if stat.S_ISLNK(st.st_mode):
                links.append(rel)
            elif stat.S_ISREG(st.st_mode):
                files.append((rel, st.st_size))
    return sorted(files), sorted(links)


def _facts(rec: RunRecord, meta: dict[str, Any], worker: dict[str, Any]) -> list[tuple[str, Any]]:
    """The rows of ``runner show``: what ran where, with which code, env, data and GPUs."""
    end = rec.finished or time.time()
    choices = meta.get("choices", {})
    rows: list[tuple[str, Any]] = [
        ("target", f"{rec.target} (backend {rec.backend})"),
        ("model", meta.get("model_description", rec.model)),
        ("env", f"{choices.get('env', '?')}  key {rec.env_key or '-'}"),
        ("data", choices.get("data", "-") if meta.get("reads_data", True) else "-"),
        *[(f"data.{d['key']}", _data_line(d, worker)) for d in meta.get("data_inputs") or []],
        ("created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.created))
         + f"  ({age(rec.created)}, ran {end - rec.created:.1f}s)"),
        ("overrides", " ".join(meta.get("overrides", [])) or "-"),
    ]
    if rec.locator:  # where the target knows it: a process group, a container, a job id
        rows.append(("locator", "  ".join(f"{k} {v}" for k, v in rec.locator.items())))
    if rec.sweep_id:
        rows.append(("sweep", rec.sweep_id))
    if rec.parent:
        how = f"retry, attempt {rec.attempt}" if rec.attempt > 1 else "resumed"
        rows.append(("continues", f"{rec.parent} ({how}: started from its checkpoint)"))
    git = meta.get("git") or {}
    if git:
        rows.append(("git", f"{git.get('commit', '')[:12]}" + (" (dirty: uncommitted diff recorded)"
                                                                if git.get("dirty") else "")))
    if worker:
        rows.append(("host", f"{worker.get('host')}  Python {worker.get('python')}"))
        rows.append(("seed", str(worker.get("seed"))))
        gpus = worker.get("gpus") or []
        rows.append(("gpus", ", ".join(f"{g['index']}: {g['name']} ({g['memory']})" for g in gpus)
                     or "none visible"))
        for k, v in (worker.get("meta") or {}).items():
            rows.append((k, v if isinstance(v, str) else compact(v)))
    rows.append(("run dir", str(rec.run_dir)))
    return rows


def _metrics_table(con: Console, records: list[dict[str, Any]]) -> None:
    """Each metric's last value, step, best value and count."""
    if not records:
        return
    from rich.table import Table

    m = Table(title="metrics", title_justify="left", box=None, pad_edge=False)
    for col in ("name", "last", "step", "best", "n"):
        m.add_column(col)
    by: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault(r["name"], []).append(r)
    for name, rs in by.items():
        vals = [r["value"] for r in rs]
        best = min(vals) if "loss" in name else max(vals)
        m.add_row(name, fmt(vals[-1]), str(rs[-1].get("step", "")), fmt(best), str(len(rs)))
    con.print(m)


def _data_line(d: dict[str, Any], worker: dict[str, Any]) -> str:
    """One recorded data input: as given, by content, and where the run read it."""
    from runner.units import size_text

    if d.get("on_target"):
        text = f"{d['given']}  (on the target, not shipped)"
    else:
        text = (f"{d['given']}  sha256 {str(d.get('digest'))[:12]}  {d.get('files')} file(s), "
                f"{size_text(float(d.get('bytes') or 0))}")
    seen = [w for w in worker.get("data") or [] if w.get("key") == d.get("key")]
    if seen:
        text += f"  read at {seen[0].get('path')}"
    return text


def compare(runs: Runs, refs: Sequence[str], sweep_id: str | None = None) -> int:
    """``runner compare``: the config keys that differ between runs (for a sweep, only the
    swept keys), side by side with their final metrics."""
    from rich.table import Table

    from runner.errors import UserError

    swept: list[str] | None = None
    if sweep_id:
        from runner.sweep import sweep_jobs, swept_keys

        jobs = [j for j in sweep_jobs(runs, sweep_id) if j.run is not None]  # newest run per job
        records = [j.run for j in jobs if j.run is not None]
        swept = swept_keys([j.overrides for j in jobs])
    else:
        if len(refs) < 2:
            raise UserError("compare needs two or more runs (or --sweep SWEEP).",
                            "e.g. runner compare 261126-1200-ab12 261126-1210-cd34")
        records = [runs.store.resolve(r) for r in refs]
    flat = [_flat_config(r) for r in records]
    keys = sorted({k for f in flat for k in f})
    differ = [k for k in keys if len({repr(f.get(k, "<unset>")) for f in flat}) > 1]
    if swept is not None:  # a sweep: only what the sweep varied (a group choice: its keys)
        differ = [k for k in differ if any(k == s or k.startswith(s + ".") for s in swept)]
    t = Table(box=None, pad_edge=False)
    t.add_column("")
    for r in records:
        t.add_column(r.id)
    t.add_row("[bold]state[/]", *[r.state.value for r in records])
    for k in differ:
        t.add_row(k, *[fmt(f.get(k, "-")) for f in flat])
    if not differ:
        t.add_row("[dim](configs identical)[/]", *["" for _ in records])
    for m in sorted({m for r in records for m in r.summary}):
        t.add_row(f"[bold]{m}[/]", *[fmt(r.summary[m]) if m in r.summary else "-" for r in records])
    console().print(t)
    return 0


def _flat_config(rec: RunRecord) -> dict[str, Any]:
    """A run's recorded config as flat keys, plus what its data was, by content."""
    import yaml

    from runner.rundir import CONFIG, RunDir

    try:
        flat = flatten(yaml.safe_load((rec.run_dir / CONFIG).read_text()) or {})
    except FileNotFoundError:
        flat = {}
    for d in RunDir(rec.run_dir).meta().get("data_inputs") or []:
        flat[f"data.{d['key']} (content)"] = str(d.get("digest"))[:12] if d.get("digest") else "on target"
    return flat


# -- sweeps -------------------------------------------------------------------------------------

def override_values(overrides: Sequence[str]) -> dict[str, str]:
    """``["model.lr=0.1", "+seed=3"]`` as ``{"model.lr": "0.1", "seed": "3"}``."""
    out = {}
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def attempt_label(run_id: str | None, attempt: int) -> str | None:
    """A run's id as a sweep's table shows it: with its attempt when it is a retry."""
    return f"{run_id} (attempt {attempt})" if run_id and attempt > 1 else run_id


#: one row of a sweep's table: job number, overrides, run id, state, final metrics, seconds
JobRow = tuple[int, list[str], str | None, str, dict[str, float], float | None]


def jobs_table(sweep_id: str, rows: Sequence[JobRow], objective: str | None,
               con: Console | None = None, *, stderr: bool = True) -> None:
    """A sweep's table: one row per job with its run, state, swept values and metrics."""
    from rich.markup import escape
    from rich.table import Table

    from runner.sweep import swept_keys

    keys = swept_keys([r[1] for r in rows])
    t = Table(title=f"sweep {sweep_id}", title_justify="left", box=None, pad_edge=False)
    for col in ("job", "run", "state", *keys, "metrics", "time"):
        t.add_column(col, no_wrap=col != "metrics")
    for num, overrides, run_id, state, summary, took in rows:
        values = override_values(overrides)
        t.add_row(str(num), run_id or "-", _state(state),
                  *[escape(values.get(k, "-")) for k in keys],
                  escape(key_metrics(summary, objective)), f"{took:.1f}s" if took is not None else "-")
    (con or console(stderr=stderr)).print(t)
