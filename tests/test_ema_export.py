"""EMA of the trainables (train.ema_decay) and `ablate export`: the average follows the
closed form, survives a resume exactly, is what evaluation and export use; an exported head
reloads without the LM and samples what the checkpoint samples."""

import json
from dataclasses import dataclass

import lightning as L
import pandas as pd
import pytest
import torch
from conftest import tiny_run_spec

from ablate.cli import main
from ablate.config import ConfigError, parse_run
from ablate.ema import STATE_KEY
from ablate.eval.metrics import Metric
from ablate.eval.runner import load_checkpoint
from ablate.export import ExportedHead
from ablate.rng import generators
from ablate.train import fit

DECAY = 0.5


class QuerySum(Metric):
    """Reads the weights evaluation runs with (the module behind the generator)."""

    @dataclass
    class Config:
        pass

    def compute(self, generator, out_dir):
        return {"probe/query_sum": generator.module.backbone.queries.sum().item()}


class Record(L.Callback):
    """The trained parameters after every optimizer step (runs after the EMA callback)."""

    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.module = module
        self.steps.append({n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad})


def ema_spec(models, shards, results, **train):
    spec = tiny_run_spec(models, shards, results, "vae", "flow_matching", ema_decay=DECAY, **train)
    # running statistics (buffers, not parameters) must follow checkpoints, resumes and export too
    spec["objective"]["cond_standardize"] = True
    spec["eval"] = {"at_start": False, "at_end": True, "sample_prompts": [],
                    "metrics": [{"name": "test_ema_export.QuerySum"}]}
    return spec


@pytest.fixture(scope="module")
def ema_run(tiny_models, tiny_shards, tmp_path_factory):
    record = Record()
    run_dir = fit(parse_run(ema_spec(tiny_models, tiny_shards, tmp_path_factory.mktemp("ema"), max_steps=3,
                                     checkpoint_every_n_steps=1)),
                  extra_callbacks=(record,))
    return run_dir, record


def ema_of(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"][STATE_KEY]


def test_ema_follows_the_closed_form(ema_run):
    run_dir, record = ema_run
    state = ema_of(run_dir)
    assert state["n_averaged"] == 3 and state["decay"] == DECAY
    assert set(state["averages"]) == set(record.steps[0])  # queries + head, no frozen part
    assert "backbone.queries" in state["averages"] and not any(
        k.startswith(("backbone.lm.", "encoder.")) for k in state["averages"])
    p1, p2, p3 = record.steps
    for name, avg in state["averages"].items():
        expected = DECAY * (DECAY * p1[name] + (1 - DECAY) * p2[name]) + (1 - DECAY) * p3[name]
        torch.testing.assert_close(avg, expected)
    assert not torch.equal(state["averages"]["backbone.queries"], p3["backbone.queries"])


def test_eval_during_training_uses_the_ema_and_swaps_back(ema_run):
    run_dir, record = ema_run
    averages = ema_of(run_dir)["averages"]
    probe = pd.read_csv(run_dir / "metrics.csv").dropna(subset=["probe/query_sum"])
    assert list(probe["step"]) == [3]
    assert probe["probe/query_sum"].iloc[0] == pytest.approx(averages["backbone.queries"].sum().item(), rel=1e-5)
    assert probe["probe/query_sum"].iloc[0] != pytest.approx(record.steps[-1]["backbone.queries"].sum().item(),
                                                             rel=1e-5)
    torch.testing.assert_close(record.module.backbone.queries.detach(), record.steps[-1]["backbone.queries"])


def test_eval_sample_and_export_load_the_ema(ema_run, tmp_path, capsys):
    run_dir, record = ema_run
    averages = ema_of(run_dir)["averages"]
    module, _, step = load_checkpoint(run_dir, "cpu")
    assert step == 3 and module.uses_ema
    torch.testing.assert_close(module.backbone.queries.detach(), averages["backbone.queries"])
    raw, _, _ = load_checkpoint(run_dir, "cpu", ema=False)
    torch.testing.assert_close(raw.backbone.queries.detach(), record.steps[-1]["backbone.queries"])
    assert main(["eval", str(run_dir), "--metrics", "test_ema_export.QuerySum"]) == 0
    values = pd.read_csv(run_dir / "metrics.csv").dropna(subset=["probe/query_sum"])
    assert list(values["step"]) == [3]  # re-run at step 3: replaced, not a second value
    assert values["probe/query_sum"].iloc[0] == pytest.approx(averages["backbone.queries"].sum().item(), rel=1e-5)

    assert main(["export", str(run_dir), str(tmp_path / "head")]) == 0
    assert "exported:" in capsys.readouterr().out
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    assert config["source"]["ema"] is True and config["source"]["step"] == 3
    assert config["target_shape"] == list(module.encoder.grid_shape)
    head = ExportedHead.from_pretrained(tmp_path / "head")
    assert not hasattr(head, "backbone") and sum(p.numel() for p in head.parameters()) == \
        sum(p.numel() for p in module.trainable_parameters())
    torch.testing.assert_close(head.queries.detach(), averages["backbone.queries"])
    stats = head.objective.net.cond_norm
    assert int(stats.batches) == 3 and not torch.equal(stats.mean, torch.zeros_like(stats.mean))
    torch.testing.assert_close(stats.mean, module.objective.net.cond_norm.mean)
    cond = module.conditioning(["a red circle", "a blue star"])
    ours = head.sample(cond, generator=generators([3, 4]), steps=2)
    theirs = module.generate_features(["a red circle", "a blue star"], generator=generators([3, 4]), steps=2)
    torch.testing.assert_close(ours, theirs)

    assert main(["export", str(run_dir), str(tmp_path / "raw"), "--no-ema"]) == 0
    torch.testing.assert_close(ExportedHead.from_pretrained(tmp_path / "raw").queries.detach(),
                               record.steps[-1]["backbone.queries"])
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ExportedHead.from_pretrained(tmp_path)


class Interrupt(L.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == 2:
            raise RuntimeError("simulated crash")


def test_resume_continues_the_same_ema(tiny_models, tiny_shards, tmp_path):
    spec = ema_spec(tiny_models, tiny_shards, tmp_path / "a", max_steps=4, checkpoint_every_n_steps=2)
    spec["eval"]["metrics"] = []
    straight = fit(parse_run(spec))
    spec["results_dir"] = str(tmp_path / "b")
    run = parse_run(spec)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(run, extra_callbacks=(Interrupt(),))
    resumed = fit(run, resume=True)
    a, b = ema_of(straight), ema_of(resumed)
    assert a["n_averaged"] == b["n_averaged"] == 4
    for name in a["averages"]:
        torch.testing.assert_close(a["averages"][name], b["averages"][name], atol=1e-6, rtol=1e-5)
    states = [torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"] for d in (straight, resumed)]
    key = "objective.net.cond_norm.var"
    assert states[0]["objective.net.cond_norm.batches"] == states[1]["objective.net.cond_norm.batches"] == 4
    torch.testing.assert_close(states[0][key], states[1][key])


def test_ema_decay_is_validated():
    spec = {"backbone": {"model": "/nonexistent"}, "encoder": {"name": "vae", "model": "/nonexistent"},
            "train": {"ema_decay": 1.0}}
    with pytest.raises(ConfigError, match=r"train.ema_decay: 1.0 must be in \(0, 1\)"):
        parse_run(spec)
