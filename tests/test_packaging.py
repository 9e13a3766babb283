"""The package as a user installs it: what the wheel carries, a fast CLI, a core that does not
know the toy world, files named inside a package, logger extras checked up front."""

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ablate.config import ConfigError, parse_run, resolve_package_paths

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "transformers", "diffusers", "lightning", "PIL", "pandas", "scipy")


def test_building_the_parser_imports_no_heavy_library():
    code = ("import sys, ablate.cli; ablate.cli.build_parser(); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_the_core_imports_nothing_from_the_toy_world():
    """ablate/toy/ is a plugin like any other: nothing outside it imports it, even lazily."""
    core = [p for p in (ROOT / "ablate").rglob("*.py") if "toy" not in p.relative_to(ROOT / "ablate").parts]
    assert len(core) > 30
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.startswith("ablate.toy"))
                 for p in core}
    assert not {k: v for k, v in offenders.items() if v}


def test_wheel_carries_the_demo_spec_and_the_toy_assets(tmp_path):
    """``pip wheel`` of a copy of the tree (the build writes build/ and *.egg-info beside it):
    the study files through the ablate/experiments link, the assets, the entry point."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "experiments", src / "experiments")
    shutil.copytree(ROOT / "ablate", src / "ablate", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    assert (src / "ablate" / "experiments").is_symlink()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("ablate-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"ablate/experiments/demo.yaml", "ablate/experiments/blip3o_design.yaml",
            "ablate/toy/plugins.py", "ablate/toy/assets/lm/config.json",
            "ablate/toy/assets/clip_decoder/unet/config.json"} <= names
    assert any(n.startswith("ablate/toy/assets/vae/") and n.endswith(".safetensors") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[ablate.plugins]" in text and "toy = ablate.toy.plugins" in text
    assert "ablate = ablate.cli:main" in text


def test_package_paths_resolve_inside_the_installed_package():
    resolved = resolve_package_paths({"a": ["pkg://ablate.toy/assets/lm"], "b": "data/x", "c": 3})
    assert resolved["a"][0] == str(ROOT / "ablate" / "toy" / "assets" / "lm")
    assert resolved["b"] == "data/x" and resolved["c"] == 3
    with pytest.raises(ConfigError, match=r"a\[0\].*no installed package 'no_such_pkg'"):
        resolve_package_paths({"a": ["pkg://no_such_pkg/x"]})
    with pytest.raises(ConfigError, match="backbone.model.*does not exist"):
        parse_run({"backbone": {"model": "pkg://ablate.toy/assets/no_such_model"}})


@pytest.mark.parametrize("logger,module", [("wandb", "wandb"), ("mlflow", "mlflow"),
                                           ("tensorboard", "tensorboard")])
def test_a_logger_without_its_package_fails_at_validation(logger, module, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in (module, "tensorboardX") else real(name, *a))
    with pytest.raises(ConfigError, match=rf"train.logger: '{logger}' .* pip install 'ablate\[{logger}\]'"):
        parse_run({"train": {"logger": logger}})
    parse_run({"train": {"logger": "csv"}})  # always available


def test_demo_finds_its_study_from_any_directory(tmp_path, monkeypatch):
    from ablate.toy.demo import default_study

    monkeypatch.chdir(tmp_path)
    assert default_study().is_file() and default_study().read_text() == (ROOT / "experiments" / "demo.yaml").read_text()
