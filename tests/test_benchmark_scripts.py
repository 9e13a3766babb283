"""The diagnostic scripts in benchmarks/ run on a shrunk study (figures only, no targets)."""

import runpy
import sys
from pathlib import Path

import pandas as pd
import torch
import yaml
from conftest import shrink_study, write_spec

ROOT = Path(__file__).parent.parent


def test_objective_only_trains_the_head_and_logs_the_run_metrics(tiny_models, tiny_shards, tmp_path,
                                                                monkeypatch, capsys):
    spec = shrink_study(yaml.safe_load((ROOT / "experiments" / "demo.yaml").read_text()),
                        tiny_models, tiny_shards, tmp_path / "results")
    study = write_spec(spec, tmp_path / "demo.yaml")
    out = tmp_path / "objective_only"
    monkeypatch.setattr(sys, "argv", ["objective_only.py", str(study), "--cell", "vae+fm", "--pairs", "6",
                                      "--every", "2", "--out", str(out), "--set", "train.max_steps=3"])
    runpy.run_path(str(ROOT / "benchmarks" / "objective_only.py"), run_name="__main__")
    assert "cached 6 pairs" in capsys.readouterr().out
    rows = pd.read_csv(out / "vae+fm" / "metrics.csv")
    assert rows["step"].tolist() == [2, 3]  # every 2 steps and at the last one
    assert rows["train/loss"].notna().all() and (rows["train/loss"] > 0).all()
    metric_columns = [c for c in rows.columns if c.split("/")[0] in {"geneval", "dpg", "fid", "diversity"}]
    assert metric_columns  # the study's own eval.metrics ran
    assert rows["recall/ratio"].notna().all() and (rows["recall/ratio"] > 0).all()
    recorded = yaml.safe_load((out / "vae+fm" / "config.yaml").read_text())
    assert recorded["train"]["max_steps"] == 3 and "git" in recorded["provenance"]


class _Sampler:
    """An objective stand-in whose samples are a fixed function of the conditioning rows."""

    def __init__(self, fn):
        self.fn = fn

    def eval(self):
        return self

    def sample(self, cond, generator=None):
        return self.fn(cond)


def test_conditioning_recall_is_0_for_a_memoriser_and_1_for_a_model_that_ignores_its_condition():
    recall = runpy.run_path(str(ROOT / "benchmarks" / "objective_only.py"))["conditioning_recall"]
    torch.manual_seed(0)
    targets = torch.randn(6, 4, 2, 2)
    conds = torch.arange(6.0)[:, None, None].expand(6, 3, 5)  # row i identifies pair i
    memoriser = _Sampler(lambda c: targets[c[:, 0, 0].long()])
    ignorer = _Sampler(lambda c: torch.full((len(c), 4, 2, 2), 0.3))
    swapper = _Sampler(lambda c: targets[(c[:, 0, 0].long() + 1) % 6])  # always a wrong pair's target
    assert recall(memoriser, conds, targets) == 0.0
    assert abs(recall(ignorer, conds, targets) - 1.0) < 1e-6  # own and other distances average alike
    assert recall(swapper, conds, targets) > 1.0
