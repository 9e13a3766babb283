"""Study specs (``experiments/*.yaml``): a base run, its cells and an optional optuna sweep.

    study: blip3o_design              # results go to <results_dir>/<study>/
    base: {backbone: ..., train: ...} # a run spec, same format as for ``ablate fit``
    cells:                            # optional: named cells, each = dotted overrides
      clip+mse: {encoder: {name: clip, ...}, objective: {name: mse}}
      clip+fm:  {encoder: {name: clip, ...}, objective: {name: flow_matching}}
    grid:                             # optional: axes (dotted key -> values), full product
      seed: [0, 1, 2]                 #   with the cells (nested mappings read as dotted keys)
      train.lr: [1.0e-4, 3.0e-4]
    sweep:                            # optional: ``ablate sweep`` search space (optuna)
      metric: train/loss
      direction: minimize
      sampler: tpe                    # tpe | random | grid, or {name: tpe, seed: 0, ...}
      pruner: {name: median, n_warmup_steps: 100}
      params:
        train.lr: {low: 1.0e-5, high: 1.0e-3, log: true}
        backbone.num_queries: {choices: [32, 64, 128]}

A study can start from another one: ``extends: demo.yaml`` (a path relative to this file)
takes that file's spec, merges this file's ``base`` into its ``base`` key by key (nested
mappings merge, other values replace) and replaces each other section this file gives
(``study``, ``cells``, ``grid``, ``sweep``) whole; ``results/<study>/study.yaml`` records the
merged spec. So a longer run of the demo is a few lines (``experiments/toy_study.yaml``).

An override key names what it replaces, as ``--set`` does: ``encoder: {...}`` replaces the
whole encoder spec (plugin arguments differ between encoders), ``train.lr: 1e-4`` one field.
A run is base -> cell overrides -> grid values -> run-level ``--set``; its name is
``<cell>-seed<seed>`` and its ``meta`` holds the cell name and axis values (table columns).
Every run spec is validated with ``parse_run`` when the study is loaded, before anything runs.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ablate.config import (
    ConfigError,
    RunConfig,
    _suggest,
    apply_overrides,
    from_dict,
    load_yaml,
    parse_override,
    parse_run,
)

STUDY_KEYS = ("study", "base", "cells", "grid", "sweep")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+=-]*$")  # no dots: --set cells.<name>.<key>

SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "grid": "GridSampler"}
PRUNERS = {"median": "MedianPruner", "percentile": "PercentilePruner", "hyperband": "HyperbandPruner",
           "successive_halving": "SuccessiveHalvingPruner", "threshold": "ThresholdPruner",
           "wilcoxon": "WilcoxonPruner", "none": "NopPruner"}


@dataclass
class ParamSpec:
    """One sweep dimension; the type is inferred when omitted (choices -> categorical)."""

    type: Literal["float", "int", "categorical"] | None = None
    low: int | float | None = None  # int first: integer bounds stay integers (int inferred)
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: list | None = None


@dataclass
class SweepSpec:
    params: dict[str, dict]
    metric: str = "train/loss"  # a metrics.csv column; its last logged value is the objective
    direction: Literal["minimize", "maximize"] = "minimize"
    sampler: Any = "tpe"  # name or {name, **kwargs of the optuna sampler}
    pruner: Any = "median"  # name or {name, **kwargs of the optuna pruner}; none: no pruning
    cell: str | None = None  # start trials from this cell instead of the bare base
    heartbeat_interval: int = 60  # s; a trial silent for grace_period is failed and retried
    grace_period: int | None = None  # default (optuna): 2 x heartbeat_interval
    max_retry: int = 1  # re-runs of a trial whose worker died (it resumes its checkpoint)


@dataclass
class Cell:
    """One run of a study."""

    name: str  # run name (folder): <cell>-seed<seed>
    cell: str  # the design cell, shared by its seeds
    seed: int
    axes: dict[str, Any]  # axis -> short value, for tables and plots
    spec: dict  # the full run spec
    run: RunConfig


@dataclass
class Study:
    name: str
    source: str
    data: dict  # the study spec after study-level --set (what study.yaml records)
    run_overrides: list[tuple[str, Any]]
    cells: list[Cell]
    sweep: SweepSpec | None = None
    distributions: dict = field(default_factory=dict)  # sweep key -> optuna distribution

    @property
    def study_dir(self) -> Path:
        return Path(self.cells[0].run.results_dir) / self.name

    def resolved(self) -> dict:
        """What ``study.yaml`` records: the spec, the --set overrides and every run."""
        return {**self.data, "overrides": [f"{k}={v}" for k, v in self.run_overrides],
                "runs": [{"name": c.name, "cell": c.cell, "seed": c.seed, "axes": c.axes}
                         for c in self.cells]}

    def trial_spec(self, name: str, params: dict, meta: dict) -> RunConfig:
        """The run of one sweep trial: the sweep's starting cell + sampled values."""
        start = self.sweep_start()
        spec = apply_overrides(start.spec, list(params.items()))
        spec.update(name=name, meta={**start.spec.get("meta", {}), **meta})
        return parse_run(spec, f"{self.source}: trial {name}")

    def sweep_start(self) -> Cell:
        if self.sweep and self.sweep.cell:
            for cell in self.cells:
                if self.sweep.cell in (cell.cell, cell.name):
                    return cell
            raise ConfigError(f"{self.source}: sweep.cell: no cell {self.sweep.cell!r}; "
                              f"cells: {sorted({c.cell for c in self.cells})}")
        return self.cells[0]


