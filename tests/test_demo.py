"""A shrunk `ablate demo` (``--smoke``): the shipped toy assets, a little toy data, two steps per cell."""

import pandas as pd
import pytest

from ablate.cli import main
from ablate.toy.build import check_assets
from ablate.toy.demo import default_study


def test_shrunk_demo_end_to_end(tmp_path, monkeypatch):
    """``ablate demo --smoke`` from an empty folder: the study and the assets are found in the
    package, the data and results land in the working directory."""
    check_assets()  # the shipped assets load (else: run `ablate toy build`)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--smoke"]) == 0
    results = tmp_path / "results" / "smoke" / "demo"
    summary = pd.read_csv(results / "summary.csv")
    assert set(summary["cell"]) == {"clip+mse", "clip+fm", "vae+fm", "vae+mse"}
    assert summary["geneval/overall"].notna().sum() == 4 and summary["dpg/overall"].notna().sum() == 4
    assert (results / "curves_step.png").is_file() and (results / "final_table.md").is_file()
    assert (tmp_path / "data" / "toy" / "toy_data.json").is_file()
    assert not (tmp_path / "results" / "demo").exists()  # the real demo's folder stays untouched


def test_demo_study_file_is_valid():
    from ablate.study.spec import load_study

    study = load_study(default_study())
    assert [c.name for c in study.cells] == ["clip+mse-seed0", "clip+fm-seed0", "vae+fm-seed0", "vae+mse-seed0"]


def test_missing_assets_say_how_to_rebuild(tmp_path):
    with pytest.raises(FileNotFoundError, match="ablate toy build"):
        check_assets(tmp_path)


def test_demo_runs_one_worker_per_core_up_to_one_per_cell(tmp_path, monkeypatch):
    from ablate.config import ConfigError
    from ablate.toy.demo import default_workers, run_demo

    assert [default_workers(4, cores) for cores in (1, 2, 3, 16)] == [1, 2, 3, 4]
    assert default_workers(1, 8) == 1 and default_workers(4, 0) == 1
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="--workers 0: need at least 1"):
        run_demo(workers=0)
    assert not (tmp_path / "data").exists()  # refused before any toy data is written
