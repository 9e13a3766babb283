"""``ablate bench RUN.yaml | STUDY.yaml``: how fast a training step is, where it goes, what
evaluation costs.

Per run (per cell of a study): step time (median over timed steps, after warm-up),
samples/s, peak memory, the FLOPs of one training step as counted by
``torch.utils.flop_counter`` and, on a GPU, model FLOPs utilisation against the card's
dense bf16 peak; the share of the step spent loading data, in the encoder, the LM query
pass, the objective's head (forward + its backward), the query pass's backward and the
optimizer. ``--baseline`` also measures, in the same process, from the same initial weights
and on the same batches, the un-optimised step (no feature cache, no compile, the full
``[prompt; queries]`` LM pass): every speed-up is a ratio from one run, and the two loss
curves are compared. ``--eval`` times one evaluation and reports it as a share of training
time at the run's cadence. Figures only: nothing here asserts a target.
"""

from __future__ import annotations

import contextlib
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

PEAK_BF16_FLOPS = {  # dense, per device
    "H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12,
}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _attention_flop_formulas() -> dict:
    """torch's FLOP formulas for the fused attention kernels assume as many key / value heads
    as query heads. With grouped-query attention (the DiT's ``kv_heads < heads``) the kernels
    do the work of K / V repeated to every query head: count that."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    def repeat_heads(q, k, v):
        return q, (k[0], q[1], *k[2:]), (v[0], q[1], *v[2:])

    def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(*repeat_heads(query_shape, key_shape, value_shape))

    def backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out_shape, *repeat_heads(query_shape, key_shape, value_shape))

    kernels = ("efficient", "flash", "cudnn")
    return {**{getattr(aten, f"_scaled_dot_product_{k}_attention"): forward for k in kernels},
            **{getattr(aten, f"_scaled_dot_product_{k}_attention_backward"): backward for k in kernels}}


PARTS = ("data", "encoder", "query_pass", "head", "query_backward", "optimizer")


class Stepper:
    """One training step of ``module``, as Lightning's loop does it (autocast, backward,
    clipping, AdamW), optionally cut into timed parts."""

    def __init__(self, module, run, dev: torch.device, optimized: bool):
        from ablate.train import resolve_precision

        self.module, self.run, self.dev = module, run, dev
        self.autocast_on = resolve_precision(run.train.precision).startswith("bf16")
        self.opt = module.configure_optimizers()["optimizer"]
        self.reuse_prompt = run.backbone.reuse_prompt_cache if optimized else False

    def _autocast(self):
        return torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.autocast_on)

    def step(self, batch, seed: int, times: dict | None = None) -> float:
        m, clock = self.module, _Clock(self.dev, times)
        m.backbone.cfg.reuse_prompt_cache = self.reuse_prompt
        torch.manual_seed(seed)  # the same noise / time draws in every mode
        with self._autocast():
            with clock("encoder"):
                target = m.targets(batch)
            with clock("query_pass"):
                cond = m.conditioning(batch["captions"])
            with clock("head"):
                loss = m.objective.loss(cond, target)["loss"]
        if times is not None:  # when the gradient reaches the queries' output, the head is done
            cond.register_hook(lambda grad: clock.split("head", "query_backward"))
        with clock("query_backward"):
            loss.backward()
        with clock("optimizer"):
            torch.nn.utils.clip_grad_norm_(m.trainable_parameters(), self.run.train.grad_clip or 1e9)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


class _Clock:
    """Adds wall seconds (device-synchronised) per part into ``times``; a no-op without it."""

    def __init__(self, dev, times):
        self.dev, self.times, self.mark = dev, times, None

    @contextlib.contextmanager
    def __call__(self, part):
        if self.times is None:
            yield
            return
        _sync(self.dev)
        self.mark = time.perf_counter()
        yield
        _sync(self.dev)
        self.times[part] = self.times.get(part, 0.0) + time.perf_counter() - self.mark

    def split(self, done: str, rest: str) -> None:
        """Inside ``rest``'s timing: book the time so far to ``done`` instead."""
        _sync(self.dev)
        now = time.perf_counter()
        self.times[done] = self.times.get(done, 0.0) + now - self.mark
        self.times[rest] = self.times.get(rest, 0.0) - (now - self.mark)


