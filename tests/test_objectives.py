"""Objectives: the generic contract over every registered objective (the checks of
``ablate/plugin_check.py``, which ``ablate check-plugin`` runs on out-of-tree plugins), then
closed-form checks of MSE and flow matching.

Generic tests build each plugin small from its ``tiny_config()`` (its default ``Config()``
when it has none). A new objective file is picked up here with no edit; the tiny fit + eval
of each one is in tests/test_plugin_check.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ablate import plugin_check
from ablate.config import ConfigError, from_dict, parse_run
from ablate.objectives.flow_matching import FlowMatching
from ablate.objectives.mse import MSE
from ablate.registry import get_registry

TARGET = (6, 4, 4)  # [C, h, w]
COND_DIM = 12
OBJECTIVES = get_registry("objective").items()
UNIT_CHECKS = plugin_check.checks_for("objective", fit=False)


def build(cls, target_shape=TARGET, cond_dim=COND_DIM, **overrides):
    cfg = cls.tiny_config()
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    n = cls.required_queries(cfg, target_shape) or 5
    return cls(cfg, cond_dim=cond_dim, num_queries=n, target_shape=target_shape)


def batch(obj, b: int = 3):
    return torch.randn(b, obj.num_queries, obj.cond_dim), torch.randn(b, *obj.target_shape)


# --------------------------------------------------------------------------------------
# Generic contract, every registered objective
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("check", UNIT_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name,cls", OBJECTIVES)
def test_contract(name, cls, check):
    check(cls)


@pytest.mark.parametrize("name,cls", OBJECTIVES)
def test_spec_by_name_builds_the_plugin_config(name, cls):
    """The registry reads YAML arguments into the plugin's own Config and refuses typos."""
    tiny = cls.tiny_config()
    got_cls, cfg = get_registry("objective").config({"name": name, **dataclasses.asdict(tiny)})
    assert got_cls is cls and cls.plugin_name == name and cfg == tiny
    with pytest.raises(ConfigError, match=r"objective\.no_such_key: unknown key; valid keys: \["):
        get_registry("objective").config({"name": name, "no_such_key": 1}, "objective")


def test_samples_per_row_generators_match_ablate_rng():
    """A list of generators: row i is exactly what generator i alone draws."""
    obj = build(FlowMatching).eval()
    obj.velocity = lambda x, t, cond, guidance=1.0: torch.zeros_like(x)
    cond = torch.randn(2, 5, COND_DIM)
    x = obj.sample(cond, generator=plugin_check.generators([4, 9]), steps=2)
    for i, seed in enumerate((4, 9)):
        torch.testing.assert_close(x[i], torch.randn(TARGET, generator=torch.Generator().manual_seed(seed)))


def test_contract_checks_catch_a_list_unaware_sampler():
    class ListUnaware(FlowMatching):
        @torch.no_grad()
        def sample(self, cond, generator=None, steps=None, guidance=None, sampler=None):
            return torch.randn((cond.shape[0], *self.target_shape), generator=generator)

    plugin_check.sample_with_one_generator(ListUnaware)  # what the old generic test called
    with pytest.raises(AssertionError, match="fails on a list of generators.*self.randn"):
        plugin_check.sample_with_a_generator_per_row(ListUnaware)


def test_contract_checks_catch_a_loss_with_its_own_rng():
    import random

    class PythonRNG(MSE):  # python's random is not reseeded per step: resume is not exact
        def loss(self, cond, target):
            return super().loss(cond, target + random.random())

    with pytest.raises(AssertionError, match="differs under the same torch.manual_seed"):
        plugin_check.loss_draws_from_the_global_rng(PythonRNG)

    class FixedNoise(FlowMatching):  # the same noise at every step
        @classmethod
        def tiny_config(cls):  # no condition dropout: only the noise could vary
            return dataclasses.replace(FlowMatching.tiny_config(), cond_dropout=0.0)

        def sample_noise(self, target, generator=None):
            return torch.randn(target.shape, generator=torch.Generator().manual_seed(0))

        def sample_time(self, batch, device, generator=None):
            return torch.full((batch,), 0.5)

    with pytest.raises(AssertionError, match="same under another torch.manual_seed"):
        plugin_check.loss_draws_from_the_global_rng(FixedNoise)


