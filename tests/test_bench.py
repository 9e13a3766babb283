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
