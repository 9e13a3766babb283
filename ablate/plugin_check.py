"""The plugin contract as checks: what ``ablate check-plugin`` and the generic tests run.

Each check is a function ``check(cls, world)`` that raises (an ``AssertionError`` saying what
is wrong) or returns None; ``run_checks`` runs them all and reports pass/fail per check. The
test suite parametrises the same functions over every registered objective and encoder, so
an out-of-tree plugin that passes ``ablate check-plugin`` meets what the built-ins meet.

``world`` is a ``TinyWorld``: a temp folder where a tiny LM, a tiny VAE and a few captioned
images are made on first use (the tests hand in their session-wide ones instead).
"""

from __future__ import annotations

import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from ablate.config import from_dict, to_dict
from ablate.eval.metrics import Metric
from ablate.rng import generators

TARGET = (6, 4, 4)  # [C, h, w] of the unit checks
COND_DIM = 12
CAPTIONS = ["a red circle", "a blue square left of a green star", "two yellow triangles",
            "a white cross on black", "a pink star", "three brown squares"]


# ---------------------------------------------------------------------------- the tiny world


class TinyWorld:
    """Tiny pretrained parts and data for a 2-step fit, built lazily under ``root``."""

    def __init__(self, root: str | Path | None = None, llama: str | Path | None = None,
                 vae: str | Path | None = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="ablate-check-"))
        self._llama, self._vae, self._images = llama, vae, None
        self._encoders: dict[type, object] = {}

    @property
    def llama(self) -> Path:
        if self._llama is None:
            from ablate.testing import tiny_llama

            self._llama = tiny_llama(self.root / "llama")
        return Path(self._llama)

    @property
    def vae(self) -> Path:
        if self._vae is None:
            from ablate.testing import tiny_vae

            self._vae = tiny_vae(self.root / "vae")
        return Path(self._vae)

    @property
    def images(self) -> Path:
        """Random 32x32 images with caption sidecars (the ``folder`` dataset layout)."""
        if self._images is None:
            import numpy as np
            from PIL import Image

            folder = self.root / "images"
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(0)
            for i in range(8):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
                (folder / f"{i}.txt").write_text(CAPTIONS[i % len(CAPTIONS)])
            self._images = folder
        return self._images

    def encoder_spec(self, cls) -> dict:
        """``{name, **tiny config}`` of an encoder class (its ``tiny_config(root)``)."""
        tiny = getattr(cls, "tiny_config", None)
        cfg = tiny(self.root / "encoders" / cls.__name__) if tiny is not None else None
        assert cfg is not None, (f"{qualname(cls)} declares no tiny_config(root): return a "
                                 "CPU-sized Config (building tiny weights under root) so it can be checked")
        return {"name": qualname(cls), **to_dict(cfg)}

    def encoder(self, cls):
        """The tiny encoder of ``cls``, built once."""
        if cls not in self._encoders:
            from ablate.registry import get_registry

            self._encoders[cls] = get_registry("encoder").build(self.encoder_spec(cls), where="encoder")
        return self._encoders[cls]


def qualname(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def tiny_objective(cls, target_shape=TARGET, cond_dim=COND_DIM):
    cfg = cls.tiny_config()
    n = cls.required_queries(cfg, target_shape) or 5
    return cls(cfg, cond_dim=cond_dim, num_queries=n, target_shape=target_shape)


def _inputs(obj, b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, obj.num_queries, obj.cond_dim, generator=g),
            torch.randn(b, *obj.target_shape, generator=g))


# ---------------------------------------------------------------------------- objective checks


def config_round_trips(cls, world=None):
    """tiny_config() is a valid Config and survives YAML (to_dict -> validation) unchanged."""
    cfg = cls.tiny_config()
    if cls.Config is None:
        return
    assert isinstance(cfg, cls.Config), f"tiny_config() returned {type(cfg).__name__}, not {cls.__name__}.Config"
    again = from_dict(cls.Config, to_dict(cfg), "objective")
    assert again == cfg, f"{to_dict(cfg)} does not read back as the same Config: {to_dict(again)}"


