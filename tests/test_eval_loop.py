"""Evaluation inside training and on checkpoints: callback, `ablate eval`, `ablate sample`."""

from dataclasses import dataclass

import pandas as pd
import pytest
import torch
from conftest import tiny_run_spec

from ablate.cli import main
from ablate.config import parse_run
from ablate.eval.metrics import Metric
from ablate.eval.sampling import ImageGenerator, sample_seed
from ablate.train import fit, read_status


class FeatureNorm(Metric):
    """A test metric (chosen by dotted path): mean norm of sampled features."""

    @dataclass
    class Config:
        n: int = 2

    def compute(self, generator, out_dir):
        feats = generator.features(["a red circle"] * self.cfg.n, list(range(self.cfg.n)))
        return {"test/feature_norm": feats.flatten(1).norm(dim=1).mean().item()}


class Broken(Metric):
    def compute(self, generator, out_dir):
        raise RuntimeError("judge weights missing")


@pytest.fixture(scope="module")
def evaluated_run(tiny_models, tiny_shards, tmp_path_factory):
    spec = tiny_run_spec(tiny_models, tiny_shards, tmp_path_factory.mktemp("res"), "vae",
                         "flow_matching", max_steps=4)
    spec["eval"] = {"every_n_steps": 2, "sample_prompts": ["a red circle", "a blue star"],
                    "sample_steps": 2, "metrics": [
                        {"name": "test_eval_loop.FeatureNorm", "label": "norm"},
                        {"name": "test_eval_loop.Broken", "label": "broken"},
                        {"name": "diversity", "num_prompts": 2, "num_seeds": 2}]}
    run = parse_run(spec)
    return fit(run)


def test_eval_every_n_steps_lands_in_metrics_csv(evaluated_run):
    status = read_status(evaluated_run)
    assert status["state"] == "finished"  # a broken metric did not stop it, but it says so:
    assert status["eval_errors"]["broken"]["steps"] == [0, 2, 4]
    assert status["eval_errors"]["broken"]["error"] == "RuntimeError: judge weights missing"
    assert set(status["eval_errors"]) == {"broken"}
    metrics = pd.read_csv(evaluated_run / "metrics.csv")
    evals = metrics.dropna(subset=["test/feature_norm"])
    assert list(evals["step"]) == [0, 2, 4]
    assert evals["diversity/feature"].notna().all()
    assert (evals["eval/error/broken"] == 1).all()
    assert (evals["time/eval"] > 0).all() and evals["time/eval/norm"].notna().all()
    assert metrics["train/loss"].notna().sum() == 4
    for step in (0, 2, 4):
        assert (evaluated_run / "samples" / f"{step:07d}" / "grid.png").is_file()
    assert "judge weights missing" in (evaluated_run / "eval" / "0000002" / "broken" / "error.txt").read_text()


def test_eval_cli_appends_to_the_run(evaluated_run, capsys):
    old = pd.read_csv(evaluated_run / "metrics.csv")
    in_training = old.dropna(subset=["test/feature_norm"])["test/feature_norm"].iloc[-1]
    assert main(["eval", str(evaluated_run), "--metrics", "norm,diversity"]) == 0
    out = capsys.readouterr().out
    assert "test/feature_norm" in out and "diversity/feature" in out
    after = pd.read_csv(evaluated_run / "metrics.csv")
    assert len(after) == len(old) + 1 and after["step"].iloc[-1] == 4
    # step 4 was measured in training: the re-run's values replace those (one per step)
    evals = after.dropna(subset=["test/feature_norm"])
    assert list(evals["step"]) == [0, 2, 4]
    # the checkpoint reproduces the in-training number exactly (fixed seeds per sample)
    assert evals["test/feature_norm"].iloc[-1] == pytest.approx(in_training, rel=1e-5)


def test_sample_cli(evaluated_run, tmp_path, capsys):
    out = tmp_path / "imgs"
    assert main(["sample", str(evaluated_run), "--prompt", "a red circle", "--n", "3",
                 "--out", str(out), "--steps", "2"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["0000.png", "0001.png", "0002.png", "grid.png"]
    assert main(["sample", str(tmp_path / "nowhere"), "--prompt", "x"]) == 2


def test_per_sample_seeds_do_not_depend_on_batching(evaluated_run):
    from ablate.eval.runner import load_checkpoint

    module, _, _ = load_checkpoint(evaluated_run, "cpu")
    prompts = ["a red circle", "a blue star", "a green square"]
    seeds = [sample_seed(p, 0) for p in prompts]
    one = ImageGenerator(module, steps=2, batch_size=1).features(prompts, seeds)
    three = ImageGenerator(module, steps=2, batch_size=3).features(prompts, seeds)
    torch.testing.assert_close(one, three, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(one[0], ImageGenerator(module, steps=2).features(prompts[:1], [seeds[0] + 1])[0])