def _batches(run, resolution: int, cache, dev):
    from ablate.train import build_train_loader

    for batch in build_train_loader(run, resolution, cache=cache):
        if batch["pixels"] is None and batch.get("targets") is None:
            continue
        for key in ("pixels", "targets"):
            if batch.get(key) is not None:
                batch[key] = batch[key].to(dev, non_blocking=True)
        yield batch


def measure(module, run, dev, optimized: bool, cache, steps: int, warmup: int, initial: dict) -> dict:
    """Figures of one path (optimised or baseline) from the ``initial`` trainable weights."""
    from torch.utils.flop_counter import FlopCounterMode

    module.load_state_dict(initial, strict=False)
    stepper = Stepper(module, run, dev, optimized)
    batches = _batches(run, module.encoder.resolution, cache if optimized else None, dev)
    losses, seed = [], run.seed
    counter = FlopCounterMode(display=False, custom_mapping=_attention_flop_formulas())
    start = time.perf_counter()
    with counter:
        losses.append(stepper.step(next(batches), seed))
    for i in range(max(0, warmup - 1)):
        losses.append(stepper.step(next(batches), seed + 1 + i))
    warmup_s = time.perf_counter() - start
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(steps):  # plain steps: the step time, with the data wait counted
        _sync(dev)
        t0 = time.perf_counter()
        batch = next(batches)
        losses.append(stepper.step(batch, seed + warmup + i))
        _sync(dev)
        times.append(time.perf_counter() - t0)
    parts = {}
    for i in range(min(steps, 3)):  # instrumented steps: where the time goes
        t0 = time.perf_counter()
        batch = next(batches)
        parts["data"] = parts.get("data", 0.0) + time.perf_counter() - t0
        losses.append(stepper.step(batch, seed + warmup + steps + i, parts))
    total = sum(parts.values())
    step_time = statistics.median(times)
    flops = counter.get_total_flops()
    peak = peak_flops(dev)
    bs = run.data.batch_size
    return {
        "step_time_s": step_time, "step_time_min_s": min(times), "samples_per_s": bs / step_time,
        "steps_per_s": 1 / step_time, "warmup_s": warmup_s,
        "flops_per_step": flops, "achieved_tflops": flops / step_time / 1e12,
        "mfu": flops / step_time / peak if peak else None,
        "peak_memory_gib": (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
                            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30,
        "share": {p: round(parts.get(p, 0.0) / total, 4) for p in PARTS},
        "cached_targets": bool(optimized and cache is not None),
        "reuse_prompt_cache": stepper.reuse_prompt, "compiled": bool(optimized and run.train.compile),
        "losses": losses,
    }


def eval_cost(module, run, step_time: float) -> dict:
    """One evaluation (the run's metrics and sample images) timed, and its share of the
    training time at the run's cadence (``eval.every_n_steps``, ``at_start``, ``at_end``)."""
    from ablate.eval.callback import run_metrics

    e, n_steps = run.eval, run.train.max_steps
    evals = int(e.at_start) + (len(range(e.every_n_steps, n_steps, e.every_n_steps)) if e.every_n_steps else 0) \
        + int(e.at_end)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_metrics(module, run, 0, Path(tmp))
        seconds = time.perf_counter() - start
    train_s = step_time * n_steps
    return {"eval_s": seconds, "evals_per_run": evals, "train_s_at_step_time": train_s,
            "eval_share_of_training": seconds * evals / train_s if train_s else None}


def bench(run, steps: int = 10, warmup: int = 2, device: str | None = None, baseline: bool = False,
          evaluate: bool = False) -> dict:
    from ablate.data.cache import ensure_cache
    from ablate.module import AblationModule
    from ablate.train import resolve_precision

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fill_start = time.perf_counter()
    cache = ensure_cache(run, device=dev.type)
    fill_s = time.perf_counter() - fill_start
    module = AblationModule.from_run(run).to(dev)
    module.train()
    module.objective.gradient_checkpointing = run.train.gradient_checkpointing
    initial = {k: v.detach().clone() for k, v in module.state_dict().items()
               if not k.startswith(("backbone.lm.", "encoder."))}
    result = {"run": run.name, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "precision": resolve_precision(run.train.precision), "batch_size": run.data.batch_size,
              "steps_timed": steps, "cache_fill_s": fill_s}
    base = None
    if baseline:  # first, so the optimised path never sees a warm encoder it would not load
        base = measure(module, run, dev, False, None, steps, warmup, initial)
        frozen = _frozen_params(module)
        if hasattr(module.encoder, "unload"):
            module.encoder.unload()
    if run.train.compile:
        module.compile_step()
    opt = measure(module, run, dev, True, cache, steps, warmup, initial)
    frozen = max(frozen if base else 0, _frozen_params(module))
    result.update({k: v for k, v in opt.items() if k != "losses"})
    result.update(params_trainable=sum(p.numel() for p in module.trainable_parameters()),
                  params_frozen=frozen, memory_kind="cuda max allocated" if dev.type == "cuda" else "process peak RSS")
    if base is not None:
        diff = [abs(a - b) for a, b in zip(opt["losses"], base["losses"])]
        result["baseline"] = {k: v for k, v in base.items() if k != "losses"}
        result["speedup"] = base["step_time_s"] / opt["step_time_s"]
        result["loss_max_abs_diff"] = max(diff)
        result["losses"] = {"optimized": opt["losses"], "baseline": base["losses"]}
    if evaluate:
        result.update(eval_cost(module, run, opt["step_time_s"]))
    return result


def _frozen_params(module) -> int:
    """The frozen LM's and the encoder's parameters (a cache stand-in's once it loaded)."""
    encoder = module.encoder
    if getattr(encoder, "loaded", None) is not None:
        encoder = encoder.inner if encoder.loaded else torch.nn.Module()
    return sum(p.numel() for m in (module.backbone.lm, encoder) for p in m.parameters())


def largest_batch(fits, start: int = 8, limit: int = 1 << 16) -> int:
    """The largest batch size for which ``fits(batch_size)`` is True: doubling from
    ``start``, then bisecting between the last fit and the first failure. 0 if none fits."""
    good, bad = 0, None
    b = start
    while b <= limit:
        if not fits(b):
            bad = b
            break
        good, b = b, b * 2
    if bad is None:
        return good
    lo = good
    while bad - lo > max(1, lo // 16):  # to within ~6 %
        mid = (lo + bad) // 2
        lo, bad = (mid, bad) if fits(mid) else (lo, mid)
    return lo


def find_batch(run, device: str | None = None, start: int = 8) -> dict:
    """``--find-batch``: the largest batch one training step fits in GPU memory."""
    from ablate.config import parse_run, to_dict

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type != "cuda":
        raise ValueError("--find-batch needs a GPU: on the CPU memory is swapped, not exhausted")

    def fits(b: int) -> bool:
        data = to_dict(run)
        data["data"]["batch_size"] = b
        try:
            bench(parse_run(data), steps=1, warmup=1, device=device)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    return {"run": run.name, "largest_batch": largest_batch(fits, start)}


def bench_runs(path: str, overrides=()) -> list:
    """The runs to bench: one per cell of a study (its first seed), or the one run."""
    from ablate.data.cache_cli import study_runs

    runs, seen = [], set()
    for run in study_runs(path, overrides):
        cell = run.meta.get("cell", run.name) if isinstance(run.meta, dict) else run.name
        if cell not in seen:
            seen.add(cell)
            runs.append(run)
    return runs


def _show(result: dict) -> None:
    for key, value in result.items():
        if key == "losses":
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items()
                              if not isinstance(v, (dict, list)))
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"{key:<24} {shown}")
    print()


def _bench(args) -> None:
    results = []
    for run in bench_runs(args.config, args.set):
        if args.find_batch:
            result = find_batch(run, args.device)
        else:
            result = bench(run, steps=args.steps, warmup=args.warmup, device=args.device,
                           baseline=args.baseline, evaluate=args.eval)
        results.append(result)
        if not args.json:
            _show(result)
    text = json.dumps(results[0] if len(results) == 1 else results, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        print(text)


def add_commands(sub) -> None:
    p = sub.add_parser("bench", help="time training steps of a run or of each cell of a study: "
                                     "step time, samples/s, memory, MFU, where the step goes")
    p.add_argument("config", help="run spec or study spec (YAML)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--baseline", action="store_true",
                   help="also time the un-optimised step (no cache, no compile, full prompt pass) "
                        "in the same process, from the same weights, on the same batches")
    p.add_argument("--eval", action="store_true", help="time one evaluation: its share of training")
    p.add_argument("--find-batch", action="store_true", help="largest batch that fits (GPU)")
    p.add_argument("--json", action="store_true", help="print JSON (a list for a study)")
    p.add_argument("--out", help="also write the JSON to this file")
    p.set_defaults(func=_bench)