def short(value: Any) -> Any:
    """A table-friendly view of an axis value: a plugin spec shows as its name."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return value.get("name", yaml.safe_dump(value, default_flow_style=True, width=1e9).strip())
    if isinstance(value, list):
        return str(value)
    return value


def flatten_axes(grid: dict, prefix: str = "") -> dict[str, list]:
    """Nested mappings in ``grid:`` are dotted keys: {train: {lr: [..]}} == {train.lr: [..]}."""
    out = {}
    for key, values in grid.items():
        key = f"{prefix}{key}"
        if isinstance(values, dict):
            out.update(flatten_axes(values, key + "."))
        elif isinstance(values, list) and values:
            out[key] = values
        else:
            raise ConfigError(f"grid.{key}: expected a non-empty list of values, got {values!r}")
    return out


def _cell_list(cells: Any, where: str) -> list[tuple[str, dict]]:
    if cells is None:
        return [("", {})]
    if isinstance(cells, list):  # - clip+mse: {...}
        if not all(isinstance(c, dict) and len(c) == 1 for c in cells):
            raise ConfigError(f"{where}: a list of cells holds one-key mappings (name: overrides)")
        cells = {k: v for c in cells for k, v in c.items()}
    if not isinstance(cells, dict) or not cells:
        raise ConfigError(f"{where}: expected a mapping of cell name -> overrides")
    out = []
    for name, overrides in cells.items():
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ConfigError(f"{where}.{name}: a cell name is a folder name: letters, digits, _+=-")
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where}.{name}: expected a mapping of dotted key -> value")
        out.append((name, overrides))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", str(text))


def _check_no_collision(run_overrides, axes: list[str], source: str) -> None:
    """A run-level --set on a grid axis would silently mislabel every cell."""
    for key, _ in run_overrides:
        for axis in axes:
            if key == axis or key.startswith(axis + ".") or axis.startswith(key + "."):
                raise ConfigError(f"{source}: --set {key}: {axis!r} is a grid axis or sweep "
                                  f"parameter; change its values with --set grid.{axis}=[...]")


def expand_cells(data: dict, run_overrides, source: str) -> list[Cell]:
    name = data["study"]
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{source}: base: expected a run spec mapping")
    axes = flatten_axes(data.get("grid") or {})
    if "seed" in axes:  # seeds innermost: a cell's seeds are neighbours in every listing
        axes = {k: v for k, v in axes.items() if k != "seed"} | {"seed": axes["seed"]}
    _check_no_collision(run_overrides, list(axes), source)
    cells, seen = [], set()
    for cell_name, overrides in _cell_list(data.get("cells"), "cells"):
        for values in itertools.product(*axes.values()):
            point = dict(zip(axes, values))
            spec = apply_overrides(base, list(overrides.items()) + list(point.items()))
            spec = apply_overrides(spec, run_overrides)
            seed = spec.get("seed", 0)
            described = [f"{k.rsplit('.', 1)[-1]}={_slug(short(v))}"
                         for k, v in point.items() if k != "seed" and len(axes[k]) > 1]
            cell = "_".join(([cell_name] if cell_name else []) + described) or "base"
            run_name = f"{cell}-seed{seed}"
            where = f"{source}: cell {cell!r}" + (f" (seed {seed})" if "seed" in axes else "")
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise ConfigError(f"{where}: seed: expected an integer, got {seed!r}")
            if run_name in seen:
                raise ConfigError(f"{where}: run name {run_name!r} is produced twice; give the "
                                  "cells different names")
            seen.add(run_name)
            shown = {k: short(v) for k, v in overrides.items()}
            shown.update({k: short(v) for k, v in point.items() if k != "seed"})
            spec.update(name=run_name, study=name,
                        meta={**(spec.get("meta") or {}), "cell": cell, "axes": shown})
            run = parse_run(spec, where)
            cells.append(Cell(run_name, cell, seed, {"cell": cell, **shown, "seed": seed}, spec, run))
    results_dirs = {c.run.results_dir for c in cells}
    if len(results_dirs) > 1:
        raise ConfigError(f"{source}: every cell must share results_dir; got {sorted(results_dirs)}")
    return cells


def parse_sweep(data: Any, source: str) -> tuple[SweepSpec, dict]:
    """The sweep section and its optuna distributions (optuna checks low/high/log/step)."""
    import optuna.distributions as D

    where = f"{source}: sweep"
    try:
        sweep = from_dict(SweepSpec, data, "sweep")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    if not sweep.params:
        raise ConfigError(f"{where}.params: give at least one dotted key to search over")
    dists = {}
    for key, raw in sweep.params.items():
        try:
            p = from_dict(ParamSpec, raw, f"sweep.params.{key}")
            kind = p.type or ("categorical" if p.choices is not None else
                              "int" if all(isinstance(v, int) for v in (p.low, p.high, p.step)
                                           if v is not None) else "float")
            if kind == "categorical":
                if not p.choices or not all(isinstance(c, (bool, int, float, str, type(None)))
                                            for c in p.choices):
                    raise ConfigError(f"sweep.params.{key}.choices: a non-empty list of scalars")
                dists[key] = D.CategoricalDistribution(p.choices)
            elif p.low is None or p.high is None:
                raise ConfigError(f"sweep.params.{key}: {kind} needs low and high")
            elif kind == "int":
                dists[key] = D.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
            else:
                dists[key] = D.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        except ValueError as err:  # optuna's own checks (low > high, log with step, ...)
            raise ConfigError(f"{source}: sweep.params.{key}: {err}") from None
    build_sampler(sweep, dists, source)  # fail on a bad name / argument now, not at trial 1
    build_pruner(sweep, source)
    return sweep, dists


def _plugin(spec: Any, table: dict, where: str) -> tuple[str, dict]:
    spec = {"name": spec} if isinstance(spec, str) or spec is None else dict(spec)
    name = str(spec.pop("name", None))
    if name not in table:
        raise ConfigError(f"{where}: unknown {name!r}{_suggest(name, table)}; choose one of {sorted(table)}")
    return name, spec


def _per_trial_seed(make, seed: int):
    """An optuna sampler whose seed is ``seed + trial number``: with one fixed seed, every
    worker of a shared study would draw the same parameters. Trial numbers are unique in
    the storage, so workers differ, and one worker's sequence stays reproducible. (The
    samplers keep no state but their random generator; history comes from the storage.)"""
    import optuna

    class PerTrialSeed(optuna.samplers.BaseSampler):
        def __init__(self):
            self.inner = make(seed)

        def before_trial(self, study, trial):
            self.inner = make(seed + trial.number)
            self.inner.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self.inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self.inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values):
            self.inner.after_trial(study, trial, state, values)

        def reseed_rng(self):
            self.inner.reseed_rng()

    return PerTrialSeed()


def build_sampler(sweep: SweepSpec, dists: dict, source: str = "<study>"):
    import optuna

    name, kwargs = _plugin(sweep.sampler, SAMPLERS, f"{source}: sweep.sampler")
    if name == "grid":  # a grid needs every value listed: categorical or stepped numbers
        space = {}
        for key, d in dists.items():
            if isinstance(d, optuna.distributions.CategoricalDistribution):
                space[key] = list(d.choices)
            elif d.step is not None:
                n = int(round((d.high - d.low) / d.step))
                space[key] = [d.low + i * d.step for i in range(n + 1)]
            else:
                raise ConfigError(f"{source}: sweep.params.{key}: sampler grid needs choices "
                                  "or a step")
        kwargs["search_space"] = space
    def make(seed=kwargs.get("seed")):
        with warnings.catch_warnings():  # TPE's multivariate / constant_liar are "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return getattr(optuna.samplers, SAMPLERS[name])(**{**kwargs, "seed": seed})

    try:
        make()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: sweep.sampler: {err}") from None
    seed = kwargs.get("seed")
    return _per_trial_seed(make, seed) if isinstance(seed, int) and not isinstance(seed, bool) else make()


def build_pruner(sweep: SweepSpec, source: str = "<study>"):
    import optuna

    name, kwargs = _plugin(sweep.pruner, PRUNERS, f"{source}: sweep.pruner")
    try:
        return getattr(optuna.pruners, PRUNERS[name])(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: sweep.pruner: {err}") from None


def split_overrides(overrides) -> tuple[list, list]:
    """--set keys under study/base/cells/grid/sweep edit the study; others every run."""
    study_level, run_level = [], []
    for item in overrides or ():
        key, value = parse_override(item) if isinstance(item, str) else item
        (study_level if key.split(".", 1)[0] in STUDY_KEYS else run_level).append((key, value))
    return study_level, run_level


def _set_study_key(data: dict, key: str, value: Any) -> dict:
    """Grid axes, cell overrides and sweep params are keyed by dotted names themselves, so
    only the section (and cell / param) name is split off: ``grid.train.lr=[..]`` sets axis
    ``train.lr``, ``cells.clip+mse.train.lr=..`` that cell's ``train.lr``."""
    data = copy.deepcopy(data)
    section, _, rest = key.partition(".")
    if section == "grid" and rest:
        data["grid"] = {**flatten_axes(data.get("grid") or {}), rest: value}
    elif section == "cells" and "." in rest:
        cell, _, sub = rest.partition(".")
        cells = dict(_cell_list(data.get("cells"), "cells"))
        if cell not in cells:
            raise ConfigError(f"--set {key}: no cell {cell!r}; cells: {sorted(cells)}")
        cells[cell] = {**cells[cell], sub: value}
        data["cells"] = cells
    elif section == "sweep" and rest.startswith("params."):
        param = rest[len("params."):]
        params = data.setdefault("sweep", {}).setdefault("params", {})
        head, _, tail = param.rpartition(".")
        if head in params and tail in {f.name for f in dataclasses.fields(ParamSpec)}:
            params[head] = {**params[head], tail: value}
        else:
            params[param] = value
    else:
        data = apply_overrides(data, [(key, value)])
    return data


