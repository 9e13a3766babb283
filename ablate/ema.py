"""EMA of what trains (``train.ema_decay``): the queries and the objective head, nothing else.

Lightning's ``EMAWeightAveraging`` deep-copies the whole module, frozen LM included; here the
average is one tensor per trainable parameter, updated after every optimizer step with
torch's EMA rule (``swa_utils.get_ema_multi_avg_fn``): ``ema <- decay * ema + (1 - decay) * p``,
starting from the weights after the first step (``AveragedModel``'s convention). It lives in
the checkpoint as this callback's state (``checkpoint["callbacks"]["ablate.ema"]``), so a
resumed run continues the same average; evaluation during training swaps it in and back
(``ema_weights``), and ``ablate eval`` / ``sample`` / ``export`` load it (``apply_ema``).
"""

from __future__ import annotations

import contextlib

import lightning as L
import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn

from ablate.config import ConfigError

STATE_KEY = "ablate.ema"


def trainable_named_parameters(module) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of what trains, named as in an uncompiled module's state dict."""
    trainable = {id(p) for p in module.trainable_parameters()}
    return [(name.replace("_orig_mod.", ""), p) for name, p in module.named_parameters()
            if id(p) in trainable]


class EMA(L.Callback):
    def __init__(self, decay: float):
        if not 0 < decay < 1:
            raise ConfigError(f"train.ema_decay: {decay} must be in (0, 1)")
        self.decay = decay
        self._update = get_ema_multi_avg_fn(decay)
        self.params: list[torch.nn.Parameter] = []
        self.names: list[str] = []
        self.averages: list[torch.Tensor] = []
        self.n_averaged = 0
        self._loaded: dict | None = None
        self._last_step: int | None = None

    @property
    def state_key(self) -> str:
        return STATE_KEY

    def on_fit_start(self, trainer, module) -> None:
        if type(trainer.strategy).__name__ == "FSDPStrategy":
            raise ConfigError("train.ema_decay is not supported with train.strategy: fsdp "
                              "(the averaged parameters are sharded); use ddp or leave it unset")
        named = trainable_named_parameters(module)
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.averages = [p.detach().clone() for p in self.params]
        self._last_step = trainer.global_step
        if self._loaded is not None:
            self._restore(self._loaded)

    @torch.no_grad()
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last_step:  # no optimizer step (accumulating, skipped)
            return
        self._last_step = trainer.global_step
        current = [p.detach() for p in self.params]
        if self.n_averaged == 0:
            for avg, p in zip(self.averages, current):
                avg.copy_(p)
        else:
            self._update(self.averages, current, self.n_averaged)
        self.n_averaged += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "n_averaged": self.n_averaged,
                "averages": {n: a.detach().clone() for n, a in zip(self.names, self.averages)}}

    def load_state_dict(self, state: dict) -> None:
        if self.averages:
            self._restore(state)
        else:  # restored before on_fit_start built the averages: apply it there
            self._loaded = state

    def _restore(self, state: dict) -> None:
        missing = sorted(set(self.names) - set(state["averages"]))
        if missing:
            raise ValueError(f"the checkpoint's EMA lacks {missing[:3]}: was it trained with another head?")
        for name, avg in zip(self.names, self.averages):
            avg.copy_(state["averages"][name])
        self.n_averaged = state["n_averaged"]
        self._loaded = None

    @contextlib.contextmanager
    def swapped(self):
        """The EMA weights in place of the trained ones, and back (nothing if none yet)."""
        if self.n_averaged == 0:
            yield
            return
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
            for p, avg in zip(self.params, self.averages):
                p.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, old in zip(self.params, saved):
                    p.copy_(old)


def ema_weights(trainer, module):
    """``EMA.swapped()`` of the trainer's EMA callback, or a no-op when there is none."""
    ema = next((c for c in trainer.callbacks if isinstance(c, EMA)), None)
    return ema.swapped() if ema is not None else contextlib.nullcontext()


def ema_state(checkpoint: dict) -> dict | None:
    """The EMA saved in a Lightning checkpoint dict, or None (no EMA, or no step averaged)."""
    state = (checkpoint.get("callbacks") or {}).get(STATE_KEY)
    return state if state and state.get("n_averaged", 0) > 0 else None


@torch.no_grad()
def apply_ema(module, checkpoint: dict) -> bool:
    """Load a checkpoint's EMA into the module's trainable parameters; False if it has none."""
    state = ema_state(checkpoint)
    if state is None:
        return False
    for name, p in trainable_named_parameters(module):
        p.copy_(state["averages"][name].to(p.device, p.dtype))
    return True
