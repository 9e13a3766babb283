"""Objectives: a generic contract test over every registered objective, then closed-form
checks of MSE and flow matching.

Generic tests build each plugin small: a plugin may define a classmethod ``tiny_config()``
returning a CPU-test-sized ``Config``; without one its default ``Config()`` is used. A new
objective file is picked up here with no edit.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ablate.config import ConfigError, from_dict
from ablate.objectives.flow_matching import FlowMatching
from ablate.objectives.mse import MSE
from ablate.registry import get_registry

TARGET = (6, 4, 4)  # [C, h, w]
COND_DIM = 12
OBJECTIVES = get_registry("objective").items()


def build(cls, target_shape=TARGET, cond_dim=COND_DIM, **overrides):
    tiny = getattr(cls, "tiny_config", None)
    cfg = tiny() if tiny is not None else (cls.Config() if cls.Config is not None else None)
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    n = cls.required_queries(cfg, target_shape) or 5
    return cls(cfg, cond_dim=cond_dim, num_queries=n, target_shape=target_shape)


def batch(obj, b: int = 3):
    return torch.randn(b, obj.num_queries, obj.cond_dim), torch.randn(b, *obj.target_shape)


# --------------------------------------------------------------------------------------
# Generic contract, every registered objective
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,cls", OBJECTIVES)
def test_default_config_validates(name, cls):
    _, cfg = get_registry("objective").config({"name": name})
    assert cls.plugin_name == name and cfg is not None


@pytest.mark.parametrize("name,cls", OBJECTIVES)
def test_loss_is_a_finite_scalar(name, cls):
    obj = build(cls)
    out = obj.loss(*batch(obj))
    assert "loss" in out and out["loss"].ndim == 0
    for key, value in out.items():
        assert torch.is_tensor(value) and value.ndim == 0 and torch.isfinite(value), key


@pytest.mark.parametrize("name,cls", OBJECTIVES)
def test_gradients_reach_every_parameter(name, cls):
    obj = build(cls)
    # Zero-initialised heads (DiT's adaLN / output) get no gradient upstream of them on the
    # very first step; shake the init so the check is about wiring, not about init.
    with torch.no_grad():
        for p in obj.parameters():
            p.add_(0.1 * torch.randn_like(p))
    obj.loss(*batch(obj, b=4))["loss"].backward()
    params = [(n, p) for n, p in obj.named_parameters() if p.requires_grad]
    assert params, "an objective should own a trainable head"
    for n, p in params:
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {n}"


@pytest.mark.parametrize("name,cls", OBJECTIVES)
def test_sample_shape_finite_and_seeded(name, cls):
    obj = build(cls)
    obj.eval()
    cond, _ = batch(obj, b=2)

    def draw(seed):
        return obj.sample(cond, generator=torch.Generator().manual_seed(seed), steps=2)

    x = draw(0)
    assert x.shape == (2, *TARGET) and torch.isfinite(x).all()
    assert torch.equal(x, draw(0))


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
    torch.testing.assert_close(obj.velocity(x, t, cond, guidance=3.0), v_u + 3.0 * (v_c - v_u),
                               atol=1e-5, rtol=1e-5)
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
    with pytest.raises(ConfigError, match="sampler"):
        from_dict(FlowMatching.Config, {"sampler": "rk4"}, "objective")
    obj = build(FlowMatching)
    obj.gradient_checkpointing = True
    assert obj.net.gradient_checkpointing
    with pytest.raises(ValueError, match="unknown sampler"):
        obj.sample(torch.randn(1, 5, COND_DIM), sampler="rk4")
