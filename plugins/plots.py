"""``runner plot``: runs as pictures (PNG files).

- ``runner plot RUN...`` (or ``--sweep S`` without ``--x``) overlays the runs' learning
  curves: one panel per metric, one line per run, against the logged step.
- ``runner plot --sweep S --x KEY --y METRIC`` draws a sweep: each run's final ``METRIC``
  against the value it had for the swept ``KEY``, one series per value of the other swept keys.

matplotlib is an optional extra (``pip install 'runner[plot]'``), imported only here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import hookimpl
from runner.backend import Command
from runner.errors import UserError

if TYPE_CHECKING:
    from runner.recorded import RecordedRun

#: panels per row of a learning-curves figure
COLUMNS = 3


def _pyplot() -> Any:
    try:
        import matplotlib  # the optional extra: only a plot pays for importing it
    except ImportError:
        raise UserError("matplotlib is not installed: pip install 'runner[plot]'") from None
    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def _number(text: str) -> float | None:
    """The number ``text`` holds (also as a one-element list, ``[0.01]``: a swept script
    argument), or None."""
    if text.startswith("[") and text.endswith("]") and "," not in text:
        text = text[1:-1]
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _order(text: str) -> tuple[int, float, str]:
    """Sort key: numbers by value (also inside brackets: ``[8]`` before ``[16]``), then text."""
    value = _number(text)
    return (0, value, text) if value is not None else (1, 0.0, text)


def _metrics_error(metric: str, runs: Sequence[RecordedRun], where: str) -> UserError:
    logged = sorted({n for r in runs for n in r.metric_names()})
    return UserError(f"no run of {where} logged a metric '{metric}'.",
                     f"logged: {', '.join(logged)}" if logged else "these runs logged no metrics.",
                     "pick one with --y METRIC.")


# -- learning curves ------------------------------------------------------------------------------

def curves(runs: Sequence[RecordedRun], metrics: Sequence[str], out: Path, title: str
           ) -> tuple[Path, list[str]]:
    """One panel per metric, one line per run (a bar per run for a metric logged once);
    returns the file written and the metrics left out (logged once, not asked for)."""
    from runner.recorded import label, swept_values

    logged = list(dict.fromkeys(n for r in runs for n in r.metric_names()))
    for m in metrics:
        if m not in logged:
            raise _metrics_error(m, runs, "these runs" if len(runs) > 1 else f"run {runs[0].id}")
    if not logged:
        raise UserError("these runs logged no metrics: there is nothing to plot."
                        if len(runs) > 1 else f"run {runs[0].id} logged no metrics: there is "
                        "nothing to plot.", "`runner show RUN` shows what a run recorded.")
    # by default, the metrics that have a curve (more than one value in some run)
    names = list(metrics) or [m for m in logged if any(len(r.series(m)) > 1 for r in runs)] or logged
    plt = _pyplot()
    from matplotlib import ticker

    cols = min(COLUMNS, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    labels = [label(r, v) for r, v in zip(runs, swept_values(runs), strict=True)]
    for ax, name in zip(axes.flat, names, strict=False):
        if all(len(r.series(name)) <= 1 for r in runs):  # one value per run: a bar per run
            have = [(i, r.series(name)) for i, r in enumerate(runs) if r.series(name)]
            ax.bar([labels[i] for i, _ in have], [p[-1][1] for _, p in have],
                   color=[f"C{i}" for i, _ in have], label=[labels[i] for i, _ in have])
            ax.set_xticks(range(len(have)), [runs[i].id[-4:] for i, _ in have])
            ax.set_title(f"{name} (one value per run)")
            ax.set_xlabel("run (last 4 characters of its id)")
            ax.set_ylabel(name)
            ax.grid(True, axis="y", alpha=0.3)
            continue
        for i, (run, text) in enumerate(zip(runs, labels, strict=True)):
            points = run.series(name)
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3.5,
                        linewidth=1.6, label=text, color=f"C{i % 10}")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))  # steps are whole numbers
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    handles, texts = axes.flat[0].get_legend_handles_labels()
    for ax in list(axes.flat)[1:len(names)]:  # runs missing from the first panel
        for h, t in zip(*ax.get_legend_handles_labels(), strict=True):
            if t not in texts:
                handles.append(h)
                texts.append(t)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    # below the panels, whatever the number of runs (the saved picture grows to hold it)
    fig.legend(handles, texts, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=max(1, min(cols, len(texts))), fontsize=9, frameon=False)
    return _save(plt, fig, out), [m for m in logged if m not in names]


def _save(plt: Any, fig: Any, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


# -- a sweep: metric against a swept key ----------------------------------------------------------

def sweep_plot(sweep_id: str, jobs: Sequence[tuple[dict[str, str], RecordedRun]], keys: Sequence[str],
               x: str, metric: str, out: Path) -> tuple[Path, list[str]]:
    """``metric``'s final value of each run against its value of the swept key ``x``, one
    series per combination of the other swept keys; returns the file written and the runs
    left out (they logged no ``metric``: failed, or still going)."""
    if x not in keys:
        raise UserError(f"'{x}' is not a key that sweep {sweep_id} varied.",
                        f"swept keys: {', '.join(keys)}" if keys else "the sweep varied no key.",
                        "pick one with --x KEY.")
    runs = [r for _, r in jobs]
    have = [(v, r) for v, r in jobs if metric in r.metric_names()]
    if not have:
        raise _metrics_error(metric, runs, f"sweep {sweep_id}")
    others = [k for k in keys if k != x]
    numeric = all(_number(v[x]) is not None for v, _ in have)
    categories = list(dict.fromkeys(v[x] for v, _ in have))
    if not numeric:
        categories.sort(key=_order)
    series: dict[tuple[str, ...], list[tuple[float, float]]] = {}
    for values, run in have:
        pos = _number(values[x]) if numeric else float(categories.index(values[x]))
        assert pos is not None
        series.setdefault(tuple(values.get(k, "-") for k in others), []).append(
            (pos, run.series(metric)[-1][1]))
    plt = _pyplot()
    from matplotlib import ticker

    fig, ax = plt.subplots(figsize=(8, 5.2))
    for group, points in sorted(series.items(), key=lambda kv: [_order(v) for v in kv[0]]):
        points.sort()
        text = (group[0] if len(others) == 1 else
                ", ".join(f"{k}={v}" for k, v in zip(others, group, strict=True)) or metric)
        by_x: dict[float, list[float]] = {}
        for px, py in points:
            by_x.setdefault(px, []).append(py)
        xs = sorted(by_x)
        line = ax.plot(xs, [sum(by_x[v]) / len(by_x[v]) for v in xs], marker="o", linewidth=1.8,
                       label=text)[0]
        if any(len(v) > 1 for v in by_x.values()):  # repeats: every run as a dot, the mean as the line
            ax.scatter([p[0] for p in points], [p[1] for p in points], color=line.get_color(),
                       alpha=0.45, s=18)
    positive = [p[0] for ps in series.values() for p in ps if p[0] > 0]
    if numeric and positive and len(positive) == sum(len(ps) for ps in series.values()) \
            and max(positive) / min(positive) >= 100:
        ax.set_xscale("log")  # e.g. learning rates 1e-4 ... 1e-1
    if not numeric:
        ax.set_xticks(range(len(categories)), categories, rotation=20 if len(categories) > 5 else 0)
    elif len(categories) <= 12:
        ticks = sorted(categories, key=_order)  # the swept values themselves, not 1.5, 2.5
        ax.set_xticks([_number(c) for c in ticks], ticks)
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())  # a log axis: no labels between
    ax.set_xlabel(x)
    ax.set_ylabel(f"{metric} (final)")
    ax.set_title(f"{metric} against {x}: sweep {sweep_id} ({len(have)} runs)")
    ax.grid(True, alpha=0.3)
    if others:
        ax.legend(title=", ".join(others), fontsize=9, title_fontsize=9)
    fig.tight_layout()
    return _save(plt, fig, out), [r.id for _, r in jobs if metric not in r.metric_names()]


# -- the command ----------------------------------------------------------------------------------

def _arguments(p: Any) -> None:
    p.add_argument("runs", nargs="*", metavar="RUN", help="runs whose learning curves to overlay")
    p.add_argument("--sweep", metavar="SWEEP", help="a sweep's runs (with --x: the sweep as a curve)")
    p.add_argument("--x", metavar="KEY", help="with --sweep: the swept key on the x axis")
    p.add_argument("--y", metavar="METRIC", action="append", default=[],
                   help="the metric(s) to draw (repeatable; default: every metric)")
    p.add_argument("-o", "--output", metavar="FILE.png", type=Path,
                   help="where to write the picture (default: plot-....png here)")


def _plot(args: Any) -> int:
    from runner.recorded import read_run, select

    ctx = args.context
    runs = ctx.runs
    metrics = [m for y in args.y for m in y.split(",") if m]
    if args.x and not args.sweep:
        raise UserError("--x KEY draws a sweep: give it with --sweep SWEEP.",
                        "e.g. runner plot --sweep s261126-1200-ab12 --x model.lr --y val_accuracy")
    if args.x:
        if len(metrics) != 1:
            raise UserError("a sweep plot draws one metric: give --y METRIC once.",
                            f"e.g. runner plot --sweep {args.sweep} --x {args.x} --y val_accuracy")
        from runner.sweep import sweep_jobs, swept_keys

        jobs = [j for j in sweep_jobs(runs, args.sweep) if j.run is not None]
        keys = swept_keys([j.overrides for j in jobs])
        from runner.views import override_values

        pairs = [(override_values(j.overrides), read_run(j.run)) for j in jobs if j.run is not None]
        out = args.output or Path(f"plot-{args.sweep}-{metrics[0]}-vs-{args.x}.png")
        path, missing = sweep_plot(args.sweep, pairs, keys, args.x, metrics[0], out)
        if missing:
            ctx.note(f"left out (no {metrics[0]} logged): {', '.join(missing)}")
    else:
        records = select(runs, args.runs, sweep=args.sweep, command="runner plot")
        recorded = [read_run(r) for r in records]
        what = f"sweep {args.sweep}" if args.sweep else (
            f"run {records[0].id}" if len(records) == 1 else f"{len(records)} runs")
        out = args.output or Path(f"plot-{args.sweep or records[0].id}-curves.png")
        path, left = curves(recorded, metrics, out, f"learning curves: {what}")
        if left:
            ctx.note(f"not drawn (one value per run): {', '.join(left)}; --y NAME draws one")
    ctx.say(f"wrote {path}")
    return 0


@hookimpl
def runner_register_commands(register: Any) -> None:
    register(Command(name="plot", help="draw runs as PNG: learning curves (RUN...) or a sweep "
                                       "(--sweep S --x KEY --y METRIC)",
                     add_arguments=_arguments, run=_plot))
