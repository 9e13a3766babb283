"""Run and study specs: YAML -> validated dataclasses.

Validation is strict and happens before anything heavy loads: an unknown key, a value of
the wrong type or an unknown plugin name raises ``ConfigError`` naming the file, the dotted
key and what would have been valid.
"""

from __future__ import annotations

import dataclasses
import difflib
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


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


# --------------------------------------------------------------------------------------
# The run spec
# --------------------------------------------------------------------------------------

PROMPT_TEMPLATE = "Please generate an image based on the following caption: {caption}"


@dataclass
class BackboneConfig:
    """The frozen causal LM and its learnable queries."""

    model: str = "meta-llama/Llama-3.2-1B-Instruct"  # hub id or local folder
    tokenizer: str | None = None  # defaults to ``model``
    num_queries: int | None = None  # None: derived from the target's token count
    prompt_template: str = PROMPT_TEMPLATE
    use_chat_template: bool = True
    max_prompt_tokens: int = 256
    reuse_prompt_cache: bool = True  # run the prompt once without grad, reuse its KV cache
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


@dataclass
class DataConfig:
    """Where image-caption pairs come from (a ``dataset`` plugin and its arguments)."""

    train: dict = field(default_factory=lambda: {"name": "webdataset", "urls": "data/train-{000000..000009}.tar"})
    batch_size: int = 16
    num_workers: int = 2
    shuffle_buffer: int = 1000  # samples held for shuffling (units are shuffled per epoch too)
    prefetch_factor: int = 2  # batches each loader worker prepares ahead
    cache: bool = True  # train on cached encoder features (ablate.data.cache), not pixels
    cache_dir: str | None = None  # None: <results_dir>/.cache/features


@dataclass
class TrainConfig:
    max_steps: int = 1000
    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_steps: int = 0
    warmup_ratio: float = 0.003
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"
    gradient_checkpointing: bool = False
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 500
    keep_checkpoints: int = 2
    logger: Literal["csv", "tensorboard", "wandb", "none"] = "csv"
    progress_bar: bool = True
    compile: bool = False  # torch.compile the objective's net and the LM query pass


@dataclass
class EvalConfig:
    """What to measure, on what and how often (``ablate.eval.callback.EvalCallback``)."""

    every_n_steps: int = 0  # 0: never during training
    at_start: bool = True  # measure the untrained model too (step 0 of every curve)
    at_end: bool = True
    metrics: list[dict] = field(default_factory=list)  # metric plugins: {name: geneval, ...}
    sample_steps: int | None = None  # None: the objective's default (paper: 30 Euler steps)
    guidance: float | None = None  # None: the objective's default (paper: 3.0)
    sampler: str | None = None
    batch_size: int = 16
    sample_prompts: list[str] = field(default_factory=lambda: [
        "a red apple on a wooden table", "a photo of two cats", "a blue car left of a tree",
        "a white teapot"])
    sample_seed: int = 0  # images under samples/<step>/ use seeds sample_seed + i


@dataclass
class RunConfig:
    name: str = "run"
    study: str = "default"
    seed: int = 0
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


def parse_run(data: dict, source: str = "<spec>") -> RunConfig:
    """Validate a run spec (already merged with overrides). Errors name ``source``."""
    try:
        run = from_dict(RunConfig, data)
        check_plugin_spec("encoder", run.encoder, "encoder")
        check_plugin_spec("objective", run.objective, "objective")
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
