"""A study's runs as one pandas table: ``results/<study>/summary.csv``.

One row per run and logged step. Identity columns first (study, run, cell, seed, state,
then the cell's axis values from its ``meta``), then ``step``, ``time/wall`` and every metric
column of the runs' ``metrics.csv``. A step that logged training and evaluation in separate
rows becomes one row; metrics not computed at a step are NaN.

Which way a metric is better, its title and unit come from the metric plugin's own ``keys``
(``ablate.eval.metrics.Key``), read with the run's metric config; the columns the harness
logs itself (losses, times, errors) are declared here.
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path

import pandas as pd
import yaml

from ablate.eval.metrics import Key, fill
from ablate.train import read_status

log = logging.getLogger("ablate.results")

ID_COLUMNS = ["study", "run", "cell", "seed", "state"]
# What the harness logs itself; metric plugins declare their own keys.
HARNESS_KEYS = (
    Key("train/loss", "training loss (smoothed)", False, comparable_across_objectives=False),
    Key("train/*", "{key}", None, comparable_across_objectives=False),  # the objective's extras
    Key("time/*", "{key}", False, unit="s"),
    Key("eval/error/*", "evaluation errors: {name}", False),
)


def run_configs(results_dir: str | Path) -> dict[str, dict]:
    """Each run's recorded config.yaml, by run name."""
    out = {}
    for path in sorted(Path(results_dir).glob("*/config.yaml")):
        out[path.parent.name] = yaml.safe_load(path.read_text()) or {}
    return out


def _declared_metrics(configs) -> list[tuple[type, object]]:
    """(metric class, its config) for every metric the runs configured, then every
    registered metric with its defaults (for ``ablate eval --metrics`` of unconfigured ones)."""
    from ablate.registry import get_registry

    registry, out, seen = get_registry("metric"), [], set()
    specs = [m for c in configs for m in ((c.get("eval") or {}).get("metrics") or [])]
    for spec in specs + [{"name": name} for name in registry.names()]:
        spec = {"name": spec} if isinstance(spec, str) else {k: v for k, v in spec.items() if k != "label"}
        if yaml.safe_dump(spec) in seen:
            continue
        seen.add(yaml.safe_dump(spec))
        try:
            out.append(registry.config(spec, "eval.metrics"))
        except Exception as exn:  # noqa: BLE001 - an unimportable plugin: its columns stay undeclared
            try:
                out.append((registry.get(spec["name"]), None))
            except Exception:  # noqa: BLE001
                log.info("metric %s: %s (its columns read as undeclared)", spec.get("name"), exn)
    return out


def describe_columns(columns, configs=()) -> dict[str, Key]:
    """The ``Key`` (title, direction, unit) of each column; undeclared ones get a plain one."""
    metrics = [(cls, cfg) for cls, cfg in _declared_metrics(list(configs)) if hasattr(cls, "describe")]
    out = {}
    for column in columns:
        found = next(filter(None, (cls.describe(column, cfg) for cls, cfg in metrics)), None)
        if found is None:
            found = next((fill(k, column) for k in HARNESS_KEYS if fnmatch.fnmatchcase(column, k.pattern)),
                         None)
        out[column] = found or Key(column, column, None)
    return out


def better(key: Key) -> str:
    return {True: "higher", False: "lower"}.get(key.higher_is_better, "higher (undeclared)")


def run_dirs(results_dir: str | Path) -> list[Path]:
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"{results_dir}: no such results folder")
    runs = sorted(p.parent for p in results_dir.glob("*/metrics.csv"))
    if not runs:
        raise FileNotFoundError(f"{results_dir}: no runs found (expected {results_dir}/<run>/"
                                "metrics.csv; run `ablate grid` or `ablate sweep` first)")
    return runs


def read_run(run_dir: Path) -> pd.DataFrame | None:
    """A run's rows, or None (with a warning) when its metrics.csv holds none."""
    try:
        metrics = pd.read_csv(run_dir / "metrics.csv")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        log.warning("%s/metrics.csv: unreadable (%s); run left out", run_dir, err)
        return None
    if metrics.empty or "step" not in metrics:
        log.warning("%s/metrics.csv: no rows yet; run left out", run_dir)
        return None
    # first() takes each column's first non-NaN value: the train and eval rows of a step merge.
    metrics = metrics.groupby("step", as_index=False, sort=True).first()
    if "time/wall" in metrics:  # an eval row after the last train step has no wall time yet
        metrics["time/wall"] = metrics["time/wall"].ffill()
    config_path = run_dir / "config.yaml"
    try:
        config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    except yaml.YAMLError as err:
        log.warning("%s: unreadable (%s)", config_path, err)
        config = {}
    config = config if isinstance(config, dict) else {}
    meta = config.get("meta") or {}
    ids = {"study": config.get("study", run_dir.parent.name), "run": run_dir.name,
           "cell": meta.get("cell", run_dir.name), "seed": config.get("seed"),
           "state": read_status(run_dir).get("state", "unknown")}
    axes = {k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
            for k, v in (meta.get("axes") or {}).items() if k not in ids}
    frame = pd.concat([pd.DataFrame([{**ids, **axes}] * len(metrics)), metrics], axis=1)
    frame.attrs["axes"] = list(axes)
    return frame