def test_samplers_are_declared_and_validated_in_the_spec():
    assert FlowMatching.samplers() == ["euler", "heun"] and MSE.samplers() == []
    spec = {"backbone": {"model": "/nonexistent"}, "encoder": {"name": "vae", "model": "/nonexistent"},
            "objective": {"name": "flow_matching"}, "eval": {"sampler": "dpm"}}
    with pytest.raises(ConfigError, match=r"eval\.sampler: 'dpm' is not a sampler of objective "
                                          r"'flow_matching'; choose one of \['euler', 'heun'\]"):
        parse_run(spec)
    spec.update(objective={"name": "mse"}, eval={"sampler": "euler"})
    with pytest.raises(ConfigError, match="eval.sampler: 'euler' .* 'mse'; it is deterministic"):
        parse_run(spec)
    spec["eval"] = {"sampler": None}
    assert parse_run(spec).eval.sampler is None


def test_a_subclass_adds_a_sampler_without_overriding_sample():
    from ablate.objectives import sampler

    calls = []

    class Counting(FlowMatching):
        @sampler("counting")
        def counting_step(self, x, t, t_next, cond, guidance=1.0):
            calls.append(float(t))
            return self.euler_step(x, t, t_next, cond, guidance)

    assert Counting.samplers() == ["counting", "euler", "heun"]
    obj = build(Counting).eval()
    cond = torch.randn(2, 5, COND_DIM)
    gen = plugin_check.generators([1, 2])
    out = obj.sample(cond, generator=gen, steps=3, sampler="counting")
    assert len(calls) == 3
    torch.testing.assert_close(out, obj.sample(cond, generator=plugin_check.generators([1, 2]), steps=3,
                                               sampler="euler"))
    Counting(dataclasses.replace(Counting.tiny_config(), sampler="counting"), cond_dim=COND_DIM,
             num_queries=5, target_shape=TARGET)  # the config's default sampler may be the new one
    with pytest.raises(ValueError, match=r"'rk4' is not a sampler.*\['counting', 'euler', 'heun'\]"):
        build(Counting, sampler="rk4")


def test_x1_mse_is_logged_only_on_the_linear_path():
    assert "x1_mse" in build(FlowMatching).loss(*batch(build(FlowMatching)))

    class Cosine(FlowMatching):  # another path, same clean estimate: x1_mse would be wrong
        def interpolant(self, x0, x1, t):
            a = torch.sin(t * torch.pi / 2).view(-1, 1, 1, 1)
            return a * x1 + (1 - a) * x0

    obj = build(Cosine)
    assert "x1_mse" not in obj.loss(*batch(obj))


# --------------------------------------------------------------------------------------
# MSE
# --------------------------------------------------------------------------------------


