"""What produced a run: resolved config, git commit, package versions, seed, command."""

from __future__ import annotations

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
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


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
