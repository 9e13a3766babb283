"""A shrunk `ablate demo`: the shipped toy assets, a little toy data, two steps per cell."""

import pandas as pd
import pytest

from ablate.cli import main
from ablate.toy.build import assets_dir, check_assets
from ablate.toy.demo import default_study

SMALL_METRICS = (
    "[{name: geneval, prompts: data/toy/benchmarks/geneval/evaluation_metadata.jsonl, "
    "judge: {name: toy-detector}, max_prompts: 3, images_per_prompt: 1}, "
    "{name: dpg, bench_dir: data/toy/benchmarks/dpg_bench, judge: {name: toy-vqa}, max_prompts: 1}, "
    "{name: diversity, num_prompts: 1, num_seeds: 2, prompts: [a photo of a red circle]}]")


def test_shrunk_demo_end_to_end(tmp_path, monkeypatch):
    check_assets()  # the shipped assets load (else: run `ablate toy build`)
    study = default_study().resolve()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ablate" / "toy").mkdir(parents=True)
    (tmp_path / "ablate" / "toy" / "assets").symlink_to(assets_dir())
    code = main(["demo", "--study", str(study), "--data-scale", "0.02",
                 "--set", "train.max_steps=2", "--set", "eval.every_n_steps=0",
                 "--set", "eval.at_start=false", "--set", "data.batch_size=4",
                 "--set", "eval.sample_steps=2", "--set", "eval.sample_prompts=[]",
                 "--set", f"eval.metrics={SMALL_METRICS}"])
    assert code == 0
    results = tmp_path / "results" / "demo"
    summary = pd.read_csv(results / "summary.csv")
    assert set(summary["cell"]) == {"clip+mse", "clip+fm", "vae+fm", "vae+mse"}
    assert summary["geneval/overall"].notna().sum() == 4 and summary["dpg/overall"].notna().sum() == 4
    assert (results / "curves_step.png").is_file() and (results / "final_table.md").is_file()


def test_demo_study_file_is_valid():
    from ablate.study.spec import load_study

    study = load_study(default_study())
    assert [c.name for c in study.cells] == ["clip+mse-seed0", "clip+fm-seed0", "vae+fm-seed0", "vae+mse-seed0"]


def test_missing_assets_say_how_to_rebuild(tmp_path):
    with pytest.raises(FileNotFoundError, match="ablate toy build"):
        check_assets(tmp_path)
