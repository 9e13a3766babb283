"""The frozen LM + learnable queries."""

import pytest
import torch

from ablate.backbone import Backbone
from ablate.config import BackboneConfig

CAPTIONS = ["a red circle",
            "two blue squares left of a green star and a white cross on the black background",
            "a star"]


@pytest.fixture(scope="module")
def backbone(tiny_models):
    return Backbone(BackboneConfig(model=str(tiny_models["llama"])), num_queries=5)


def test_output_shape_and_frozen(backbone):
    out = backbone(CAPTIONS)
    assert out.shape == (3, 5, backbone.hidden_size)
    assert not any(p.requires_grad for p in backbone.lm.parameters())
    assert backbone.queries.requires_grad and not backbone.lm.training
    backbone.train()
    assert not backbone.lm.training


@pytest.mark.parametrize("cached", [True, False])
def test_batch_matches_one_by_one(backbone, cached):
    """Left padding must put every row's queries right after its own prompt."""
    backbone.cfg.reuse_prompt_cache = cached
    batched = backbone(CAPTIONS)
    single = torch.cat([backbone([c]) for c in CAPTIONS])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    backbone.cfg.reuse_prompt_cache = True


def test_prompt_cache_path_equals_full_pass(backbone):
    backbone.cfg.reuse_prompt_cache = False
    full = backbone(CAPTIONS)
    backbone.cfg.reuse_prompt_cache = True
    cached = backbone(CAPTIONS)
    torch.testing.assert_close(full, cached, atol=1e-5, rtol=1e-4)


def test_gradient_reaches_queries_only(backbone):
    backbone.queries.grad = None
    backbone(CAPTIONS).square().sum().backward()
    assert backbone.queries.grad is not None and backbone.queries.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.lm.parameters())


def test_prompt_template_and_chat_template(tiny_models):
    chat = Backbone(BackboneConfig(model=str(tiny_models["llama"])), 2)
    text = chat.format_prompt("a red star")
    assert "Please generate an image based on the following caption: a red star" in text
    assert text.startswith("<s>user") and text.rstrip().endswith("assistant :")
    plain = Backbone(BackboneConfig(model=str(tiny_models["llama_plain"])), 2)
    assert plain.format_prompt("a red star") == ("Please generate an image based on the "
                                                 "following caption: a red star")
    assert plain(["a red star"]).shape == (1, 2, plain.hidden_size)