def test_mse_projects_each_query_to_its_grid_cell():
    obj = build(MSE)
    cond, target = batch(obj)
    pred = obj.predict(cond)
    W, b = obj.proj.weight, obj.proj.bias
    w = TARGET[2]
    for i in (0, 5, 15):  # token i is grid cell (i // w, i % w)
        torch.testing.assert_close(pred[:, :, i // w, i % w], cond[:, i] @ W.T + b)
    torch.testing.assert_close(obj.loss(cond, target)["loss"], F.mse_loss(pred, target))
    gen = torch.Generator().manual_seed(1)
    torch.testing.assert_close(obj.sample(cond, generator=gen, steps=7, guidance=9.0), pred)


def test_mse_query_count_mismatch_says_what_to_do():
    with pytest.raises(ValueError, match=r"16.*but got num_queries = 10.*backbone\.num_queries"):
        MSE(MSE.Config(), cond_dim=COND_DIM, num_queries=10, target_shape=TARGET)
    assert MSE.required_queries(MSE.Config(), (1792, 8, 8)) == 64


# --------------------------------------------------------------------------------------
# Flow matching
# --------------------------------------------------------------------------------------


def test_interpolant_and_target_velocity():
    obj = build(FlowMatching)
    x0, x1 = torch.randn(3, *TARGET), torch.randn(3, *TARGET)
    t = torch.tensor([0.0, 0.3, 1.0])
    xt = obj.interpolant(x0, x1, t)
    for i in range(3):
        torch.testing.assert_close(xt[i], t[i] * x1[i] + (1 - t[i]) * x0[i])
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[2], x1[2])
    torch.testing.assert_close(obj.target_velocity(x0, x1, t), x1 - x0)


def test_euler_step_on_linear_field():
    obj = build(FlowMatching)
    a, b = -0.7, torch.randn(*TARGET)
    obj.velocity = lambda x, t, cond, guidance=1.0: a * x + b
    x = torch.randn(2, *TARGET)
    t, t_next = torch.tensor(0.2), torch.tensor(0.45)
    torch.testing.assert_close(obj.euler_step(x, t, t_next, None), x + 0.25 * (a * x + b))


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_solvers_are_exact_where_they_should_be(sampler):
    """Euler is exact for a constant field, Heun for a field linear in t; the whole sample()
    loop must then land on x(1) = x(0) + integral of v over [0, 1]."""
    obj = build(FlowMatching, shift=2.0)  # a non-uniform time grid on purpose
    a, b = torch.randn(*TARGET), torch.randn(*TARGET) if sampler == "heun" else 0.0
    obj.velocity = lambda x, t, cond, guidance=1.0: a + b * t
    cond = torch.randn(2, 5, COND_DIM)
    x1 = obj.sample(cond, generator=torch.Generator().manual_seed(3), steps=4, sampler=sampler)
    x0 = torch.randn((2, *TARGET), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(x1, x0 + a + b / 2)
    if sampler == "heun":
        t0, t1 = torch.tensor(0.1), torch.tensor(0.6)
        torch.testing.assert_close(obj.heun_step(x0, t0, t1, cond),
                                   x0 + a * 0.5 + b * (t1**2 - t0**2) / 2)


def test_guidance_formula():
    obj = build(FlowMatching)
    with torch.no_grad():
        for p in obj.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, t, cond = torch.randn(2, *TARGET), torch.rand(2), torch.randn(2, 5, COND_DIM)
    v_c = obj.net(x, t, cond)
    v_u = obj.net(x, t, torch.zeros_like(cond))
    assert not torch.allclose(v_c, v_u)
    # (batched vs separate forward passes round differently: 1e-5 was flaky)
    torch.testing.assert_close(obj.velocity(x, t, cond, guidance=3.0), v_u + 3.0 * (v_c - v_u),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(obj.velocity(x, t, cond, guidance=1.0), v_c)


def test_time_sampling_maps():
    def gen():
        return torch.Generator().manual_seed(7)

    obj = build(FlowMatching, time_sampling="logit_normal", logit_normal_mean=0.5,
                logit_normal_std=1.5)
    expected = torch.sigmoid(0.5 + 1.5 * torch.randn(1000, generator=gen()))
    torch.testing.assert_close(obj.sample_time(1000, "cpu", gen()), expected)
    uniform = build(FlowMatching).sample_time(1000, "cpu", gen())
    torch.testing.assert_close(uniform, torch.rand(1000, generator=gen()))

    shifted = build(FlowMatching, shift=3.0)
    t = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(shifted.shift_time(t), torch.tensor([0.0, 0.25, 1.0]))
    s = 1 - torch.rand(50)  # SD3's shift acts on the noise level s = 1 - t
    torch.testing.assert_close(1 - shifted.shift_time(1 - s), 3 * s / (1 + 2 * s))
    grid = shifted.time_grid(10, "cpu")
    assert grid[0] == 0 and grid[-1] == 1 and (grid.diff() > 0).all()
    torch.testing.assert_close(build(FlowMatching).shift_time(t), t)


def test_cond_dropout_zeroes_whole_rows_in_training_only():
    obj = build(FlowMatching, cond_dropout=0.5)
    cond = torch.randn(64, 5, COND_DIM) + 3.0  # no accidental zeros
    dropped_cond, dropped = obj.drop_condition(cond, torch.Generator().manual_seed(0))
    assert 0 < dropped.sum() < 64
    assert (dropped_cond[dropped] == 0).all()
    torch.testing.assert_close(dropped_cond[~dropped], cond[~dropped])
    obj.eval()
    same, none = obj.drop_condition(cond)
    assert torch.equal(same, cond) and not none.any()


def test_flow_matching_loss_is_the_velocity_mse():
    obj = build(FlowMatching, cond_dropout=0.0)
    with torch.no_grad():
        for p in obj.parameters():
            p.add_(0.1 * torch.randn_like(p))
    cond, x1 = batch(obj)
    out = obj.loss(cond, x1, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # same draws, same order: noise, then time
    x0 = torch.randn(x1.shape, generator=g)
    t = torch.rand(3, generator=g)
    xt = t.view(-1, 1, 1, 1) * x1 + (1 - t.view(-1, 1, 1, 1)) * x0
    torch.testing.assert_close(out["loss"], F.mse_loss(obj.net(xt, t, cond), x1 - x0))


def test_flow_matching_config_and_checkpointing():
    with pytest.raises(ConfigError, match="cond_dropout"):
        from_dict(FlowMatching.Config, {"cond_dropout": 1.5}, "objective")
    with pytest.raises(ValueError, match="'rk4' is not a sampler of objective 'flow_matching'"):
        build(FlowMatching, sampler="rk4")
    obj = build(FlowMatching)
    obj.gradient_checkpointing = True
    assert obj.net.gradient_checkpointing
    with pytest.raises(ValueError, match="'rk4' is not a sampler"):
        obj.sample(torch.randn(1, 5, COND_DIM), sampler="rk4")
