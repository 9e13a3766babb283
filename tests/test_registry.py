"""Plugins by name or dotted path; a new objective is one new file."""

import sys
from pathlib import Path

import pytest
import torch

from ablate.cli import main
from ablate.config import ConfigError
from ablate.registry import get_registry

EXAMPLES = Path(__file__).parent.parent / "examples" / "plugins"


def test_builtin_plugins_are_registered():
    assert {"mse", "flow_matching"} <= set(get_registry("objective").names())
    assert {"clip", "vae"} <= set(get_registry("encoder").names())
    assert {"webdataset", "folder", "parquet"} <= set(get_registry("dataset").names())


def test_list_command_prints_plugins(capsys):
    assert main(["list", "objectives"]) == 0
    out = capsys.readouterr().out
    assert "flow_matching" in out and "mse" in out and out.startswith("objective:")
    assert main(["list", "gizmos"]) == 2


def test_out_of_tree_objective_by_dotted_path(monkeypatch):
    """A user's own file (examples/plugins/l1_regression.py), no edit to ablate: chosen by
    dotted path, built with its YAML arguments, and its loss is what the file says."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    obj = get_registry("objective").build({"name": "l1_regression.L1Regression", "scale": 2.0},
                                          cond_dim=8, num_queries=4, target_shape=(3, 2, 2))
    assert obj.cfg.scale == 2.0
    cond, target = torch.randn(5, 4, 8), torch.randn(5, 3, 2, 2)
    pred = obj.proj(cond).transpose(1, 2).reshape(5, 3, 2, 2)  # token i -> grid cell i
    torch.testing.assert_close(obj.loss(cond, target)["loss"], 2.0 * (pred - target).abs().mean())
    torch.testing.assert_close(obj.sample(cond, generator=None), pred)
    with pytest.raises(ConfigError, match="objective.scale: expected a number"):
        get_registry("objective").config({"name": "l1_regression.L1Regression", "scale": "x"}, "objective")
    sys.modules.pop("l1_regression", None)
