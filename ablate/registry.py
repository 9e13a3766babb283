"""Plugin registries: one per kind (encoder, objective, metric, judge, dataset).

A plugin registers itself with ``@register("objective", "my_name")`` in its own module.
Each kind lives in a package (``ablate/objectives/`` ...) whose every module is imported on
first lookup, so adding a plugin is one new file with no edit anywhere else.

Out-of-tree plugins register the same way from their own modules, found through

- the ``ablate.plugins`` entry-point group of any installed distribution: each entry point
  names a module; importing it runs its ``@register`` decorators, and a module-level
  ``add_commands(subparsers)`` adds ``ablate`` subcommands (``ablate.toy`` is one such plugin);
- ``ABLATE_PLUGINS=mod1,mod2``: modules to import, for code that is not packaged.

Code that is importable but not registered is chosen by dotted class path
(``mypkg.losses.MyObjective``) instead of a name.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import tomllib
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
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
        load_plugins()
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


# --------------------------------------------------------------------------------------
# Plugin modules outside the core
# --------------------------------------------------------------------------------------

PLUGIN_GROUP = "ablate.plugins"
PLUGINS_ENV = "ABLATE_PLUGINS"


@dataclass
class PluginModule:
    module: str
    source: str  # where it was declared, for `ablate list`
    error: str | None = None  # why importing it failed


_PLUGIN_MODULES: dict[str, PluginModule] = {}
_plugins_loaded = False


def _own_pyproject_plugins() -> list[tuple[str, str]]:
    """The entry points that this source checkout's ``pyproject.toml`` declares. An editable
    install made before an entry point was added (or a bare ``PYTHONPATH`` checkout) has
    none in its installed metadata; this finds them without a reinstall."""
    path = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        project = tomllib.loads(path.read_text()).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return []
    if project.get("name") != "ablate":
        return []
    entries = project.get("entry-points", {}).get(PLUGIN_GROUP, {})
    return [(value.partition(":")[0].strip(), f"entry point {name!r} in {path}") for name, value in entries.items()]


def plugin_sources() -> list[tuple[str, str]]:
    """(module, where it was declared) for every plugin module outside the core."""
    found = []
    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        dist = f" of {ep.dist.name} {ep.dist.version}" if ep.dist else ""
        found.append((ep.module, f"entry point {ep.name!r}{dist}"))
    found += _own_pyproject_plugins()
    found += [(m.strip(), PLUGINS_ENV) for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    return found


def load_plugins() -> list[PluginModule]:
    """Import every plugin module once (each registers its plugins as it is imported). One
    that fails to import is reported with a warning and in ``ablate list``, and the rest load."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for module, source in plugin_sources():
            if module in _PLUGIN_MODULES:
                continue
            record = _PLUGIN_MODULES[module] = PluginModule(module, source)
            try:
                importlib.import_module(module)
            except Exception as err:  # a broken plugin must not take the others down
                record.error = f"{type(err).__name__}: {err}"
                warnings.warn(f"ablate plugin {module!r} ({source}) failed to import: {record.error}",
                              stacklevel=2)
    return list(_PLUGIN_MODULES.values())