def loss_is_a_dict_of_finite_scalars(cls, world=None):
    obj = tiny_objective(cls)
    out = obj.loss(*_inputs(obj, 3))
    assert isinstance(out, dict) and "loss" in out, "loss() must return {'loss': scalar, ...}"
    for key, value in out.items():
        assert torch.is_tensor(value) and value.ndim == 0, f"loss()[{key!r}] is not a scalar tensor"
        assert torch.isfinite(value), f"loss()[{key!r}] = {value.item()} is not finite"
        assert key == "loss" or not value.requires_grad, f"loss()[{key!r}] is logged: detach it"


def loss_draws_from_the_global_rng(cls, world=None):
    """Same global seed, same loss: what makes a resumed run exact (module.step_seed); and
    for an objective that samples noise, another seed, another loss (fresh noise each step)."""
    obj = tiny_objective(cls)
    cond, target = _inputs(obj, 3)

    def loss_at(seed):
        torch.manual_seed(seed)
        return {k: v.detach() for k, v in obj.loss(cond, target).items()}

    first, again, other = loss_at(1234), loss_at(1234), loss_at(4321)
    for key in first:
        assert torch.equal(first[key], again[key]), (
            f"loss()[{key!r}] differs under the same torch.manual_seed: draw noise from torch's "
            "global RNG (generator=None), not from a generator or RNG of your own")
    sample = obj.eval().sample
    stochastic = not torch.equal(sample(cond, generator=torch.Generator().manual_seed(0), steps=2),
                                 sample(cond, generator=torch.Generator().manual_seed(1), steps=2))
    assert not stochastic or not torch.equal(first["loss"], other["loss"]), (
        "sample() is random but loss() is the same under another torch.manual_seed: it draws "
        "the same noise at every step (a generator of its own?); use torch's global RNG")