def run_order(results_dir: Path) -> list[str]:
    """Run names in the study's own order (study.yaml), so tables and colours follow it."""
    path = Path(results_dir) / "study.yaml"
    if not path.is_file():
        return []
    return [r["name"] for r in (yaml.safe_load(path.read_text()) or {}).get("runs", [])]


def collect(results_dir: str | Path, write: bool = True) -> pd.DataFrame:
    """Every run under ``results_dir`` (one study folder) as one table; writes summary.csv."""
    results_dir = Path(results_dir)
    runs = [r for r in (read_run(d) for d in run_dirs(results_dir)) if r is not None]
    if not runs:
        raise FileNotFoundError(f"{results_dir}: no run has logged metrics yet (every metrics.csv "
                                "is empty or unreadable)")
    frame = pd.concat(runs, ignore_index=True)
    # Column order is what tells measurements apart later: ids, axes, step, then metrics.
    axes = list(dict.fromkeys(a for r in runs for a in r.attrs["axes"]))
    first = ID_COLUMNS + axes + ["step"] + (["time/wall"] if "time/wall" in frame else [])
    frame = frame[first + [c for c in frame.columns if c not in first]]
    order = {name: i for i, name in enumerate(run_order(results_dir))}
    frame["_order"] = frame["run"].map(order).fillna(len(order))
    frame = frame.sort_values(["_order", "run", "step"], kind="stable").drop(columns="_order")
    frame = frame.reset_index(drop=True)
    if write:
        frame.to_csv(results_dir / "summary.csv", index=False)
    return frame


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Numeric columns that are measurements: those after ``step`` (see ``collect``) except
    the wall time and Lightning's epoch counter."""
    after = list(frame.columns)[list(frame.columns).index("step") + 1:]
    return [c for c in after if c not in ("time/wall", "epoch")
            and pd.api.types.is_numeric_dtype(frame[c])]


def final_table(frame: pd.DataFrame, metrics: list[str], keys: dict[str, Key] | None = None) -> pd.DataFrame:
    """Per cell and metric: the last and the best value (by the metric's declared direction;
    max when undeclared), each the mean over the cell's seeds, with their std and the number
    of seeds."""
    keys = keys or describe_columns(metrics)
    long = (frame.melt(id_vars=["cell", "run", "step"], value_vars=metrics, var_name="metric")
            .dropna(subset=["value"]).sort_values("step", kind="stable"))
    per_run = long.groupby(["cell", "run", "metric"], sort=False).agg(
        last=("value", "last"), last_step=("step", "last"), low=("value", "min"),
        high=("value", "max")).reset_index()
    lower = per_run["metric"].map(lambda m: keys[m].higher_is_better is False)
    per_run["best"] = per_run["low"].where(lower, per_run["high"])
    table = per_run.groupby(["cell", "metric"], sort=False).agg(
        last=("last", "mean"), last_std=("last", "std"), best=("best", "mean"),
        best_std=("best", "std"), last_step=("last_step", "max"), seeds=("run", "nunique"))
    table = table.reset_index()
    table.insert(2, "better", table["metric"].map(lambda m: better(keys[m])))
    cells = list(dict.fromkeys(frame["cell"]))
    table["cell"] = pd.Categorical(table["cell"], cells, ordered=True)
    table["metric"] = pd.Categorical(table["metric"], metrics, ordered=True)
    return table.sort_values(["cell", "metric"]).reset_index(drop=True)


def _fmt(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.4g} ± {std:.2g}" if pd.notna(std) else f"{mean:.4g}"


def markdown_table(table: pd.DataFrame, keys: dict[str, Key] | None = None) -> str:
    """Cells as rows, ``<metric> last`` / ``<metric> best`` as columns (mean ± std over seeds).
    (``DataFrame.to_markdown`` needs the optional tabulate package; this is the small part.)"""
    metrics = list(dict.fromkeys(table["metric"].astype(str)))
    header = ["cell", "seeds"] + [f"{m} {k}" for m in metrics for k in ("last", "best")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell, group in table.groupby("cell", sort=True, observed=True):
        by_metric = {str(r.metric): r for r in group.itertuples()}
        row = [str(cell), str(int(group["seeds"].max()))]
        for m in metrics:
            r = by_metric.get(m)
            row += [_fmt(r.last, r.last_std), _fmt(r.best, r.best_std)] if r else ["–", "–"]
        lines.append("| " + " | ".join(row) + " |")
    direction = dict(zip(table["metric"].astype(str), table["better"]))
    arrows = ", ".join(f"{m} ({direction[m]} is better)" for m in metrics)
    apart = [m for m in metrics if keys and m in keys and not keys[m].comparable_across_objectives]
    note = (f" {', '.join(apart)}: each objective's own loss, not comparable across objectives."
            if apart else "")
    return "\n".join(lines) + f"\n\nBest: {arrows}. Values: mean ± std over seeds.{note}\n"


def final_value(run_dir: Path, metric: str) -> float:
    """The last logged value of ``metric`` in a run's metrics.csv (a sweep's objective)."""
    metrics = pd.read_csv(Path(run_dir) / "metrics.csv")
    if metric not in metrics:
        raise ValueError(f"{run_dir}/metrics.csv has no column {metric!r}; logged: "
                         f"{sorted(c for c in metrics.columns if c != 'step')}")
    values = metrics.sort_values("step", kind="stable")[metric].dropna()
    if values.empty:
        raise ValueError(f"{run_dir}/metrics.csv: {metric!r} was never logged")
    return float(values.iloc[-1])
