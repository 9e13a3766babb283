"""`ablate bench` prints real figures of a few training steps."""

import json

from conftest import tiny_run_spec, write_spec

from ablate.cli import main


def test_bench_json(tiny_models, tiny_shards, tmp_path, capsys):
    spec = write_spec(tiny_run_spec(tiny_models, tiny_shards, tmp_path, "clip", "flow_matching"),
                      tmp_path / "run.yaml")
    assert main(["bench", str(spec), "--steps", "2", "--warmup", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["device"] == "cpu" and result["mfu"] is None
    assert result["step_time_s"] > 0 and result["samples_per_s"] > 0
    assert result["flops_per_step"] > 0 and result["params_trainable"] > 0
    assert result["params_frozen"] > 0  # the frozen LM and encoder


def test_bench_frozen_queries(tiny_models, tiny_shards, tmp_path, capsys):
    """train.query_lr: 0 leaves the query states without a graph (bench crashed hooking them):
    the step's parts are still timed, the whole backward counted as the head's."""
    spec = tiny_run_spec(tiny_models, tiny_shards, tmp_path, "vae", "flow_matching")
    spec["train"]["query_lr"] = 0.0
    assert main(["bench", str(write_spec(spec, tmp_path / "run.yaml")), "--steps", "2", "--warmup", "1",
                 "--json"]) == 0
    share = json.loads(capsys.readouterr().out)["share"]
    assert share["query_backward"] == 0 and share["head"] > 0


def test_recorded_run_config_is_a_run_spec(tiny_models, tiny_shards, tmp_path, capsys):
    """A run's config.yaml (spec + provenance) benches / reloads as it is."""
    from ablate.config import load_run, to_dict
    from ablate.provenance import write_run_config

    spec = write_spec(tiny_run_spec(tiny_models, tiny_shards, tmp_path, "vae", "mse"), tmp_path / "run.yaml")
    run = load_run(spec)
    recorded = tmp_path / "run" / "config.yaml"
    write_run_config(run, recorded, {"resumed_from_step": None})
    assert "provenance" in recorded.read_text()
    assert to_dict(load_run(recorded)) == to_dict(run)
    assert main(["bench", str(recorded), "--steps", "1", "--warmup", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run"] == run.name


def test_grouped_query_attention_flops_count_repeated_heads():
    """The fused kernels' formulas (used on GPU) applied to grouped-query shapes give what the
    math path counts with K / V repeated to every query head (matmuls, closed form)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ablate.bench import _attention_flop_formulas

    b, heads, kv_heads, s_q, s_k, d = 2, 8, 2, 16, 24, 32
    q = torch.randn(b, heads, s_q, d)
    k, v = torch.randn(b, kv_heads, s_k, d), torch.randn(b, kv_heads, s_k, d)
    expected = 2 * (2 * b * heads * s_q * s_k * d)  # q @ k^T and p @ v
    with FlopCounterMode(display=False) as counter:  # explicit matmuls on repeated heads
        kr, vr = k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1)
        torch.softmax(q @ kr.transpose(-1, -2), -1) @ vr
    assert counter.get_total_flops() == expected
    formulas = _attention_flop_formulas()
    forward = formulas[torch.ops.aten._scaled_dot_product_flash_attention]
    backward = formulas[torch.ops.aten._scaled_dot_product_flash_attention_backward]
    assert forward(q.shape, k.shape, v.shape) == expected
    assert backward(q.shape, q.shape, k.shape, v.shape) == 2.5 * expected  # 5 matmuls backward


def test_bench_baseline_measures_both_paths_from_one_start(tiny_models, tiny_shards, tmp_path, capsys):
    """--baseline: the un-optimised step (encoder every step, full prompt pass) and the
    optimised one (cached targets, prompt KV reuse) on the same batches give the same losses;
    the parts of the step add up and the cached step spends nothing in the encoder."""
    spec = write_spec(tiny_run_spec(tiny_models, tiny_shards, tmp_path, "clip", "flow_matching"),
                      tmp_path / "run.yaml")
    assert main(["bench", str(spec), "--steps", "2", "--warmup", "1", "--baseline", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    base = result["baseline"]
    assert result["cached_targets"] and not base["cached_targets"]
    assert result["reuse_prompt_cache"] and not base["reuse_prompt_cache"]
    assert result["speedup"] == base["step_time_s"] / result["step_time_s"]
    assert len(result["losses"]["optimized"]) == len(result["losses"]["baseline"]) == 5
    assert result["loss_max_abs_diff"] < 1e-4
    # cached targets skip the encoder (what is left is reading a tensor), the baseline encodes
    assert result["share"]["encoder"] < base["share"]["encoder"]
    for share in (result["share"], base["share"]):
        assert abs(sum(share.values()) - 1) < 1e-3 and share["query_pass"] > 0 and share["head"] > 0


def test_largest_batch_doubles_then_bisects():
    from ablate.bench import largest_batch

    assert largest_batch(lambda b: b <= 100, start=8) in range(94, 101)  # within ~6 %
    assert largest_batch(lambda b: b <= 64, start=8) == 64
    assert largest_batch(lambda b: False, start=8) == 0
