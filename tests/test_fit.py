"""`ablate fit` end to end on tiny models: every cell, frozen parts, exact resume."""

import subprocess
import sys

import lightning as L
import pandas as pd
import pytest
import torch
import yaml
from conftest import tiny_run_spec, write_spec

from ablate.cli import main
from ablate.config import parse_run
from ablate.train import fit, read_status

CELLS = [("clip", "mse"), ("clip", "flow_matching"), ("vae", "flow_matching"), ("vae", "mse")]


@pytest.mark.parametrize("encoder, objective", CELLS)
def test_fit_cli_every_cell(tiny_models, tiny_shards, tmp_path, encoder, objective):
    spec = write_spec(tiny_run_spec(tiny_models, tiny_shards, tmp_path / "results", encoder, objective),
                      tmp_path / "run.yaml")
    assert main(["fit", str(spec), "--set", "train.max_steps=2"]) == 0
    run_dir = tmp_path / "results" / "test" / f"{encoder}-{objective}"
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics["step"]) == [0, 1]
    assert {"train/loss", "train/lr", "time/wall"} <= set(metrics.columns)
    assert metrics["train/loss"].notna().all()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["seed"] == 0 and config["train"]["max_steps"] == 2
    assert config["provenance"]["packages"]["torch"] == torch.__version__.split("+")[0]
    assert "commit" in config["provenance"]["git"]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert read_status(run_dir)["state"] == "finished"


def test_unreadable_samples_are_skipped_counted_and_reported(tiny_models, tiny_shards, tmp_path):
    spec = tiny_run_spec(tiny_models, tiny_shards, tmp_path, "vae", "mse", max_steps=2)
    spec["data"].update(batch_size=12, shuffle_buffer=1)  # 2 steps = one pass over both shards
    run_dir = fit(parse_run(spec))
    assert read_status(run_dir)["skipped"] == {"corrupt image (UnidentifiedImageError)": 1,
                                               "empty caption": 1}


def test_fit_refuses_to_clobber_and_overwrites_on_request(tiny_models, tiny_shards, tmp_path, capsys):
    spec = write_spec(tiny_run_spec(tiny_models, tiny_shards, tmp_path, "vae", "mse", max_steps=1),
                      tmp_path / "run.yaml")
    assert main(["fit", str(spec)]) == 0
    assert main(["fit", str(spec)]) == 2
    assert "pass --resume to continue it or --overwrite" in capsys.readouterr().err
    assert main(["fit", str(spec), "--overwrite"]) == 0


