"""Plugins by name or dotted path; a new objective is one new file."""

import sys
import textwrap

from ablate.cli import main
from ablate.registry import get_registry


def test_builtin_plugins_are_registered():
    assert {"mse", "flow_matching"} <= set(get_registry("objective").names())
    assert {"clip", "vae"} <= set(get_registry("encoder").names())
    assert {"webdataset", "folder", "parquet"} <= set(get_registry("dataset").names())


def test_list_command_prints_plugins(capsys):
    assert main(["list", "objectives"]) == 0
    out = capsys.readouterr().out
    assert "flow_matching" in out and "mse" in out and out.startswith("objective:")
    assert main(["list", "gizmos"]) == 2


def test_out_of_tree_objective_by_dotted_path(tmp_path, monkeypatch):
    """A user's own file, no edit to ablate: built and trained through the registry."""
    (tmp_path / "my_objectives.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        import torch
        from ablate.objectives import Objective

        class L1(Objective):
            @dataclass
            class Config:
                scale: float = 1.0

            def __init__(self, cfg, **ctx):
                super().__init__(cfg, **ctx)
                c, h, w = self.target_shape
                self.proj = torch.nn.Linear(self.cond_dim, c * h * w)

            def predict(self, cond):
                return self.proj(cond.mean(1)).view(-1, *self.target_shape)

            def loss(self, cond, target):
                return {"loss": self.cfg.scale * (self.predict(cond) - target).abs().mean()}

            def sample(self, cond, generator=None, steps=None, guidance=None, sampler=None):
                return self.predict(cond)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    obj = get_registry("objective").build({"name": "my_objectives.L1", "scale": 2.0},
                                          cond_dim=8, num_queries=4, target_shape=(3, 2, 2))
    cond = __import__("torch").randn(5, 4, 8)
    assert obj.loss(cond, obj.sample(cond))["loss"].item() == 0.0
    sys.modules.pop("my_objectives", None)
