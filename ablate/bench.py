"""``ablate bench RUN.yaml | STUDY.yaml``: how fast a training step is, where it goes, what
evaluation costs.

Per run (per cell of a study): step time (median over timed steps, after warm-up),
samples/s, peak memory, the FLOPs of one training step as counted by
``torch.utils.flop_counter`` and, on a GPU, model FLOPs utilisation against the card's
dense bf16 peak; the share of the step spent loading data, in the encoder, the LM query
pass, the objective's head (forward + its backward), the query pass's backward and the
optimizer. ``--baseline`` also measures, in the same process, from the same initial weights,
on the same batches and interleaved step by step with it, the un-optimised step (no feature cache, no compile, the full
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

    def __init__(self, module, run, dev: torch.device, optimized: bool, full_prompt_pass: bool = True):
        from ablate.train import resolve_precision

        self.module, self.run, self.dev = module, run, dev
        self.autocast_on = resolve_precision(run.train.precision).startswith("bf16")
        self.opt = module.configure_optimizers()["optimizer"]
        self.reuse_prompt = run.backbone.reuse_prompt_cache and (optimized or not full_prompt_pass)

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
        # when the gradient reaches the queries' output, the head is done; frozen queries
        # (train.query_lr: 0) get no gradient, so the whole backward is the head's
        trains_queries = cond.requires_grad
        if times is not None and trains_queries:
            cond.register_hook(lambda grad: clock.split("head", "query_backward"))
        with clock("query_backward" if trains_queries else "head"):
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


class StepPath:
    """One way of taking the step (optimised or baseline), with its own optimizer, weights,
    batches and figures, so that several can be interleaved step by step."""

    def __init__(self, module, run, dev, optimized: bool, cache, initial: dict, full_prompt_pass: bool):
        from torch.utils.flop_counter import FlopCounterMode

        self.module, self.dev, self.optimized = module, dev, optimized
        module.load_state_dict(initial, strict=False)
        self.stepper = Stepper(module, run, dev, optimized, full_prompt_pass)
        self.params = module.trainable_parameters()
        self.weights = [p.detach().clone() for p in self.params]
        self.batches = _batches(run, module.encoder.resolution, cache if optimized else None, dev)
        self.cached = bool(optimized and cache is not None)
        self.compiled = bool(optimized and run.train.compile)
        self.counter = FlopCounterMode(display=False, custom_mapping=_attention_flop_formulas())
        self.losses, self.times, self.parts, self.warmup_s, self.peak = [], [], {}, 0.0, 0

    @contextlib.contextmanager
    def active(self):
        """This path's weights in the module (and its compiled or eager kernels)."""
        with torch.no_grad():
            for p, w in zip(self.params, self.weights):
                p.copy_(w)
        compiled = [m for m in _compilable(self.module) if getattr(m, "_compiled_call_impl", None)]
        saved = [m._compiled_call_impl for m in compiled]
        if not self.compiled:
            for m in compiled:
                m._compiled_call_impl = None
        try:
            yield
        finally:
            for m, impl in zip(compiled, saved):
                m._compiled_call_impl = impl
            with torch.no_grad():
                for p, w in zip(self.params, self.weights):
                    w.copy_(p)

    def step(self, seed: int, kind: str) -> None:
        """``kind``: flops (first step, counted), warmup, timed, or parts (instrumented)."""
        with self.active():
            if self.dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.dev)
            _sync(self.dev)
            t0 = time.perf_counter()
            batch = next(self.batches)
            parts = None
            if kind == "parts":
                self.parts["data"] = self.parts.get("data", 0.0) + time.perf_counter() - t0
                parts = self.parts
            with self.counter if kind == "flops" else contextlib.nullcontext():
                self.losses.append(self.stepper.step(batch, seed, parts))
            _sync(self.dev)
            seconds = time.perf_counter() - t0
            if kind == "timed":
                self.times.append(seconds)
                if self.dev.type == "cuda":
                    self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.dev))
            elif kind in ("flops", "warmup"):
                self.warmup_s += seconds

    def figures(self, batch_size: int) -> dict:
        step_time = statistics.median(self.times)
        flops = self.counter.get_total_flops()
        peak = peak_flops(self.dev)
        total = sum(self.parts.values())
        return {
            "step_time_s": step_time, "step_time_min_s": min(self.times),
            "samples_per_s": batch_size / step_time, "steps_per_s": 1 / step_time, "warmup_s": self.warmup_s,
            "flops_per_step": flops, "achieved_tflops": flops / step_time / 1e12,
            "mfu": flops / step_time / peak if peak else None,
            "peak_memory_gib": (self.peak if self.dev.type == "cuda"
                                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30,
            "share": {p: round(self.parts.get(p, 0.0) / total, 4) for p in PARTS},
            "cached_targets": self.cached, "reuse_prompt_cache": self.stepper.reuse_prompt,
            "compiled": self.compiled, "losses": self.losses,
        }


def _compilable(module) -> list:
    net = getattr(module.objective, "net", None)
    return [m for m in (net, module.backbone.lm.get_decoder()) if isinstance(m, torch.nn.Module)]


def measure(paths: list, seed: int, steps: int, warmup: int, batch_size: int) -> list[dict]:
    """Step the paths in turn, step by step: a machine whose load changes (shared CPUs) slows
    every path alike, so their ratio holds. Each path sees the same batches and draws."""
    kinds = ["flops"] + ["warmup"] * max(0, warmup - 1) + ["timed"] * steps + ["parts"] * min(steps, 3)
    for i, kind in enumerate(kinds):
        for path in paths:
            path.step(seed + i, kind)
    return [path.figures(batch_size) for path in paths]


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
          evaluate: bool = False, baseline_full_prompt: bool = True) -> dict:
    """The figures of ``run``'s optimised step; with ``baseline`` the un-optimised one too
    (``baseline_full_prompt=False``: it keeps the prompt-cache reuse, i.e. only the feature
    cache and compile are off)."""
    from ablate.data.cache import ensure_cache
    from ablate.module import FROZEN_PREFIXES, AblationModule
    from ablate.train import resolve_precision

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fill_start = time.perf_counter()
    cache = ensure_cache(run, device=dev.type)
    fill_s = time.perf_counter() - fill_start
    module = AblationModule.from_run(run).to(dev)
    module.train()
    module.objective.gradient_checkpointing = run.train.gradient_checkpointing
    initial = {k: v.detach().clone() for k, v in module.state_dict().items()
               if not k.startswith(FROZEN_PREFIXES)}
    result = {"run": run.name, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "precision": resolve_precision(run.train.precision), "batch_size": run.data.batch_size,
              "steps_timed": steps, "cache_fill_s": fill_s}
    if run.train.compile:
        module.compile_step()
    paths = [StepPath(module, run, dev, True, cache, initial, baseline_full_prompt)]
    if baseline:
        paths.append(StepPath(module, run, dev, False, None, initial, baseline_full_prompt))
    figures = measure(paths, run.seed, steps, warmup, run.data.batch_size)
    module.backbone.cfg.reuse_prompt_cache = run.backbone.reuse_prompt_cache
    opt, base = figures[0], (figures[1] if baseline else None)
    result.update({k: v for k, v in opt.items() if k != "losses"})
    result.update(params_trainable=sum(p.numel() for p in module.trainable_parameters()),
                  params_frozen=_frozen_params(module), memory_kind=(
                      "cuda max allocated" if dev.type == "cuda" else "process peak RSS"))
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
    if "baseline" in result:  # its step shares on a line of their own
        result = {**result, "baseline_share": result["baseline"]["share"]}
    for key, value in result.items():
        if key == "losses":
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items()
                              if not isinstance(v, (dict, list)))
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"{key:<24} {shown}")
    print()


def run_bench_command(args) -> None:
    """``ablate bench`` (its parser is in ablate/cli.py, which imports nothing heavy)."""
    results = []
    for run in bench_runs(args.config, args.set):
        if args.find_batch:
            result = find_batch(run, args.device)
        else:
            result = bench(run, steps=args.steps, warmup=args.warmup, device=args.device,
                           baseline=args.baseline or args.baseline_prompt_cache, evaluate=args.eval,
                           baseline_full_prompt=not args.baseline_prompt_cache)
        results.append(result)
        if not args.json:
            _show(result)
    text = json.dumps(results[0] if len(results) == 1 else results, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        print(text)
