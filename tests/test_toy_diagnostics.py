"""The toy-study diagnostics in research/toy_diagnostics/ run on a shrunk study (figures only, no targets)."""

import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import shrink_study, write_spec
from PIL import Image

ROOT = Path(__file__).parent.parent


def _shrunk_demo(tiny_models, tiny_shards, tmp_path: Path) -> Path:
    """experiments/demo.yaml shrunk onto the tiny models and shards, written to tmp_path."""
    spec = shrink_study(yaml.safe_load((ROOT / "experiments" / "demo.yaml").read_text()),
                        tiny_models, tiny_shards, tmp_path / "results")
    return write_spec(spec, tmp_path / "demo.yaml")


def test_objective_only_trains_the_head_and_logs_the_run_metrics(tiny_models, tiny_shards, tmp_path,
                                                                monkeypatch, capsys):
    study = _shrunk_demo(tiny_models, tiny_shards, tmp_path)
    out = tmp_path / "objective_only"
    monkeypatch.setattr(sys, "argv", ["objective_only.py", str(study), "--cell", "vae+fm", "--pairs", "6",
                                      "--every", "2", "--out", str(out), "--set", "train.max_steps=3"])
    runpy.run_path(str(ROOT / "research" / "toy_diagnostics" / "objective_only.py"), run_name="__main__")
    assert "cached 6 pairs" in capsys.readouterr().out
    rows = pd.read_csv(out / "vae+fm" / "metrics.csv")
    assert rows["step"].tolist() == [2, 3]  # every 2 steps and at the last one
    assert rows["train/loss"].notna().all() and (rows["train/loss"] > 0).all()
    metric_columns = [c for c in rows.columns if c.split("/")[0] in {"geneval", "dpg", "fid", "diversity"}]
    assert metric_columns  # the study's own eval.metrics ran
    assert rows["recall/ratio"].notna().all() and (rows["recall/ratio"] > 0).all()
    recorded = yaml.safe_load((out / "vae+fm" / "config.yaml").read_text())
    assert recorded["train"]["max_steps"] == 3 and "git" in recorded["provenance"]


def test_objective_only_reports_the_heads_ema_beside_its_raw_weights(tiny_models, tiny_shards, tmp_path,
                                                                    monkeypatch):
    study = _shrunk_demo(tiny_models, tiny_shards, tmp_path)
    out = tmp_path / "objective_only"
    monkeypatch.setattr(sys, "argv", ["objective_only.py", str(study), "--cell", "vae+fm", "--pairs", "6",
                                      "--every", "2", "--out", str(out), "--recall", "0",
                                      "--set", "train.max_steps=2", "train.ema_decay=0.9"])
    runpy.run_path(str(ROOT / "research" / "toy_diagnostics" / "objective_only.py"), run_name="__main__")
    row = pd.read_csv(out / "vae+fm" / "metrics.csv").iloc[-1]
    raw = sorted(c for c in row.index if c.split("/")[0] in {"geneval", "dpg", "fid", "diversity"})
    assert raw and all(pd.notna(row[f"ema/{c}"]) for c in raw)  # every raw metric, again from the EMA
    assert (out / "vae+fm" / "ema" / "eval" / "0000002").is_dir()  # its items apart from the raw ones'


@pytest.mark.parametrize("kind", ["words", "prompt"])
def test_swapped_conditioning_reads_the_caption_padded_to_the_query_count(tiny_models, tiny_shards, tmp_path, kind):
    from ablate.module import AblationModule
    from ablate.study.spec import load_study

    swap = runpy.run_path(str(ROOT / "research" / "toy_diagnostics" / "objective_only.py"))["swap_conditioning"]
    run = {c.cell: c for c in load_study(_shrunk_demo(tiny_models, tiny_shards, tmp_path)).cells}["vae+fm"].run
    module = AblationModule.from_run(run)
    swap(module, kind, seed=0)
    captions = ["a red circle", "a photo of two blue squares left of a green star", "a red circle"]
    states = module.conditioning(captions)
    n, hidden = module.backbone.num_queries, module.backbone.hidden_size
    assert states.shape == (3, n, hidden) and states.grad_fn is None
    lengths = module.backbone.tokenize(captions)["attention_mask"].sum(-1)
    for row, length in zip(states, lengths):  # left-aligned padding reads as zeros
        real = min(int(length), n)
        assert (row[:n - real] == 0).all() and (row[n - real:].abs().sum(-1) > 0).all()
    assert torch.equal(states[0], states[2]) and not torch.equal(states[0], states[1])
    # the head trains on them: one loss, finite
    loss = module.objective.loss(states, torch.randn(3, *module.objective.target_shape))["loss"]
    assert torch.isfinite(loss)


