"""Every study in experiments/ runs: shrunk to the tiny models (conftest.shrink_study), each
file goes through `ablate grid`, and files with a sweep section through a 2-trial sweep.
A new YAML in experiments/ is picked up here without any edit."""

from pathlib import Path

import pytest
from conftest import shrink_study, write_spec

from ablate.cli import main
from ablate.study.spec import load_study, read_study
from ablate.study.sweep import open_study
from ablate.train import read_status

EXPERIMENTS = sorted((Path(__file__).parent.parent / "experiments").glob("*.yaml"))


def test_there_are_experiments():
    assert any(p.name == "blip3o_design.yaml" for p in EXPERIMENTS)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_runs_shrunk(path, tiny_models, tiny_shards, tmp_path):
    real = load_study(path)  # the real spec validates as written (hub ids, sizes, metrics)
    spec = shrink_study(read_study(path), tiny_models, tiny_shards, tmp_path / "results")
    small = write_spec(spec, tmp_path / path.name)
    assert main(["grid", str(small)]) == 0
    study = load_study(small)
    for name in read_study(path).get("cells") or {}:  # every named cell ran
        assert any(c.cell == name or c.cell.startswith(name + "_") for c in study.cells), name
    for cell in study.cells:
        assert read_status(cell.run.run_dir)["state"] == "finished", cell.name
    if real.sweep is not None:
        assert main(["sweep", str(small), "--trials", "2"]) == 0
        trials = open_study(study).trials
        assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
