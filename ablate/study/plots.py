"""``ablate plot RESULTS_DIR``: paper-Figure-4 style comparison plots and the final table.

One panel per metric, one line per cell (the mean over its seeds, with a shaded min-max or
±std band), against training steps (``curves_step.png/.pdf``) and wall-clock time
(``curves_wall.png/.pdf``). Each cell keeps its colour in every panel and figure. Plus
``final_table.csv`` / ``final_table.md``: per cell and metric, the last and the best value.

Titles, directions (the arrow) and units come from the metric plugins' declared ``keys``
(``ablate.eval.metrics.Key``). A loss is each objective's own quantity: when the study has
several objectives it gets one panel per objective, never one ranking across them.
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ablate.config import ConfigError  # noqa: E402
from ablate.eval.metrics import Key  # noqa: E402
from ablate.study.results import (  # noqa: E402
    collect,
    describe_columns,
    final_table,
    markdown_table,
    metric_columns,
    run_configs,
)
from ablate.train import writable_dir  # noqa: E402

log = logging.getLogger("ablate.plot")

DEFAULT_METRICS = ["fid/overall", "geneval/overall", "dpg/overall", "diversity/*", "train/loss"]
X_LABELS = {"step": "training step"}


def select_metrics(frame: pd.DataFrame, patterns: list[str] | None) -> list[str]:
    """Columns matching the patterns (globs), in pattern order; absent ones are skipped."""
    available = [c for c in metric_columns(frame) if frame[c].notna().any()]
    chosen = []
    for pattern in patterns or DEFAULT_METRICS:
        hits = [c for c in available if fnmatch.fnmatchcase(c, pattern) and c not in chosen]
        if not hits:
            log.info("no %s in these runs: skipped", pattern)
        chosen += hits
    if not chosen:
        raise ConfigError(f"none of the metrics {patterns or DEFAULT_METRICS} was logged; "
                          f"available: {available}")
    return chosen


def cell_colours(cells: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(cells) <= 10 else "tab20")
    return {cell: cmap(i % cmap.N) for i, cell in enumerate(cells)}


def _wall_unit(seconds: float) -> tuple[float, str]:
    if seconds >= 2 * 3600:
        return 3600.0, "h"
    return (60.0, "min") if seconds >= 120 else (1.0, "s")


def cell_curve(runs: pd.DataFrame, metric: str, smooth: float) -> pd.DataFrame:
    """One cell: per step, the mean / min / max / std of ``metric`` over its runs (seeds) and
    the mean wall time; training curves smoothed per run (EMA, as TensorBoard does)."""
    values = runs.pivot_table(index="step", columns="run", values=metric, aggfunc="first")
    if metric.startswith("train/") and smooth > 0:
        values = values.ewm(alpha=1 - smooth, ignore_na=True).mean().where(values.notna())
    curve = pd.DataFrame({"mean": values.mean(axis=1), "min": values.min(axis=1),
                          "max": values.max(axis=1), "std": values.std(axis=1).fillna(0)})
    if "time/wall" in runs:
        wall = runs.pivot_table(index="step", columns="run", values="time/wall", aggfunc="first")
        curve["wall"] = wall.mean(axis=1).reindex(curve.index)
    return curve.dropna(subset=["mean"]).reset_index()


def panels(frame: pd.DataFrame, metrics: list[str], keys: dict[str, Key],
           objectives: dict[str, str]) -> list[tuple[str, str | None]]:
    """(metric, objective or None) per panel: a metric not comparable across objectives gets
    one panel per objective when the runs have several."""
    present = list(dict.fromkeys(frame["run"].map(objectives).dropna()))
    out = []
    for m in metrics:
        apart = not keys[m].comparable_across_objectives and len(present) > 1
        out += [(m, o) for o in present] if apart else [(m, None)]
    return out


def draw(frame: pd.DataFrame, metrics: list[str], x: str, colours: dict, band: str = "minmax",
         smooth: float = 0.6, keys: dict[str, Key] | None = None, objectives: dict[str, str] | None = None):
    """The figure: one panel per metric (per objective for losses), one line per cell."""
    keys = keys or describe_columns(metrics)
    layout = panels(frame, metrics, keys, objectives or {})
    ncols = min(3, len(layout))
    nrows = -(-len(layout) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), squeeze=False,
                             layout="constrained")
    scale, unit = _wall_unit(frame["time/wall"].max()) if x == "wall" else (1.0, "")
    handles = {}
    for ax, (metric, objective) in zip(axes.flat, layout):
        shown = frame if objective is None else frame[frame["run"].map(objectives) == objective]
        for cell, runs in shown.groupby("cell", sort=False):
            curve = cell_curve(runs, metric, smooth)
            xs = curve["step"] if x == "step" else curve["wall"] / scale
            if curve.empty or xs.isna().all():
                continue
            sparse = len(curve) <= 30  # eval points: show the markers
            (line,) = ax.plot(xs, curve["mean"], color=colours[cell], lw=1.6,
                              marker="o" if sparse else None, ms=3.5, label=cell)
            handles[cell] = line
            if runs["run"].nunique() > 1 and band != "none":
                lo, hi = ((curve["min"], curve["max"]) if band == "minmax" else
                          (curve["mean"] - curve["std"], curve["mean"] + curve["std"]))
                ax.fill_between(xs, lo, hi, color=colours[cell], alpha=0.18, lw=0)
        key = keys[metric]
        arrow = {True: " ↑", False: " ↓"}.get(key.higher_is_better, "")
        ax.set_title(key.title + (f" · {objective}" if objective else "") + arrow, fontsize=11)
        ax.set_ylabel(key.unit or metric)
        ax.set_xlabel(X_LABELS.get(x, f"wall-clock time ({unit})"))
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useMathText=True)
    for ax in list(axes.flat)[len(layout):]:
        ax.set_visible(False)
    seeded = frame.groupby("cell")["run"].nunique().max() > 1
    spread = {"minmax": "band: min-max over seeds", "std": "band: ±1 std over seeds"}.get(band, "")
    spread = spread if seeded else ""
    fig.legend(handles.values(), handles.keys(), loc="outside lower center",
               ncol=min(len(handles), 4), frameon=False, title=spread or None)
    return fig


def plot(results_dir: str | Path, metrics: list[str] | None = None, xs=("step", "wall"),
         band: str = "minmax", smooth: float = 0.6) -> dict[str, Path]:
    """Figures and the final table from every run under ``results_dir`` (one study)."""
    results_dir = Path(results_dir)
    if band not in ("minmax", "std", "none"):
        raise ConfigError(f"--band {band!r}: choose minmax, std or none")
    if not 0 <= smooth < 1:
        raise ConfigError(f"--smooth {smooth}: expected 0 (none) <= smooth < 1")
    if results_dir.is_dir():  # a read-only study folder: say so before any work
        writable_dir(results_dir, "plots and tables")
    frame = collect(results_dir)
    chosen = select_metrics(frame, metrics)
    configs = run_configs(results_dir)
    keys = describe_columns(chosen, configs.values())
    objectives = {run: _objective_name(c) for run, c in configs.items()}
    colours = cell_colours(list(dict.fromkeys(frame["cell"])))
    out = {"summary": results_dir / "summary.csv"}
    for x in xs:
        if x == "wall" and ("time/wall" not in frame or frame["time/wall"].isna().all()):
            log.info("no time/wall column: skipped the wall-clock figure")
            continue
        fig = draw(frame, chosen, x, colours, band, smooth, keys, objectives)
        for ext in ("png", "pdf"):
            out[f"{x}.{ext}"] = results_dir / f"curves_{x}.{ext}"
            fig.savefig(out[f"{x}.{ext}"], dpi=200)
        plt.close(fig)
    table = final_table(frame, chosen, keys)
    table.to_csv(results_dir / "final_table.csv", index=False)
    (results_dir / "final_table.md").write_text(markdown_table(table, keys))
    out.update(table=results_dir / "final_table.csv", markdown=results_dir / "final_table.md")
    return out


def _objective_name(config: dict) -> str | None:
    spec = config.get("objective")
    return spec.get("name") if isinstance(spec, dict) else spec