class _Sampler:
    """An objective stand-in whose samples are a fixed function of the conditioning rows."""

    def __init__(self, fn):
        self.fn = fn

    def eval(self):
        return self

    def sample(self, cond, generator=None):
        return self.fn(cond)


def test_conditioning_recall_is_0_for_a_memoriser_and_1_for_a_model_that_ignores_its_condition():
    recall = runpy.run_path(str(ROOT / "research" / "toy_diagnostics" / "objective_only.py"))["conditioning_recall"]
    torch.manual_seed(0)
    targets = torch.randn(6, 4, 2, 2)
    conds = torch.arange(6.0)[:, None, None].expand(6, 3, 5)  # row i identifies pair i
    memoriser = _Sampler(lambda c: targets[c[:, 0, 0].long()])
    ignorer = _Sampler(lambda c: torch.full((len(c), 4, 2, 2), 0.3))
    swapper = _Sampler(lambda c: targets[(c[:, 0, 0].long() + 1) % 6])  # always a wrong pair's target
    assert recall(memoriser, conds, targets) == 0.0
    assert abs(recall(ignorer, conds, targets) - 1.0) < 1e-6  # own and other distances average alike
    assert recall(swapper, conds, targets) > 1.0


DIAGNOSTICS = ROOT / "research" / "toy_diagnostics"


def _conditioning_check():
    return runpy.run_path(str(DIAGNOSTICS / "conditioning_check.py"))


def _run_conditioning_check(monkeypatch, study: Path, *args: str) -> None:
    """``conditioning_check.py STUDY --cell vae+fm ARGS`` as its command line runs it."""
    monkeypatch.setattr(sys, "argv", ["conditioning_check.py", str(study), "--cell", "vae+fm", *args])
    runpy.run_path(str(DIAGNOSTICS / "conditioning_check.py"), run_name="__main__")


