"""Sample diversity: how different are samples of the same prompt under different seeds?

The paper's observation: an MSE head is deterministic, so every seed gives (nearly) the
same image, while flow matching gives diverse samples. Measured for K prompts x M seeds
as the mean pairwise distance between the M samples of a prompt, averaged over prompts,
in two spaces:

- ``feature``: the objective's target space (``generator.features``, before decoding);
  exactly 0 for a deterministic head;
- ``image``: a feature module on the decoded images (the FID pipeline of
  ``ablate.eval.scorers.fid``; by default downsampled pixels). Note a stochastic decoder (the CLIP
  diffusion decoder) adds diversity here even after an MSE head.

Seeds follow :func:`ablate.eval.sampling.sample_seed`, the rule every metric uses so that
runs and training steps see the same noise for the same (prompt, sample index).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ablate.eval.sampling import sample_seed
from ablate.eval.scorers.fid import FIDSettings, split_features


def mean_pairwise_distance(features: torch.Tensor, distance: Literal["l2", "cosine"] = "l2") -> float:
    """``features``: ``[K, M, ...]`` (K prompts, M samples each). Mean over prompts of the
    mean distance over the M(M-1)/2 sample pairs (L2 of the flattened features, or
    1 - cosine similarity)."""
    if features.dim() < 2 or features.shape[1] < 2:
        raise ValueError(f"need [K prompts, M >= 2 samples, ...], got {tuple(features.shape)}")
    x = features.detach().double().flatten(2)  # [K, M, D]
    if distance == "l2":
        # Direct differences, not the |a|^2 + |b|^2 - 2ab shortcut: identical samples give 0.
        d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    elif distance == "cosine":
        x = torch.nn.functional.normalize(x, dim=-1)
        d = 1 - x @ x.transpose(1, 2)
    else:
        raise ValueError(f"unknown distance {distance!r}; use l2 or cosine")
    m = x.shape[1]
    iu = torch.triu_indices(m, m, offset=1)
    return float(d[:, iu[0], iu[1]].mean())


def diversity(generator, prompts: list[str], num_seeds: int, image_extractor: nn.Module | None,
              settings: FIDSettings = FIDSettings(64, "clean"), batch_size: int = 16,
              distance: Literal["l2", "cosine"] = "l2") -> dict[str, float]:
    """``{"feature": ..., "image": ...}`` for ``prompts`` x ``num_seeds`` samples each.

    ``image_extractor=None`` skips the image space (and the decoding it needs).
    """
    flat_prompts = [p for p in prompts for _ in range(num_seeds)]
    seeds = [sample_seed(p, i) for p in prompts for i in range(num_seeds)]
    k, m = len(prompts), num_seeds
    chunks = [(flat_prompts[i:i + batch_size], seeds[i:i + batch_size])
              for i in range(0, len(seeds), batch_size)]
    feats = torch.cat([torch.as_tensor(generator.features(p, s)).cpu() for p, s in chunks])
    out = {"feature": mean_pairwise_distance(feats.reshape(k, m, *feats.shape[1:]), distance)}
    if image_extractor is not None:
        images = [im for p, s in chunks for im in generator.images(p, s)]
        img_feats = torch.from_numpy(split_features(images, image_extractor, settings, batch_size))
        out["image"] = mean_pairwise_distance(img_feats.reshape(k, m, -1), distance)
    return out
