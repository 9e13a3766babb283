"""Run and study specs: YAML -> validated dataclasses.

Validation is strict and happens before anything heavy loads: an unknown key, a value of
the wrong type or an unknown plugin name raises ``ConfigError`` naming the file, the dotted
key and what would have been valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # 1e-4, 2.5E+3


class ConfigError(ValueError):
    """A spec that cannot be run, with the place (file, key) that is wrong."""


# --------------------------------------------------------------------------------------
# Generic dict -> dataclass validation
# --------------------------------------------------------------------------------------


def limits(low: float | None = None, high: float | None = None, *, above: float | None = None,
           also: tuple = ()) -> dict:
    """Field metadata declaring a field's valid values, checked by ``from_dict``:
    ``field(default=16, metadata=limits(1))`` means ``value >= 1``; ``above``: strictly
    greater; ``also``: values allowed besides the range (``-1`` for "all", say)."""
    return {"limits": (low, high, above, tuple(also))}


def _check_limits(f: dataclasses.Field, value: Any, key: str) -> None:
    if "limits" not in f.metadata or value is None or isinstance(value, bool):
        return
    low, high, above, also = f.metadata["limits"]
    if value in also or ((low is None or value >= low) and (high is None or value <= high)
                         and (above is None or value > above)):
        return
    kind = "an integer" if isinstance(value, int) else "a number"
    bounds = [f">= {low}" if low is not None else "", f"> {above}" if above is not None else "",
              f"<= {high}" if high is not None else ""]
    valid = f"{kind} {' and '.join(b for b in bounds if b)}"
    if also:
        valid = f"{' or '.join(map(repr, also))} or {valid}"
    raise ConfigError(f"{key}: {value!r} is not valid; expected {valid}")


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(tp, value, key: str):
    """Check ``value`` against annotation ``tp``; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of "
                          f"{' | '.join(_type_name(a) for a in args)}")
    if origin is Literal:
        if isinstance(value, int) and not isinstance(value, bool) and str(value) in args:
            return str(value)  # YAML reads `precision: 32` as an int; the choice is the string "32"
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not valid; choose one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        out = [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {k: _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value):
            return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # .nan / .inf in YAML: never a usable setting
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(schema: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``schema`` from ``data``, rejecting unknown keys and wrong types.

    ``where`` is the dotted path of ``data`` inside the whole spec, used in messages.
    """
    prefix = f"{where}." if where else ""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'spec'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"{prefix}{k}: unknown key{_suggest(str(k), fields)}; valid keys: "
                          f"{sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], prefix + name)
            _check_limits(f, kwargs[name], prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: required key is missing")
    try:
        return schema(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{prefix.rstrip('.') or schema.__name__}: {err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix.rstrip('.') or schema.__name__}: {err}") from None


def to_dict(obj: Any) -> Any:
    """Plain-YAML view of a (nested) config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --------------------------------------------------------------------------------------
# Overrides: --set a.b=value
# --------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.max_steps=100")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str) and _FLOAT.fullmatch(value):
        value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as text; a user means a number
    return key.strip(), value


def apply_overrides(data: dict, overrides) -> dict:
    """Set dotted keys in a nested dict (a copy). ``overrides``: "a.b=v" strings or pairs."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides or ():
        key, value = parse_override(item) if isinstance(item, str) else item
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a mapping")
            node = child
        node[parts[-1]] = value
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; in a spec that silently drops a cell."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r} "
                                  f"(first on line {seen[key] + 1}); each key may appear once")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


PACKAGE_PATH = "pkg://"


def resolve_package_paths(value: Any, key: str = "") -> Any:
    """Every ``pkg://PACKAGE/REL/PATH`` string in a spec -> that file or folder inside the
    installed package, so a spec can name files a package ships (the toy world's models)
    wherever it is installed. Other relative paths stay relative to the working directory."""
    if isinstance(value, dict):
        return {k: resolve_package_paths(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_package_paths(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if not (isinstance(value, str) and value.startswith(PACKAGE_PATH)):
        return value
    package, _, rel = value[len(PACKAGE_PATH):].partition("/")
    try:
        spec = importlib.util.find_spec(package)  # locates without running the package's code
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{key}: {value!r}: no installed package {package!r} (expected pkg://PACKAGE/PATH)")
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.exists():
        raise ConfigError(f"{key}: {value!r}: {path} does not exist")
    return str(path)


# --------------------------------------------------------------------------------------
# The run spec
# --------------------------------------------------------------------------------------

PROMPT_TEMPLATE = "Please generate an image based on the following caption: {caption}"


@dataclass
class BackboneConfig:
    """The frozen causal LM and its learnable queries."""

    model: str = "meta-llama/Llama-3.2-1B-Instruct"  # hub id or local folder
    tokenizer: str | None = None  # defaults to ``model``
    num_queries: int | None = field(default=None, metadata=limits(1))  # None: from the target's tokens
    prompt_template: str = PROMPT_TEMPLATE
    use_chat_template: bool = True
    max_prompt_tokens: int = field(default=256, metadata=limits(1))
    reuse_prompt_cache: bool = True  # run the prompt once without grad, reuse its KV cache
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


@dataclass
class DataConfig:
    """Where image-caption pairs come from (a ``dataset`` plugin and its arguments)."""

    train: dict = field(default_factory=lambda: {"name": "webdataset", "urls": "data/train-{000000..000009}.tar"})
    batch_size: int = field(default=16, metadata=limits(1))
    num_workers: int = field(default=2, metadata=limits(0))
    # samples held for shuffling (units are shuffled per epoch too)
    shuffle_buffer: int = field(default=1000, metadata=limits(1))
    prefetch_factor: int = field(default=2, metadata=limits(1))  # batches each loader worker prepares ahead
    cache: bool = True  # train on cached encoder features (ablate.data.cache), not pixels
    cache_dir: str | None = None  # None: <results_dir>/.cache/features


@dataclass
class TrainConfig:
    max_steps: int = field(default=1000, metadata=limits(1))
    lr: float = field(default=1e-4, metadata=limits(above=0))
    min_lr: float = field(default=1e-5, metadata=limits(0))
    # The query embeddings' own peak lr (None: ``lr``); the schedule scales it like ``lr``.
    # They feed a frozen LM, unlike the head's weights, so their best lr may differ. 0 freezes
    # them at their initial values: the LM then runs without a graph (no backward through it).
    query_lr: float | None = field(default=None, metadata=limits(0))
    warmup_steps: int = field(default=0, metadata=limits(0))
    warmup_ratio: float = field(default=0.003, metadata=limits(0, 1))
    weight_decay: float = field(default=0.0, metadata=limits(0))
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = field(default=1.0, metadata=limits(0))  # 0: no clipping
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"
    gradient_checkpointing: bool = False
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = field(default=1, metadata=limits(1))
    strategy: str = "auto"
    accumulate_grad_batches: int = field(default=1, metadata=limits(1))
    log_every_n_steps: int = field(default=10, metadata=limits(1))
    checkpoint_every_n_steps: int = field(default=500, metadata=limits(1))
    keep_checkpoints: int = field(default=2, metadata=limits(0, also=(-1,)))  # -1: keep all
    logger: Literal["csv", "tensorboard", "wandb", "mlflow", "none"] = "csv"  # csv is always written too
    progress_bar: bool = True
    compile: bool = False  # torch.compile the objective's net and the LM query pass
    # A non-finite loss or gradient: stop the run (failed, naming the step) or skip that
    # batch's update (counted in status.json's ``skipped``, like unreadable samples).
    on_nonfinite: Literal["stop", "skip_batch"] = "stop"
    ema_decay: float | None = None  # EMA of the queries + head, used for eval/export; None: off


@dataclass
class EvalConfig:
    """What to measure, on what and how often (``ablate.eval.callback.EvalCallback``)."""

    every_n_steps: int = field(default=0, metadata=limits(0))  # 0: never during training
    at_start: bool = True  # measure the untrained model too (step 0 of every curve)
    at_end: bool = True
    metrics: list[dict] = field(default_factory=list)  # metric plugins: {name: geneval, ...}
    # None: the objective's default (paper: 30 Euler steps)
    sample_steps: int | None = field(default=None, metadata=limits(1))
    guidance: float | None = field(default=None, metadata=limits(0))  # None: the objective's (3.0)
    sampler: str | None = None
    batch_size: int = field(default=16, metadata=limits(1))
    sample_prompts: list[str] = field(default_factory=lambda: [
        "a red apple on a wooden table", "a photo of two cats", "a blue car left of a tree",
        "a white teapot"])
    sample_seed: int = 0  # images under samples/<step>/ use seeds sample_seed + i


@dataclass
class RunConfig:
    name: str = "run"
    study: str = "default"
    seed: int = field(default=0, metadata=limits(0, 2**32 - 1))  # numpy's seed range
    results_dir: str = "results"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    encoder: dict = field(default_factory=lambda: {"name": "clip"})
    objective: dict = field(default_factory=lambda: {"name": "flow_matching"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    meta: dict = field(default_factory=dict)  # free-form notes kept with the run

    @property
    def run_dir(self) -> Path:
        return Path(self.results_dir) / self.study / self.name


def check_plugin_spec(kind: str, spec: Any, where: str) -> None:
    """Validate ``{name: ..., **kwargs}`` against the plugin's own ``Config`` dataclass."""
    from ablate.registry import get_registry

    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{where}: expected a mapping with a 'name' key, got {spec!r}")
    cls = get_registry(kind).get(spec["name"], where=f"{where}.name")
    config_cls = getattr(cls, "Config", None)
    # ``label`` names a metric's columns and folders (two FIDs at two resolutions, say)
    kwargs = {k: v for k, v in spec.items() if k != "name" and not (kind == "metric" and k == "label")}
    if config_cls is not None:
        from_dict(config_cls, kwargs, where)


# train.logger -> (a module that must be importable, the extra that installs it)
LOGGER_PACKAGES = {"tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
                   "wandb": (("wandb",), "wandb"), "mlflow": (("mlflow",), "mlflow")}


def check_logger(logger: str) -> None:
    """A logger whose package is missing fails here, before any model loads."""
    if logger not in LOGGER_PACKAGES:
        return
    modules, extra = LOGGER_PACKAGES[logger]
    if not any(importlib.util.find_spec(m) for m in modules):
        raise ConfigError(f"train.logger: {logger!r} needs the {' or '.join(modules)} package, which is not "
                          f"installed: pip install 'ablate[{extra}]' (or choose csv / none)")


def check_samplers(run: RunConfig) -> None:
    """``eval.sampler`` and the objective's own ``sampler`` must be samplers it has."""
    from ablate.registry import get_registry

    cls, cfg = get_registry("objective").config(run.objective, "objective")
    check = getattr(cls, "check_sampler", None)
    for where, name in (("objective.sampler", getattr(cfg, "sampler", None)),
                        ("eval.sampler", run.eval.sampler)):
        try:
            if check is not None:
                check(name)
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None


def parse_run(data: dict, source: str = "<spec>") -> RunConfig:
    """Validate a run spec (already merged with overrides). Errors name ``source``."""
    try:
        run = from_dict(RunConfig, resolve_package_paths(data))
        check_logger(run.train.logger)
        check_plugin_spec("encoder", run.encoder, "encoder")
        check_plugin_spec("objective", run.objective, "objective")
        check_samplers(run)
        if run.train.ema_decay is not None and not 0 < run.train.ema_decay < 1:
            raise ConfigError(f"train.ema_decay: {run.train.ema_decay} must be in (0, 1), "
                              "e.g. 0.999, or null for no EMA")
        check_plugin_spec("dataset", run.data.train, "data.train")
        for i, metric in enumerate(run.eval.metrics):
            check_plugin_spec("metric", metric, f"eval.metrics[{i}]")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return run


def load_run(path: str | Path, overrides=()) -> RunConfig:
    """A run spec from YAML; a run's recorded ``config.yaml`` loads too (its ``provenance:``
    says what produced that run and is not an input, so it is set aside)."""
    data = load_yaml(path)
    data.pop("provenance", None)
    return parse_run(apply_overrides(data, overrides), str(path))


MODEL_KEYS = ("model", "tokenizer", "decoder")  # values: a hub id ('org/name') or a local folder


def _looks_local(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or value.count("/") > 1 or "\\" in value


def check_local_models(run: RunConfig, source: str = "<spec>") -> None:
    """A local model folder named in the spec must exist. (Checked when a run starts, not at
    parse time, so specs stay checkable on machines without the weights; transformers would
    otherwise report a missing folder as a malformed hub id.)"""
    for section in ("backbone", "encoder", "objective"):
        spec = to_dict(getattr(run, section))
        for key in MODEL_KEYS:
            value = spec.get(key)
            if isinstance(value, str) and _looks_local(value) and not Path(value).expanduser().exists():
                raise ConfigError(f"{source}: {section}.{key}: {value!r}: no such folder (a local "
                                  "model must exist; a hub id has the form 'org/name')")
