"""``ablate bench RUN.yaml``: how fast one training step of a run is, and what it costs.

Prints step time (median over timed steps, after warm-up), samples/s, peak memory, the
parameter split (trainable / frozen), the FLOPs of one training step as counted by
``torch.utils.flop_counter`` and, on a GPU, model FLOPs utilisation against the card's
dense bf16 peak. Figures only: nothing here asserts a target.
"""

from __future__ import annotations

import resource
import statistics
import time

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


def bench(run, steps: int = 10, warmup: int = 2, device: str | None = None) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from ablate.module import AblationModule
    from ablate.train import build_train_loader, resolve_precision

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module = AblationModule.from_run(run).to(dev)
    module.train()
    module.objective.gradient_checkpointing = run.train.gradient_checkpointing
    opt = module.configure_optimizers()["optimizer"]
    precision = resolve_precision(run.train.precision)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
    loader = iter(build_train_loader(run, module.encoder.resolution))

    def batch_on_device():
        batch = next(loader)
        while batch["pixels"] is None:
            batch = next(loader)
        batch["pixels"] = batch["pixels"].to(dev, non_blocking=True)
        return batch

    def step(batch):
        with autocast:
            loss = module.compute_loss(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.trainable_parameters(), run.train.grad_clip or 1e9)
        opt.step()
        opt.zero_grad(set_to_none=True)

    batch = batch_on_device()
    counter = FlopCounterMode(display=False, custom_mapping=_attention_flop_formulas())
    with counter:
        step(batch)
    flops = counter.get_total_flops()
    for _ in range(max(0, warmup - 1)):
        step(batch_on_device())
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(steps):
        batch = batch_on_device()
        _sync(dev)
        start = time.perf_counter()
        step(batch)
        _sync(dev)
        times.append(time.perf_counter() - start)
    step_time = statistics.median(times)
    trainable = sum(p.numel() for p in module.trainable_parameters())
    total = sum(p.numel() for p in module.parameters())
    peak = peak_flops(dev)
    result = {
        "run": run.name, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "precision": precision, "batch_size": run.data.batch_size, "steps_timed": steps,
        "step_time_s": step_time, "step_time_min_s": min(times),
        "samples_per_s": run.data.batch_size / step_time,
        "flops_per_step": flops, "achieved_tflops": flops / step_time / 1e12,
        "mfu": flops / step_time / peak if peak else None,
        "params_trainable": trainable, "params_frozen": total - trainable,
        "peak_memory_gib": (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
                            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30,
        "memory_kind": "cuda max allocated" if dev.type == "cuda" else "process peak RSS",
    }
    return result
