"""What produced a run: resolved config, git commit, package versions, seed, command."""

from __future__ import annotations

import hashlib
import inspect
import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import yaml

from ablate.config import RunConfig, to_dict

PACKAGES = ("ablate", "torch", "torchvision", "transformers", "diffusers", "lightning", "optuna",
            "torchmetrics", "clean-fid", "pandas", "numpy", "webdataset", "safetensors")


def git_state(cwd: str | Path | None = None) -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=all").splitlines()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "untracked": None}
    if not commit:
        return {"commit": None, "dirty": None, "untracked": None}
    # Untracked files (a new plugin not yet added, say) change what ran as much as edits do.
    untracked = [line[3:] for line in status if line.startswith("??")]
    return {"commit": commit, "dirty": any(not line.startswith("??") for line in status),
            "untracked": untracked[:50] + ([f"... {len(untracked) - 50} more"] if len(untracked) > 50 else [])}


def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance() -> dict:
    import ablate

    return {"git": git_state(Path(ablate.__file__).parent), "packages": package_versions(),
            "python": sys.version.split()[0], "platform": platform.platform(),
            "command": " ".join(sys.argv), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_run_config(run: RunConfig, path: Path, extra: dict | None = None) -> None:
    data = to_dict(run)
    data["provenance"] = {**provenance(), **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


# Settings that change how a run is shown or named, not what it computes.
NOT_HASHED = ("name", "study", "results_dir", "meta", "train.progress_bar", "train.logger",
              "data.num_workers")


def _hashed_spec(run: RunConfig) -> dict:
    data = to_dict(run)
    for key in NOT_HASHED:
        node, *path = key.split(".")
        target = data if not path else data.get(node, {})
        target.pop(path[0] if path else node, None)
    return data


def flat_spec(data: dict, prefix: str = "") -> dict:
    """{"train.lr": 1e-4, ...}: nested mappings as dotted keys (lists stay values)."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flat_spec(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def out_of_tree_plugins(run: RunConfig) -> dict[str, str]:
    """Plugin spec key -> sha256 of the source file of each plugin named by a dotted class
    path outside the ablate package (its code is part of what the spec means)."""
    from ablate.registry import get_registry

    specs = {"encoder": run.encoder, "objective": run.objective, "data.train": run.data.train,
             **{f"eval.metrics[{i}]": m for i, m in enumerate(run.eval.metrics)}}
    kinds = {"encoder": "encoder", "objective": "objective", "data.train": "dataset"}
    out = {}
    for where, spec in specs.items():
        name = spec.get("name") if isinstance(spec, dict) else spec
        if not isinstance(name, str) or "." not in name or name.startswith("ablate."):
            continue
        cls = get_registry(kinds.get(where, "metric")).get(name, where=f"{where}.name")
        try:
            source = inspect.getsource(inspect.getmodule(cls))
        except (OSError, TypeError):
            source = ""
        out[where] = hashlib.sha256(source.encode()).hexdigest()[:16]
    return out


def spec_fingerprint(run: RunConfig) -> dict:
    """What status.json records to tell later whether a finished run's spec changed: a hash
    of the resolved spec (less naming/display settings) and of out-of-tree plugin sources."""
    plugins = out_of_tree_plugins(run)
    text = json.dumps({"spec": _hashed_spec(run), "plugins": plugins}, sort_keys=True, default=str)
    return {"spec_hash": hashlib.sha256(text.encode()).hexdigest()[:16], "plugin_sources": plugins}


def spec_changes(run: RunConfig, run_dir: Path, status: dict) -> list[str] | None:
    """The keys whose values differ between ``run`` and the spec a finished run recorded
    (config.yaml / status.json); None when the run recorded no fingerprint (older runs)."""
    if "spec_hash" not in status:
        return None
    now = spec_fingerprint(run)
    if now["spec_hash"] == status["spec_hash"]:
        return []
    config_path = Path(run_dir) / "config.yaml"
    old = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    old.pop("provenance", None)
    before, after = flat_spec(_hashed_spec_dict(old)), flat_spec(_hashed_spec(run))
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    old_plugins = status.get("plugin_sources") or {}
    changed += [f"source of the {k} plugin" for k in sorted(old_plugins.keys() | now["plugin_sources"].keys())
                if old_plugins.get(k) != now["plugin_sources"].get(k)]
    return changed or ["(the spec hash; no key differs: ablate's spec format changed?)"]


def _hashed_spec_dict(data: dict) -> dict:
    from ablate.config import parse_run

    try:  # the recorded spec as a run again, so defaults fill in as they do for ``run``
        return _hashed_spec(parse_run(data))
    except Exception:  # noqa: BLE001 - an old spec the schema no longer accepts: compare raw
        return data