def gradients_reach_every_parameter(cls, world=None):
    obj = tiny_objective(cls)
    # Zero-initialised layers (adaLN, output) pass no gradient upstream on the first step:
    # shake the init so the check is about wiring, not about init.
    with torch.no_grad():
        for p in obj.parameters():
            p.add_(0.1 * torch.randn_like(p))
    obj.loss(*_inputs(obj, 4))["loss"].backward()
    params = [(n, p) for n, p in obj.named_parameters() if p.requires_grad]
    assert params, "an objective must own a trainable head"
    dead = [n for n, p in params if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reaches {dead}"


def gradient_checkpointing_trains(cls, world=None):
    obj = tiny_objective(cls)
    obj.gradient_checkpointing = True
    assert obj.gradient_checkpointing, "gradient_checkpointing must read back what was set"
    obj.loss(*_inputs(obj, 2))["loss"].backward()
    obj.gradient_checkpointing = False


def sample_with_one_generator(cls, world=None):
    obj = tiny_objective(cls).eval()
    cond, _ = _inputs(obj, 2)
    x = obj.sample(cond, generator=torch.Generator().manual_seed(0), steps=2)
    assert tuple(x.shape) == (2, *obj.target_shape), f"sample() shape {tuple(x.shape)}"
    assert torch.isfinite(x).all(), "sample() is not finite"
    assert torch.equal(x, obj.sample(cond, generator=torch.Generator().manual_seed(0), steps=2)), \
        "sample() differs for the same generator seed"


def sample_with_a_generator_per_row(cls, world=None):
    """What evaluation passes: row i drawn from generator[i] alone, whatever the batch."""
    obj = tiny_objective(cls).eval()
    cond, _ = _inputs(obj, 3)
    seeds = [11, 22, 33]
    try:
        batch = obj.sample(cond, generator=generators(seeds), steps=2)
    except TypeError as err:
        raise AssertionError(f"sample() fails on a list of generators ({str(err).splitlines()[0]}): "
                             "draw noise with self.randn / self.rand (ablate.rng.draw)") from err
    assert tuple(batch.shape) == (3, *obj.target_shape), f"sample() shape {tuple(batch.shape)}"
    assert torch.isfinite(batch).all(), "sample() is not finite"
    for i in (0, 2):
        alone = obj.sample(cond[i:i + 1], generator=generators(seeds[i:i + 1]), steps=2)
        torch.testing.assert_close(batch[i:i + 1], alone, atol=1e-5, rtol=1e-4,
                                   msg=lambda m, i=i: f"row {i} depends on the rest of the batch: {m}")


def samplers_are_usable(cls, world=None):
    obj = tiny_objective(cls).eval()
    cond, _ = _inputs(obj, 2)
    for name in cls.samplers():
        x = obj.sample(cond, generator=generators([0, 1]), steps=2, sampler=name)
        assert tuple(x.shape) == (2, *obj.target_shape), f"sampler {name!r}: shape {tuple(x.shape)}"
    try:
        cls.check_sampler("no-such-sampler")
    except ValueError:
        return
    raise AssertionError("check_sampler accepts an unknown sampler name")


# ---------------------------------------------------------------------------- encoder checks


def encoder_builds_tiny(cls, world):
    enc = world.encoder(cls)
    c, h, w = enc.grid_shape
    assert min(c, h, w) > 0 and enc.resolution > 0, f"grid_shape {enc.grid_shape}, resolution {enc.resolution}"


def encoder_is_frozen(cls, world):
    enc = world.encoder(cls)
    enc.train()
    assert not enc.training, "train() must leave a frozen encoder in eval mode"
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert not trainable, f"encoder parameters require grad: {trainable[:3]}"


def encode_gives_the_grid(cls, world):
    enc = world.encoder(cls)
    r = enc.resolution
    pixels = torch.rand(2, 3, r, r, generator=torch.Generator().manual_seed(0)) * 2 - 1
    feats = enc.encode(pixels)
    assert tuple(feats.shape) == (2, *enc.grid_shape), f"encode() shape {tuple(feats.shape)} != (2, {enc.grid_shape})"
    assert torch.isfinite(feats).all(), "encode() is not finite"


def decode_gives_pixels_per_row(cls, world):
    enc = world.encoder(cls)
    feats = torch.randn(2, *enc.grid_shape, generator=torch.Generator().manual_seed(0))
    pixels = enc.decode(feats, generator=generators([5, 6]))
    assert pixels.ndim == 4 and pixels.shape[:2] == (2, 3), f"decode() shape {tuple(pixels.shape)}"
    assert pixels.min() >= -1 and pixels.max() <= 1, "decode() must return pixels in [-1, 1]"
    again = enc.decode(feats, generator=generators([5, 6]))
    torch.testing.assert_close(pixels, again, msg="decode() differs for the same generators")


# ---------------------------------------------------------------------------- fit + eval


class ContractProbe(Metric):
    """The eval metric of the fit check: features and decoded images, per-row seeds."""

    @dataclass
    class Config:
        n: int = 2

    def compute(self, generator, out_dir):
        prompts, seeds = CAPTIONS[:self.cfg.n], list(range(self.cfg.n))
        feats = generator.features(prompts, seeds)
        images = generator.images(prompts, seeds)
        return {"check/feature_norm": feats.flatten(1).norm(dim=1).mean().item(),
                "check/images": float(len(images))}


def fit_spec(world: TinyWorld, encoder: dict, objective: dict, out: Path) -> dict:
    """A 2-step CPU run on the tiny world, evaluated once at the end by ``ContractProbe``."""
    return {"name": "check", "study": "plugin-check", "seed": 0, "results_dir": str(out),
            "backbone": {"model": str(world.llama), "num_queries": None, "dtype": "float32"},
            "encoder": encoder, "objective": objective,
            "data": {"train": {"name": "folder", "root": str(world.images)}, "batch_size": 2,
                     "num_workers": 0},
            "train": {"max_steps": 2, "lr": 1e-3, "warmup_steps": 1, "log_every_n_steps": 1,
                      "checkpoint_every_n_steps": 2, "progress_bar": False, "accelerator": "cpu",
                      "devices": 1, "precision": "32", "logger": "csv"},
            "eval": {"every_n_steps": 0, "at_start": False, "at_end": True, "sample_steps": 2,
                     "batch_size": 2, "sample_prompts": CAPTIONS[:2],
                     "metrics": [{"name": qualname(ContractProbe)}]}}


def fit_and_eval(world: TinyWorld, encoder: dict, objective: dict) -> None:
    import pandas as pd

    from ablate.config import parse_run
    from ablate.train import fit, read_status

    run_dir = fit(parse_run(fit_spec(world, encoder, objective, Path(tempfile.mkdtemp(dir=world.root)))))
    status = read_status(run_dir)
    assert status.get("state") == "finished", f"run state {status.get('state')}: {status.get('error')}"
    assert not status.get("eval_errors"), f"evaluation failed: {status['eval_errors']}"
    metrics = pd.read_csv(run_dir / "metrics.csv")
    loss = metrics["train/loss"].dropna()
    assert len(loss) == 2, f"train/loss logged at {len(loss)} steps, expected 2"
    assert torch.isfinite(torch.tensor(loss.values)).all(), f"train/loss not finite: {list(loss)}"
    probe = metrics.get("check/feature_norm", pd.Series(dtype=float)).dropna()
    assert len(probe) == 1, "the eval metric was not logged"


def objective_fits_and_evaluates(cls, world):
    cfg = cls.tiny_config()
    objective = {"name": qualname(cls), **(to_dict(cfg) if cfg is not None else {})}
    vae = {"name": "vae", "model": str(world.vae), "subfolder": None, "resolution": 16}
    fit_and_eval(world, vae, objective)


def encoder_fits_and_evaluates(cls, world):
    fit_and_eval(world, world.encoder_spec(cls), {"name": "mse"})


OBJECTIVE_CHECKS = [config_round_trips, loss_is_a_dict_of_finite_scalars, loss_draws_from_the_global_rng,
                    gradients_reach_every_parameter, gradient_checkpointing_trains,
                    sample_with_one_generator, sample_with_a_generator_per_row, samplers_are_usable,
                    objective_fits_and_evaluates]
ENCODER_CHECKS = [encoder_builds_tiny, encoder_is_frozen, encode_gives_the_grid,
                  decode_gives_pixels_per_row, encoder_fits_and_evaluates]
SLOW_CHECKS = {objective_fits_and_evaluates, encoder_fits_and_evaluates}


# ---------------------------------------------------------------------------- running them


@dataclass
class Result:
    check: str
    ok: bool
    detail: str = ""


def resolve(target: str) -> tuple[str, type]:
    """(kind, class) for a dotted class path or a registered objective / encoder name."""
    from ablate.config import ConfigError
    from ablate.encoders import Encoder
    from ablate.objectives import Objective
    from ablate.registry import get_registry

    for kind in ("objective", "encoder"):
        if target in get_registry(kind).names():
            return kind, get_registry(kind).get(target)
    if "." not in target:
        raise ConfigError(f"{target!r}: not a registered objective or encoder; give a dotted class "
                          "path, e.g. mypkg.losses.MyObjective")
    cls = get_registry("objective").get(target, where="check-plugin")
    if isinstance(cls, type) and issubclass(cls, Objective):
        return "objective", cls
    if isinstance(cls, type) and issubclass(cls, Encoder):
        return "encoder", cls
    raise ConfigError(f"{target}: {cls!r} is neither an ablate.objectives.Objective nor an "
                      "ablate.encoders.Encoder subclass")


def checks_for(kind: str, fit: bool = True) -> list:
    checks = OBJECTIVE_CHECKS if kind == "objective" else ENCODER_CHECKS
    return [c for c in checks if fit or c not in SLOW_CHECKS]


def run_checks(target: str, fit: bool = True, world: TinyWorld | None = None, echo=None) -> list[Result]:
    """Every contract check of ``target``; ``echo(result)`` as each finishes."""
    kind, cls = resolve(target)
    world = world or TinyWorld()
    results = []
    for check in checks_for(kind, fit):
        try:
            with torch.random.fork_rng():  # a check must not leak RNG state into the next
                check(cls, world)
            result = Result(check.__name__, True)
        except Exception as exn:  # noqa: BLE001 - every failure is a finding to report
            last = traceback.extract_tb(exn.__traceback__)[-1]
            where = f" ({Path(last.filename).name}:{last.lineno})"
            result = Result(check.__name__, False, f"{type(exn).__name__}: {exn}".strip() + where)
        results.append(result)
        if echo:
            echo(result)
    return results