def parse_study(data: dict, source: str = "<study>", overrides=()) -> Study:
    study_level, run_level = split_overrides(overrides)
    for key, value in study_level:
        data = _set_study_key(data, key, value)
    unknown = [k for k in data if k not in STUDY_KEYS]
    if unknown:
        raise ConfigError(f"{source}: {unknown[0]}: unknown key{_suggest(str(unknown[0]), STUDY_KEYS)}; "
                          f"a study has {list(STUDY_KEYS)} (the run spec goes under base:)")
    name = data.get("study")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"{source}: study: a name (letters, digits, _+=-) is required, got {name!r}")
    sweep, dists = (None, {})
    if data.get("sweep") is not None:
        sweep, dists = parse_sweep(data["sweep"], source)
        _check_no_collision(run_level, list(dists), source)
    cells = expand_cells(data, run_level, source)
    study = Study(name, source, data, run_level, cells, sweep, dists)
    if sweep:  # the extremes of every dimension must make valid runs too
        study.sweep_start()
        for key, d in dists.items():
            values = d.choices if hasattr(d, "choices") else (d.low, d.high)
            for v in values:
                study.trial_spec("trial-check", {key: v}, {})
    return study


def _merge(parent: dict, child: dict) -> dict:
    """``child`` over ``parent``: nested mappings merge key by key, other values replace."""
    out = dict(parent)
    for key, value in child.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_study(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """The study spec of ``path`` with its ``extends:`` chain resolved (see the module doc)."""
    path = Path(path)
    data = load_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"{path}: extends: expected the path of a study file (relative to "
                          f"this file), got {parent!r}")
    parent_path = (path.parent / parent).resolve()
    if not parent_path.is_file():
        raise ConfigError(f"{path}: extends: {parent!r}: no such study file ({parent_path})")
    chain = (*_chain, path.resolve())
    if parent_path in chain:
        raise ConfigError(f"{path}: extends: {parent!r} extends this file again: "
                          + " -> ".join(str(p) for p in (*chain, parent_path)))
    merged = read_study(parent_path, chain)
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, dict):
            raise ConfigError(f"{path}: base: expected a run spec mapping")
        merged["base"] = _merge(merged.get("base") or {}, base)
    return {**merged, **data}


def load_study(path: str | Path, overrides=()) -> Study:
    return parse_study(read_study(path), str(path), overrides)
