"""Plugin registries: one per kind (encoder, objective, metric, judge, dataset).

A plugin registers itself with ``@register("objective", "my_name")`` in its own module.
Each kind lives in a package (``ablate/objectives/`` ...) whose every module is imported on
first lookup, so adding a plugin is one new file with no edit anywhere else. Out-of-tree
code is chosen by dotted class path (``mypkg.losses.MyObjective``) instead of a name.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from ablate.config import ConfigError, _suggest, from_dict


class Registry:
    def __init__(self, kind: str, package: str):
        self.kind = kind
        self.package = package
        self._entries: dict[str, type] = {}
        self._discovered = False

    def register(self, name: str):
        def wrap(cls):
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is registered twice: "
                                 f"{self._entries[name].__module__} and {cls.__module__}")
            cls.plugin_name = name
            self._entries[name] = cls
            return cls

        return wrap

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, type]]:
        self._discover()
        return sorted(self._entries.items())

    def get(self, name: str, where: str | None = None) -> type:
        self._discover()
        if name in self._entries:
            return self._entries[name]
        if isinstance(name, str) and "." in name:
            module, _, attr = name.rpartition(".")
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as err:
                raise ConfigError(f"{where or self.kind}: cannot import {name!r}: {err}") from None
        raise ConfigError(f"{where or self.kind}: unknown {self.kind} {name!r}"
                          f"{_suggest(str(name), self._entries)}; registered: {self.names()} "
                          f"(or give a dotted class path, e.g. mypkg.module.MyClass)")

    def config(self, spec: dict | str, where: str | None = None):
        """(plugin class, validated Config instance or kwargs dict) for a spec."""
        if isinstance(spec, str):
            spec = {"name": spec}
        cls = self.get(spec["name"], where=f"{where}.name" if where else None)
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        config_cls = getattr(cls, "Config", None)
        cfg = from_dict(config_cls, kwargs, where or self.kind) if config_cls else kwargs
        return cls, cfg

    def build(self, spec: dict | str, where: str | None = None, **context: Any):
        """Instantiate a plugin: ``cls(cfg, **context)`` (``cls(**kwargs, **context)`` when
        the plugin has no ``Config`` dataclass)."""
        cls, cfg = self.config(spec, where)
        if isinstance(cfg, dict):
            return cls(**cfg, **context)
        return cls(cfg, **context)


REGISTRIES: dict[str, Registry] = {
    "encoder": Registry("encoder", "ablate.encoders"),
    "objective": Registry("objective", "ablate.objectives"),
    "metric": Registry("metric", "ablate.eval.metrics"),
    "judge": Registry("judge", "ablate.eval.judges"),
    "dataset": Registry("dataset", "ablate.data.datasets"),
}


def get_registry(kind: str) -> Registry:
    try:
        return REGISTRIES[kind]
    except KeyError:
        raise ConfigError(f"unknown plugin kind {kind!r}; kinds: {sorted(REGISTRIES)}") from None


def register(kind: str, name: str):
    """Class decorator: ``@register("objective", "flow_matching")``."""
    return get_registry(kind).register(name)