def test_conditioning_check_judges_ground_truth_renders_right_and_wrong_labels_wrong():
    from ablate.toy.scenes import COLORS, Obj, Scene, render

    check = _conditioning_check()
    colors = list(COLORS)
    shapes = ["circle", "square"] * (len(colors) // 2)
    images = [render(Scene([Obj(s, c, "large", 0.5, 0.5)], "gray")) for c, s in zip(colors, shapes)]
    right = check["judge_single_objects"](images, colors, shapes)
    assert right == {"found": 1.0, "colour": 1.0, "shape": 1.0}
    wrong = check["judge_single_objects"](images, colors[1:] + colors[:1], shapes[1:] + shapes[:1])
    assert wrong["colour"] == 0.0 and wrong["shape"] == 0.0 and wrong["found"] == 1.0
    assert check["judge_single_objects"]([Image.new("RGB", (64, 64), (128, 128, 128))], ["red"], ["circle"]) \
        == {"found": 0.0, "colour": 0.0, "shape": 0.0}


def test_conditioning_check_modes_carry_the_label_or_standardise_the_states():
    conditioner = _conditioning_check()["Conditioner"]
    torch.manual_seed(0)
    states = 5.0 + 0.1 * torch.randn(40, 3, 4)  # a large shared part, a small varying one
    colors, shapes = torch.tensor([0, 0, 1]), torch.tensor([2, 2, 2])
    label = conditioner("label", None, states, seed=0)(["a", "b", "c"], colors, shapes)
    assert label.shape == (3, 3, 4) and torch.equal(label[0], label[1]) and not torch.equal(label[0], label[2])
    std = conditioner("lm-std", None, states, seed=0)
    z = std([], colors, shapes, lm_states=states)
    assert torch.allclose(z.mean(0), torch.zeros(3, 4), atol=1e-4) and torch.allclose(z.std(0), torch.ones(3, 4), atol=1e-2)
    assert torch.equal(conditioner("lm", None, states, seed=0)([], colors, shapes, lm_states=states), states)


def test_conditioning_check_centre_moves_the_object_and_keeps_the_rest():
    from ablate.toy.judges import segment
    from ablate.toy.scenes import render, sample_scene

    scene = sample_scene(np.random.default_rng(3), 1)
    scene.objects[0].x, scene.objects[0].y = 0.2, 0.7
    moved = _conditioning_check()["centred"](scene)
    assert (moved.objects[0].x, moved.objects[0].y) == (0.5, 0.5) and scene.objects[0].x == 0.2  # a copy
    assert (moved.objects[0].shape, moved.objects[0].color, moved.objects[0].size, moved.background) == (
        scene.objects[0].shape, scene.objects[0].color, scene.objects[0].size, scene.background)
    (found,) = segment(render(moved))
    x0, y0, x1, y1 = found["box"]
    assert abs((x0 + x1) / 2 - 32) <= 3 and abs((y0 + y1) / 2 - 32) <= 3


def test_conditioning_check_runs_every_mode_on_a_shrunk_study(tiny_models, tiny_shards, tmp_path, monkeypatch, capsys):
    study = _shrunk_demo(tiny_models, tiny_shards, tmp_path)
    out = tmp_path / "conditioning_check"
    _run_conditioning_check(monkeypatch, study, "--pairs", "6", "--steps", "2", "--every", "2", "--captions", "mixed",
                            "--centre", "--out", str(out), "--world", "free", "--probe-shapes", "circle,star")
    printed = capsys.readouterr().out
    assert "6 single-object pairs of the free world (mixed captions, centred)" in printed
    assert "shape accuracy of the samples (chance 0.50)" in printed
    rows = pd.read_csv(out / "vae+fm" / "conditioning_check.csv")
    assert rows["mode"].tolist() == ["label", "lm", "lm-std"] and (rows["step"] == 2).all()
    assert (rows["weights"] == "raw").all()
    assert (rows["seconds"] > 0).all() and (rows["cpu_seconds"] > 0).all()
    assert rows[["found", "colour", "shape"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (rows["loss"] > 0).all()
    assert sorted(p.name for p in (out / "vae+fm" / "samples").iterdir()) == [
        "label_0000002.png", "lm-std_0000002.png", "lm_0000002.png"]
    recorded = yaml.safe_load((out / "vae+fm" / "config.yaml").read_text())
    assert recorded["provenance"]["conditioning_check"]["captions"] == "mixed" and "git" in recorded["provenance"]
    assert recorded["provenance"]["conditioning_check"]["centre"] is True
    assert recorded["provenance"]["conditioning_check"]["world"] == "free"


def test_positive_control_trains_on_the_slots_world_from_a_label(tiny_models, tiny_shards, tmp_path, monkeypatch,
                                                                 capsys):
    study = _shrunk_demo(tiny_models, tiny_shards, tmp_path)
    out = tmp_path / "positive_control"
    _run_conditioning_check(monkeypatch, study, "--modes", "label", "--pairs", "6", "--steps", "4", "--every", "2",
                            "--world", "slots", "--out", str(out))
    assert "6 single-object pairs of the slots world (short captions)" in capsys.readouterr().out
    rows = pd.read_csv(out / "vae+fm" / "conditioning_check.csv")
    assert rows["step"].tolist() == [2, 4] and (rows["mode"] == "label").all()
    assert rows["seconds"].is_monotonic_increasing and rows["cpu_seconds"].is_monotonic_increasing
    assert rows[["colour", "shape"]].apply(lambda c: c.between(0, 1)).all().all()
    sheet = Image.open(out / "vae+fm" / "samples" / "label_0000004.png")
    assert sheet.size[1] > sheet.size[0] / 10 * 6  # seven probe rows (every shape) of ten colours


def test_unet_flow_matching_plugin_loads_by_dotted_path_and_fits_a_batch(monkeypatch):
    from ablate.objectives.flow_matching import FlowMatching
    from ablate.registry import get_registry

    monkeypatch.syspath_prepend(str(ROOT / "research" / "toy_diagnostics"))
    objectives = get_registry("objective")
    cls = objectives.get("unet_flow_matching.UNetFlowMatching")
    assert issubclass(cls, FlowMatching) and "unet_flow_matching.UNetFlowMatching" not in objectives.names()
    torch.manual_seed(0)
    head = cls(cls.tiny_config(), cond_dim=12, num_queries=3, target_shape=(4, 8, 8))
    assert type(head.net).__name__ == "ConditionalUNet"
    cond, target = torch.randn(2, 3, 12), torch.randn(2, 4, 8, 8)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    first = None
    for _ in range(30):  # one fixed batch and noise draw: the UNet must fit it
        loss = head.loss(cond, target, generator=torch.Generator().manual_seed(0))["loss"]
        first = loss.item() if first is None else first
        loss.backward(), opt.step(), opt.zero_grad()
    assert loss.item() < 0.5 * first
    head.eval()
    assert head.sample(cond, generator=torch.Generator().manual_seed(0)).shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="the 7x7 target grid must be square and divisible by 2"):
        cls(cls.tiny_config(), cond_dim=12, num_queries=3, target_shape=(4, 7, 7))


def test_conditioning_check_samples_an_ema_of_the_head(tiny_models, tiny_shards, tmp_path, monkeypatch):
    study = _shrunk_demo(tiny_models, tiny_shards, tmp_path)
    out = tmp_path / "conditioning_check"
    _run_conditioning_check(monkeypatch, study, "--pairs", "6", "--modes", "label", "--steps", "2", "--every", "2",
                            "--ema", "0.9", "--out", str(out))
    rows = pd.read_csv(out / "vae+fm" / "conditioning_check.csv")
    assert rows["weights"].tolist() == ["raw", "ema"] and (rows["mode"] == "label").all()
    assert sorted(p.name for p in (out / "vae+fm" / "samples").iterdir()) == [
        "label_0000002.png", "label_ema_0000002.png"]
    avg_fn = _conditioning_check()["ema_with_warmup"](0.999)
    old, new = torch.zeros(3), torch.ones(3)
    assert torch.allclose(avg_fn(old, new, torch.tensor(0)), torch.full((3,), 0.9))  # decay 1/10 at the start
    assert torch.allclose(avg_fn(old, new, torch.tensor(10**6)), torch.full((3,), 0.001))  # then the decay


def test_decoder_tolerance_perturbations():
    perturb = runpy.run_path(str(ROOT / "research" / "toy_diagnostics" / "decoder_tolerance.py"))["perturb"]
    torch.manual_seed(0)
    feats = torch.randn(3, 4, 8, 8)
    assert torch.equal(perturb(feats, "noise", 0.0, seed=0), feats)
    noisy = perturb(feats, "noise", 0.5, seed=0)
    assert torch.allclose((noisy - feats).std(), 0.5 * feats.std(), rtol=0.15)
    assert torch.equal(noisy, perturb(feats, "noise", 0.5, seed=0))  # seeded
    flat = torch.full((1, 2, 8, 8), 3.0)
    assert torch.allclose(perturb(flat, "lowpass", 2, seed=0), flat)  # no detail to lose
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 2.0 - 1  # finest detail only
    assert torch.allclose(perturb(checker.expand(1, 2, 8, 8), "lowpass", 2, seed=0), torch.zeros(1, 2, 8, 8))
    assert not torch.allclose(perturb(feats, "lowpass", 2, seed=0), feats)
    with pytest.raises(ValueError, match="lowpass 3.0: must be a whole number that divides the 8x8 grid"):
        perturb(feats, "lowpass", 3.0, seed=0)
    mean = feats.mean(0, keepdim=True)
    assert torch.equal(perturb(feats, "shrink", 0.0, seed=0), feats)
    assert torch.allclose(perturb(feats, "shrink", 1.0, seed=0), mean.expand_as(feats))
    assert torch.allclose(perturb(feats, "shrink", 0.25, seed=0) - mean, 0.75 * (feats - mean), atol=1e-6)
    with pytest.raises(ValueError, match="unknown perturbation 'blur'"):
        perturb(feats, "blur", 1, seed=0)


def test_decoder_tolerance_runs_on_a_shrunk_study(tiny_models, tiny_shards, tmp_path, monkeypatch, capsys):
    study = _shrunk_demo(tiny_models, tiny_shards, tmp_path)
    out = tmp_path / "decoder_tolerance"
    monkeypatch.setattr(sys, "argv", ["decoder_tolerance.py", str(study), "--cell", "vae+fm", "--images", "4",
                                      "--noise", "0,0.5", "--lowpass", "2", "--out", str(out)])
    runpy.run_path(str(ROOT / "research" / "toy_diagnostics" / "decoder_tolerance.py"), run_name="__main__")
    rows = pd.read_csv(out / "vae+fm" / "decoder_tolerance.csv")
    assert list(zip(rows["perturbation"], rows["level"])) == [("noise", 0.0), ("noise", 0.5), ("lowpass", 2.0)]
    assert rows[["shapes", "colors", "exact"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (rows["images"] == 4).all() and "VAEEncoder" in capsys.readouterr().out


def test_pooled_regression_starts_from_the_ridge_solution(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(DIAGNOSTICS))
    from pooled_regression import PooledRegression

    torch.manual_seed(0)
    shape, cond_dim = (3, 2, 2), 5
    solution = {"mean_x": torch.randn(cond_dim), "std_x": torch.rand(cond_dim) + 0.5,
                "weight": torch.randn(12, cond_dim), "bias": torch.randn(12)}
    torch.save(solution, tmp_path / "ridge.pt")
    head = PooledRegression(PooledRegression.Config(ridge_init=str(tmp_path / "ridge.pt")),
                            cond_dim=cond_dim, num_queries=4, target_shape=shape)
    cond = torch.randn(2, 4, cond_dim)
    pooled = (cond.mean(1) - solution["mean_x"]) / solution["std_x"]
    expected = (pooled @ solution["weight"].T + solution["bias"]).reshape(2, *shape)
    assert torch.allclose(head.sample(cond), expected, atol=1e-5)
    plain = PooledRegression(PooledRegression.Config(), cond_dim=cond_dim, num_queries=4, target_shape=shape)
    assert plain.sample(cond).shape == (2, *shape) and not torch.allclose(plain.sample(cond), expected)


def test_conditioning_check_trains_the_queries_through_the_lm_at_their_own_lr(tiny_models, tiny_shards, tmp_path,
                                                                               monkeypatch, capsys):
    """``--train-queries``: the lm mode's conditioning is recomputed by the backbone at every
    step, so the queries move (at ``train.query_lr``) and the probe samples use the moved ones."""
    study = _shrunk_demo(tiny_models, tiny_shards, tmp_path)
    seen = {}
    real_adamw = torch.optim.AdamW

    def spy(groups, **kwargs):  # the optimiser the script builds, and the queries it starts from
        opt = real_adamw(groups, **kwargs)
        seen["opt"], seen["start"] = opt, opt.param_groups[-1]["params"][0].detach().clone()
        return opt

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    out = tmp_path / "trained_queries"
    _run_conditioning_check(monkeypatch, study, "--modes", "lm", "--train-queries", "--pairs", "6", "--steps", "4",
                            "--every", "4", "--world", "slots", "--out", str(out), "--set", "train.query_lr=0.05", "train.weight_decay=0")
    capsys.readouterr()
    groups = seen["opt"].param_groups
    assert len(groups) == 2 and groups[1]["lr"] == 0.05 and len(groups[1]["params"]) == 1
    queries = groups[1]["params"][0]
    assert queries.requires_grad and queries.shape == seen["start"].shape
    assert not torch.equal(queries.detach(), seen["start"])  # the gradient reached them through the LM
    rows = pd.read_csv(out / "vae+fm" / "conditioning_check.csv")
    assert rows["mode"].tolist() == ["lm"] and (rows["loss"] > 0).all()
    assert (out / "vae+fm" / "samples" / "lm_trained_queries_0000004.png").is_file()


@pytest.fixture(scope="module")
def trained_vae_fm(tiny_models, tiny_shards, tmp_path_factory) -> Path:
    """The shrunk demo's VAE+FM cell trained 2 steps: its run folder."""
    from ablate.cli import main

    tmp = tmp_path_factory.mktemp("trained")
    study = _shrunk_demo(tiny_models, tiny_shards, tmp)
    assert main(["grid", str(study), "--only", "vae+fm", "--set", "train.max_steps=2",
                 "--set", "eval.every_n_steps=0", "--set", "eval.at_start=false", "--set", "eval.at_end=false"]) == 0
    return tmp / "results" / "demo" / "vae+fm-seed0"


def test_probe_checkpoint_asks_every_colour_and_shape_of_a_trained_run(trained_vae_fm, tmp_path, monkeypatch, capsys):
    from ablate.module import AblationModule
    from ablate.toy.scenes import COLORS, SHAPES

    run_dir = trained_vae_fm
    asked = []
    real = AblationModule.conditioning

    def spy(self, captions):
        asked.extend(captions)
        return real(self, captions)

    monkeypatch.setattr(AblationModule, "conditioning", spy)
    out = tmp_path / "probe"
    monkeypatch.setattr(sys, "argv", ["probe_checkpoint.py", str(run_dir), "--out", str(out), "--steps", "2"])
    runpy.run_path(str(DIAGNOSTICS / "probe_checkpoint.py"), run_name="__main__")
    assert asked == [f"a photo of a {c} {s}" for s in SHAPES for c in COLORS]  # a row per shape
    row = pd.read_csv(out / "probe.csv").iloc[-1]
    assert row["run"] == "vae+fm-seed0" and row["step"] == 2 and row["checkpoint"].endswith(".ckpt")
    assert all(0 <= row[k] <= 1 for k in ("found", "colour", "shape"))
    sheet = Image.open(out / "vae+fm-seed0_0000002.png")
    assert sheet.size[1] > sheet.size[0] / len(COLORS) * (len(SHAPES) - 1)
    assert "step 2, captions short, found" in capsys.readouterr().out
    assert row["captions"] == "short"


def test_probe_checkpoint_detailed_prompts_describe_the_one_object_asked_for():
    from ablate.toy.scenes import COLORS

    prompts = runpy.run_path(str(DIAGNOSTICS / "probe_checkpoint.py"))["prompts"]
    colors, shapes = list(COLORS)[:4], ["circle", "star", "ring", "cross"]
    assert prompts(colors, shapes) == [f"a photo of a {c} {s}" for c, s in zip(colors, shapes)]
    detailed = prompts(colors, shapes, "detailed")
    assert detailed == prompts(colors, shapes, "detailed")  # seeded
    for text, color, shape in zip(detailed, colors, shapes):
        assert len(text.split()) > 25 and "one object" in text and f"{color} {shape}" in text


def test_conditioning_check_refuses_train_queries_without_the_lm_mode(monkeypatch, tmp_path):
    with pytest.raises(SystemExit, match="--train-queries trains the queries of the lm mode; --modes 'label'"):
        _run_conditioning_check(monkeypatch, tmp_path / "unused.yaml", "--modes", "label", "--train-queries")


def test_caption_gain_shuffles_within_groups_and_compares_at_the_same_noise(trained_vae_fm, tmp_path, monkeypatch,
                                                                           capsys):
    from ablate.module import AblationModule

    gain = runpy.run_path(str(DIAGNOSTICS / "caption_gain.py"))
    images, captions, scenes = gain["held_out_pairs"](6, 1.0, "slots", objects=2)
    assert images.shape == (6, 3, 64, 64) and images.dtype == torch.uint8 and len(captions) == 6
    assert all(len(x["objects"]) == 2 for x in scenes)
    groups = ["a", "b", "a", "c", "b", "a", "a", "b"]
    order = gain["shuffled_within"](groups, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(len(groups)))  # a permutation
    assert [groups[i] for i in order] == groups  # that keeps every item in its group

    # A condition that carries nothing: every variant then scores the same loss at the same
    # noise and times, so the gains are exactly 0 (different draws would make them differ).
    module = AblationModule.load(str(trained_vae_fm / "checkpoints" / "last.ckpt"))
    shape = (module.backbone.num_queries, module.backbone.hidden_size)
    monkeypatch.setattr(module, "conditioning", lambda captions: torch.ones(len(captions), *shape))
    images = torch.randint(0, 255, (6, 3, 64, 64), dtype=torch.uint8)
    flat = gain["caption_losses"](module, images, [f"caption {i}" for i in range(6)], groups[:6], repeats=2,
                                  batch_size=4)
    assert flat["true"] == flat["shuffled"] == flat["same_background"] and flat["gain"] == flat["object_gain"] == 0

    out = tmp_path / "gain"
    monkeypatch.setattr(sys, "argv", ["caption_gain.py", str(trained_vae_fm), "--out", str(out), "--n", "8",
                                      "--repeats", "1"])
    runpy.run_path(str(DIAGNOSTICS / "caption_gain.py"), run_name="__main__")
    row = pd.read_csv(out / "caption_gain.csv").iloc[-1]
    assert row["run"] == "vae+fm-seed0" and row["step"] == 2 and row["captions"] == "mixed" and row["objects"] == "1-4"
    assert row["gain"] == pytest.approx(1 - row["true"] / row["shuffled"])
    assert all(np.isfinite(row[k]) and row[k] > 0 for k in ("true", "shuffled", "same_background", "null"))
    assert "step 2, captions mixed, objects 1-4, true" in capsys.readouterr().out
