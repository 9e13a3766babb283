"""Training objectives: how the backbone's query states become target features.

An objective owns its trainable head, its noise/time sampling and its loss (the
``training_losses`` shape of DiT / SiT). Adding one is a new file in this folder (or a dotted
class path in YAML, ``objective: {name: mypkg.losses.MyObjective}``): it registers itself
with ``@register("objective", "name")``, and ``ablate check-plugin mypkg.losses.MyObjective``
runs on it the same contract checks the test suite runs on the built-ins.

The contract (``ablate/plugin_check.py`` enforces each point):

``Config``
    A dataclass of the plugin's YAML arguments (every field with a default), validated
    strictly before anything loads. ``tiny_config()`` returns a CPU-test-sized instance when
    the defaults are big: the generic tests and ``check-plugin`` build the plugin from it.

``__init__(cfg, *, cond_dim, num_queries, target_shape)``
    Build the head. ``required_queries(cfg, target_shape)`` returns the query count the
    objective needs (MSE: one per target token) or None for any.

``loss(cond, target) -> {"loss": scalar, **logs}``
    ``cond`` is the query states ``[B, N, D]``, ``target`` the encoder features
    ``[B, C, h, w]``. Every extra value must be a detached scalar: each is logged as
    ``train/<key>``. **Random source**: draw noise, times and dropout from torch's global
    RNG (``generator=None``, e.g. ``self.randn(shape, device)``). The module reseeds it at
    every step from (seed, step, rank) (``AblationModule.step_seed``), so a resumed run draws
    exactly what an uninterrupted one would have. Never seed or create a generator of your
    own inside ``loss``, and never use ``random`` / ``numpy.random``. ``loss`` may accept an
    optional ``generator`` for tests, as flow matching does.

``sample(cond, generator=None, steps=None, guidance=None, sampler=None) -> features``
    Features shaped ``[B, *target_shape]``. ``generator`` is None, one ``torch.Generator``
    for the whole batch, **or a list of one generator per row** -- evaluation always passes
    the list, so a sample made for (prompt, seed) is the same in any batch. ``torch.randn``
    does not accept a list: draw through ``self.randn`` / ``self.rand`` (``ablate.rng.draw``),
    which handle all three. ``steps`` / ``guidance`` / ``sampler`` of None mean the plugin's
    own defaults; a deterministic objective ignores them.

Samplers
    ``samplers()`` lists the names ``eval.sampler`` and ``sample(sampler=...)`` accept (an
    unknown one fails at spec validation, naming the valid ones). Add one without
    overriding ``sample()``: decorate a one-step method with ``@sampler("name")`` in a
    subclass. For flow matching the step signature is
    ``step(x, t, t_next, cond, guidance=1.0) -> x_next``; ``sample()`` runs it
    over ``time_grid(steps)``.

``gradient_checkpointing``
    A bool attribute the module sets from ``train.gradient_checkpointing``. A deep head
    should honour it (recompute activations in backward; flow matching passes it to its
    DiT); a shallow one may ignore it, as MSE does.

Logged extras that assume a path
    Flow matching's ``train/x1_mse`` (the clean estimate ``x_t + (1 - t) v``) holds only for
    the linear path ``x_t = t x1 + (1 - t) x0`` with ``v = x1 - x0``: a subclass that
    overrides ``interpolant`` / ``target_velocity`` must override ``clean_estimate`` too (or
    its ``x1_mse`` is not logged). Losses of different objectives are on different scales:
    the study plots draw ``train/loss`` per objective, never ranked across them.
"""

from __future__ import annotations

import torch
from torch import nn

from ablate.rng import Generators, draw


def sampler(name: str):
    """Mark an objective method as the one-step rule of sampler ``name`` (see the module
    docstring); ``Objective.samplers()`` then lists it and ``sampler_step(name)`` returns it."""
    def mark(fn):
        fn.sampler_name = name
        return fn

    return mark


class Objective(nn.Module):
    Config = None  # a dataclass of the plugin's YAML arguments
    plugin_name: str = "?"
    gradient_checkpointing: bool = False  # set by the module; honour it in a deep head

    def __init__(self, cfg, *, cond_dim: int, num_queries: int,
                 target_shape: tuple[int, int, int]):
        super().__init__()
        self.cfg = cfg
        self.cond_dim = cond_dim
        self.num_queries = num_queries
        self.target_shape = tuple(target_shape)

    @classmethod
    def tiny_config(cls):
        """A CPU-sized ``Config`` for the generic tests (override when the default is big)."""
        return cls.Config() if cls.Config is not None else None

    @classmethod
    def required_queries(cls, cfg, target_shape: tuple[int, int, int]) -> int | None:
        """Number of queries this objective needs for a target grid, or None for any."""
        return None

    # ---- samplers ------------------------------------------------------------------

    @classmethod
    def _sampler_methods(cls) -> dict[str, str]:
        found = {}
        for klass in reversed(cls.__mro__):  # subclasses may add or re-mark samplers
            for attr, value in vars(klass).items():
                name = getattr(value, "sampler_name", None)
                if name:
                    found[name] = attr
        return found

    @classmethod
    def samplers(cls) -> list[str]:
        """Names accepted as ``sampler`` (empty for a deterministic objective)."""
        return sorted(cls._sampler_methods())

    @classmethod
    def check_sampler(cls, name: str | None) -> None:
        """ValueError naming the valid samplers when ``name`` is not one (None is always ok)."""
        if name is None or name in cls._sampler_methods():
            return
        valid = cls.samplers()
        raise ValueError(f"{name!r} is not a sampler of objective {cls.plugin_name!r}; "
                         + (f"choose one of {valid}" if valid else
                            "it is deterministic and takes none (leave it unset)"))

    def sampler_step(self, name: str):
        """The bound one-step method of sampler ``name``."""
        self.check_sampler(name)
        return getattr(self, self._sampler_methods()[name])

    # ---- random draws: one generator, a list of one per row, or the global RNG -----

    @staticmethod
    def randn(shape, device, generator: Generators = None, dtype=torch.float32) -> torch.Tensor:
        """Standard normal noise; row ``i`` from ``generator[i]`` when given a list."""
        return draw("randn", shape, device, dtype, generator)

    @staticmethod
    def rand(shape, device, generator: Generators = None, dtype=torch.float32) -> torch.Tensor:
        """Uniform [0, 1) draws; row ``i`` from ``generator[i]`` when given a list."""
        return draw("rand", shape, device, dtype, generator)

    # ---- the contract --------------------------------------------------------------

    def loss(self, cond: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, generator: Generators = None,
               steps: int | None = None, guidance: float | None = None,
               sampler: str | None = None) -> torch.Tensor:
        raise NotImplementedError
