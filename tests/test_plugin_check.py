"""Every registered objective and encoder through a tiny fit + eval (the contract's slow
check), and `ablate check-plugin` on built-ins, out-of-tree examples and a broken plugin."""

from pathlib import Path

import pytest

from ablate import plugin_check
from ablate.cli import main
from ablate.config import ConfigError
from ablate.registry import get_registry

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples" / "plugins"
BROKEN = Path(__file__).parent / "plugin_examples"


@pytest.fixture(scope="module")
def world(tiny_models, tmp_path_factory):
    return plugin_check.TinyWorld(tmp_path_factory.mktemp("world"), llama=tiny_models["llama"],
                                  vae=tiny_models["vae"])


@pytest.mark.parametrize("name,cls", get_registry("objective").items())
def test_every_objective_fits_and_evaluates(world, name, cls):
    plugin_check.objective_fits_and_evaluates(cls, world)


@pytest.mark.parametrize("check", plugin_check.ENCODER_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name,cls", get_registry("encoder").items())
def test_every_encoder_meets_the_contract(world, name, cls, check):
    check(cls, world)


def test_check_plugin_passes_a_builtin(capsys, tmp_path):
    assert main(["check-plugin", "flow_matching", "--no-fit", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PASS  sample_with_a_generator_per_row" in out and "8 of 8 checks passed" in out


def test_check_plugin_passes_the_out_of_tree_examples(capsys, monkeypatch, world):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    results = plugin_check.run_checks("l1_regression.L1Regression", world=world)  # with the fit
    assert [r.check for r in results if not r.ok] == [] and len(results) == 9
    assert main(["check-plugin", "midpoint_sampler.MidpointFlowMatching", "--no-fit",
                 "--workdir", str(world.root)]) == 0
    assert "PASS  samplers_are_usable" in capsys.readouterr().out


def test_check_plugin_catches_a_broken_plugin(capsys, monkeypatch, world):
    """torch.randn(generator=<list>) in sample(): the per-row check fails, and so does the
    fit + eval, whose evaluation error is in the run's status.json, not swallowed."""
    monkeypatch.syspath_prepend(str(BROKEN))
    results = {r.check: r for r in plugin_check.run_checks("broken_noise.BrokenNoise", world=world)}
    failed = sorted(name for name, r in results.items() if not r.ok)
    assert failed == ["objective_fits_and_evaluates", "sample_with_a_generator_per_row",
                      "samplers_are_usable"]
    assert "fails on a list of generators" in results["sample_with_a_generator_per_row"].detail
    assert "evaluation failed" in results["objective_fits_and_evaluates"].detail
    assert "TypeError: randn() received an invalid combination" in results["objective_fits_and_evaluates"].detail
    assert main(["check-plugin", "broken_noise.BrokenNoise", "--no-fit", "--workdir", str(world.root)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  sample_with_a_generator_per_row" in out and "6 of 8 checks passed" in out


def test_check_plugin_refuses_what_is_not_a_plugin(capsys):
    with pytest.raises(ConfigError, match="neither an ablate.objectives.Objective nor"):
        plugin_check.resolve("ablate.config.RunConfig")
    assert main(["check-plugin", "nonesuch"]) == 2
    assert "not a registered objective or encoder" in capsys.readouterr().err