class Capture(L.Callback):
    def on_train_start(self, trainer, module):
        self.module = module
        self.initial = {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_only_queries_and_objective_head_train(tiny_models, tiny_shards, tmp_path):
    run = parse_run(tiny_run_spec(tiny_models, tiny_shards, tmp_path, "clip", "flow_matching"))
    capture = Capture()
    fit(run, extra_callbacks=(capture,))
    final = capture.module.state_dict()
    changed = {k for k, v in capture.initial.items() if not torch.equal(v, final[k])}
    assert "backbone.queries" in changed
    assert any(k.startswith("objective.") for k in changed)
    frozen = [k for k in changed if k.startswith(("backbone.lm.", "encoder."))]
    assert frozen == []
    # checkpoints carry only what trains
    ckpt = torch.load(run.run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert not any(k.startswith(("backbone.lm.", "encoder.")) for k in ckpt["state_dict"])


def test_query_lr_gives_the_queries_their_own_scheduled_lr(tiny_models, tiny_shards, tmp_path):
    from ablate.module import AblationModule

    spec = tiny_run_spec(tiny_models, tiny_shards, tmp_path, "clip", "mse")
    spec["train"].update(lr=1e-3, min_lr=1e-4, warmup_steps=0, query_lr=5e-2)
    module = AblationModule.from_run(parse_run(spec))
    opts = module.configure_optimizers()
    opt, sched = opts["optimizer"], opts["lr_scheduler"]["scheduler"]
    head, queries = opt.param_groups
    assert queries["params"] == [module.backbone.queries] and queries["lr"] == 5e-2
    assert head["lr"] == 1e-3 and len(head["params"]) == len(module.trainable_parameters()) - 1
    for _ in range(spec["train"]["max_steps"]):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4) and opt.param_groups[1]["lr"] == pytest.approx(5e-3)
    spec["train"]["query_lr"] = None  # unset: one group, as before
    assert len(AblationModule.from_run(parse_run(spec)).configure_optimizers()["optimizer"].param_groups) == 1


def test_query_lr_zero_freezes_the_queries_and_runs_the_lm_without_a_graph(tiny_models, tiny_shards, tmp_path):
    from ablate.module import AblationModule

    spec = tiny_run_spec(tiny_models, tiny_shards, tmp_path, "vae", "flow_matching")
    spec["train"]["query_lr"] = 0
    module = AblationModule.from_run(parse_run(spec))
    before = module.backbone.queries.detach().clone()
    assert not any(p is module.backbone.queries for p in module.trainable_parameters())
    opt = module.configure_optimizers()["optimizer"]
    assert len(opt.param_groups) == 1
    cond = module.conditioning(["a red circle", "two blue squares"])
    assert cond.grad_fn is None  # no graph through the LM
    loss = module.objective.loss(cond, torch.randn(2, *module.objective.target_shape))["loss"]
    loss.backward()
    opt.step()
    assert torch.equal(module.backbone.queries, before)
    assert any(p.grad is not None for p in module.objective.parameters())


class Interrupt(L.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == 2:
            raise RuntimeError("simulated crash")


def test_resume_is_exact(tiny_models, tiny_shards, tmp_path):
    """Also with cached targets (the default): the resumed stream skips cached records."""
    spec = tiny_run_spec(tiny_models, tiny_shards, tmp_path / "a", "clip", "flow_matching",
                         max_steps=4, checkpoint_every_n_steps=2)
    straight = fit(parse_run(spec))
    spec["results_dir"] = str(tmp_path / "b")
    run = parse_run(spec)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(run, extra_callbacks=(Interrupt(),))
    assert read_status(run.run_dir)["state"] == "failed"
    assert list((tmp_path / "b" / ".cache" / "features").glob("clip-*/units/*.json"))
    resumed = fit(run, resume=True)
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 4
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], atol=1e-6, rtol=1e-5)
    la = pd.read_csv(straight / "metrics.csv")["train/loss"]
    mb = pd.read_csv(resumed / "metrics.csv")
    assert list(mb["step"]) == [0, 1, 2, 3]
    torch.testing.assert_close(torch.tensor(la.values), torch.tensor(mb["train/loss"].values))
    assert yaml.safe_load((resumed / "config.yaml").read_text())["provenance"]["resumed_from_step"] == 2


def test_console_script_runs_a_fit(tiny_models, tiny_shards, tmp_path):
    """As a user runs it: the installed `ablate` entry point (through python -m)."""
    spec = write_spec(tiny_run_spec(tiny_models, tiny_shards, tmp_path, "vae", "mse", max_steps=1),
                      tmp_path / "run.yaml")
    out = subprocess.run([sys.executable, "-m", "ablate", "fit", str(spec)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "results:" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "ablate", "fit", str(spec), "--set", "train.lr=fast"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "train.lr: expected a number, got 'fast'" in bad.stderr


def test_fsdp_shards_only_what_trains(tiny_models, tiny_shards, tmp_path):
    """``train.strategy: fsdp`` leaves the frozen LM and encoder out of FSDP's flat parameters
    (bf16 frozen weights cannot be flattened with fp32 trainables, found on an H100); other
    strategies pass through to Lightning by name. (FSDP itself needs a GPU to run.)"""
    from lightning.pytorch.strategies import FSDPStrategy

    from ablate.module import AblationModule
    from ablate.train import make_strategy

    module = AblationModule.from_run(parse_run(tiny_run_spec(tiny_models, tiny_shards, tmp_path)))
    strategy = make_strategy("fsdp", module)
    assert isinstance(strategy, FSDPStrategy)
    ignored = strategy.kwargs["ignored_modules"]
    assert ignored == [module.backbone.lm, module.encoder]
    assert not any(p.requires_grad for m in ignored for p in m.parameters())
    trainable = {id(p) for p in module.trainable_parameters()}
    assert not trainable & {id(p) for m in ignored for p in m.parameters()}
    assert make_strategy("ddp", module) == "ddp" and make_strategy("auto", module) == "auto"
