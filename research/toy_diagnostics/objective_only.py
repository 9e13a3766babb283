"""How many steps does an objective need to learn a study cell's targets? Train its head alone.

A diagnostic for sizing studies (how long must the toy demo train before GenEval can rise?),
about twice as fast per step as ``ablate fit`` on CPU: the frozen encoder's targets and the
frozen backbone's query states are computed once for ``--pairs`` training pairs, then only
the objective's network trains on them, with the run's optimiser settings and learning-rate
schedule (``AblationModule.configure_optimizers``), and the run's ``eval.metrics`` are
computed every ``--every`` steps through the same ``run_metrics`` the training callback
uses; they land in ``<out>/<cell>/metrics.csv`` (with ``config.yaml``: the resolved spec
and provenance). It runs on the GPU when there is one (float32).

What it leaves out, on purpose: the query vectors stay at their initial values (so the
conditioning is whatever the frozen LM makes of the prompt with untrained queries), which
makes it a fair test of a flow-matching head's learning speed, not of an MSE head's (there
the queries are most of what trains).

    python research/toy_diagnostics/objective_only.py experiments/demo.yaml --cell vae+fm \\
        --set train.max_steps=3000 --every 1000 [--out results/objective_only]

``recall/ratio`` (see ``conditioning_recall``; sampled with the objective's own steps and
guidance) says whether the head uses its conditioning at all; with ``--pairs 16`` the run
is the classic "can it overfit a handful of pairs?" check:

    python research/toy_diagnostics/objective_only.py experiments/demo.yaml --cell vae+fm --pairs 16 \\
        --no-metrics --set train.max_steps=2000 --every 500

``--conditioning`` swaps what the head reads, in training and in evaluation alike, to ask
whether the query states are what holds a head back (the states are padded / cut to the
backbone's number of queries, so every head and ``cond_standardize`` take them unchanged):

- ``queries`` (default): the backbone's query states, as the study's heads get them;
- ``prompt``: the frozen LM's last hidden states at the prompt's own tokens (the
  conditioning of text-to-image models that read a text encoder's whole sequence): what the
  LM holds about the caption, without the queries' bottleneck;
- ``words``: no LM at all: a fixed random embedding per token plus a sinusoidal position
  (the caption's words cleanly separated, as the positive control's label is for one object).

    python research/toy_diagnostics/objective_only.py experiments/demo.yaml --cell vae+fm \\
        --conditioning words --set train.max_steps=4000 --every 1000

With ``train.ema_decay`` set (``--set train.ema_decay=0.999``) the head's weights are also
averaged as the training loop's EMA callback does (torch's EMA rule from the first step), and
each report evaluates both: the raw weights' metrics as usual, the EMA's as ``ema/<metric>``
(samples under ``<out>/<cell>/ema/``), so one run compares them on the same training.

Figures only; nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ablate.eval.callback import build_metrics, run_metrics
from ablate.eval.runner import append_metrics
from ablate.module import AblationModule
from ablate.provenance import write_run_config
from ablate.study.spec import load_study
from ablate.train import build_train_loader


@torch.no_grad()
def cached_pairs(module: AblationModule, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, query states) of the first ``n`` training pairs of the module's run."""
    targets, conds, seen = [], [], 0
    device = module.backbone.queries.device
    for batch in build_train_loader(module.run_cfg, module.encoder.resolution):
        if batch["pixels"] is None:
            continue
        targets.append(module.encoder.encode(batch["pixels"].to(device)))
        conds.append(module.conditioning(batch["captions"]))
        seen += len(batch["captions"])
        if seen >= n:
            break
    return torch.cat(targets)[:n], torch.cat(conds)[:n]


CONDITIONINGS = ("queries", "prompt", "words")


def sinusoid(length: int, dim: int) -> torch.Tensor:
    """Transformer sinusoidal position codes ``[length, dim]``."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(-torch.arange(0, dim, 2, dtype=torch.float32) * (torch.log(torch.tensor(1e4)) / dim))
    return torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], dim=1)[:, :dim]


def swap_conditioning(module: AblationModule, kind: str, seed: int) -> None:
    """Point ``module.conditioning`` (training pairs and evaluation alike) at ``kind``."""
    if kind == "queries":
        return
    backbone, n = module.backbone, module.backbone.num_queries
    device = backbone.queries.device  # where tokenize() puts the ids
    table = torch.randn(len(backbone.tokenizer), backbone.hidden_size,
                        generator=torch.Generator().manual_seed(seed)).to(device) if kind == "words" else None
    position = sinusoid(n, backbone.hidden_size).to(device)

    @torch.no_grad()
    def conditioning(captions: list[str]) -> torch.Tensor:
        # left-padded: every caption ends at the last position, so the last n are its end
        if kind == "words":
            enc = backbone.tokenize(captions)
            ids, mask = enc["input_ids"][:, -n:], enc["attention_mask"][:, -n:]
            states = table[ids] + position[-ids.shape[1]:]
        else:
            states, mask = backbone.prompt_states(captions)
            states, mask = states[:, -n:].float(), mask[:, -n:]
        states = states * mask[..., None]  # padding reads as zeros
        return torch.nn.functional.pad(states, (0, 0, n - states.shape[1], 0))

    module.conditioning = conditioning


def resolve_cell(args: argparse.Namespace, record: dict):
    """(run spec, output folder) of ``args.cell`` of ``args.study``; writes the resolved spec
    + provenance + ``record`` to its config.yaml."""
    study = load_study(args.study, args.set)
    cells = {c.cell: c for c in study.cells}
    if args.cell not in cells:
        raise SystemExit(f"{args.study}: no cell {args.cell!r}; the cells are {sorted(cells)}")
    run = cells[args.cell].run
    out_dir = Path(args.out) / args.cell
    # the resolved run spec + git commit, versions and command line, as every run records
    write_run_config(run, out_dir / "config.yaml", record)
    return run, out_dir


def load_cell(args: argparse.Namespace, record: dict):
    """(run spec, module on the GPU when there is one, output folder) of ``args.cell`` of
    ``args.study`` (see :func:`resolve_cell`)."""
    run, out_dir = resolve_cell(args, record)
    torch.manual_seed(run.seed)
    module = AblationModule.from_run(run)
    module.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return run, module, out_dir


def head_step(objective, opt, params, conds, targets: torch.Tensor, run, step: int,
              order: torch.Generator) -> float:
    """One optimiser step of the head alone on a random batch of the cached pairs; its loss.
    The run's batch size and grad clipping; noise and times seeded by (run seed, step).
    ``conds``: the pairs' cached conditioning, or a function of the batch's indices that
    computes it (e.g. through the backbone, so its trainable queries in ``params`` learn too)."""
    objective.train()
    idx = torch.randint(0, len(targets), (run.data.batch_size,), generator=order).to(targets.device)
    torch.manual_seed(run.seed * 1_000_003 + step)
    loss = objective.loss(conds(idx) if callable(conds) else conds[idx], targets[idx])["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if run.train.grad_clip:
        torch.nn.utils.clip_grad_norm_(params, run.train.grad_clip)
    opt.step()
    return loss.item()


@torch.no_grad()
def conditioning_recall(objective, conds: torch.Tensor, targets: torch.Tensor, seed: int = 0) -> float:
    """Does the head follow its conditioning? Sample one output per training condition and
    compare: mean squared distance to the sample's own target / mean distance to the other
    targets of the set. ~1: the samples ignore the conditioning (an unconditional model);
    -> 0: each sample reproduces its own pair (memorised). Needs >= 2 distinct pairs."""
    objective.eval()
    samples = objective.sample(conds, generator=torch.Generator(conds.device).manual_seed(seed))
    dist = torch.cdist(samples.flatten(1).float(), targets.flatten(1).float()).pow(2)
    own = dist.diagonal().mean()
    other = (dist.sum() - dist.diagonal().sum()) / (dist.numel() - len(dist))
    return (own / other).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("study", help="a study YAML (experiments/...)")
    p.add_argument("--cell", required=True, help="the study cell to train, e.g. vae+fm")
    p.add_argument("--set", nargs="*", default=[], help="overrides for every cell, key=value")
    p.add_argument("--pairs", type=int, default=6000, help="training pairs to cache")
    p.add_argument("--every", type=int, default=500, help="evaluate every N steps")
    p.add_argument("--out", default="results/objective_only")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--conditioning", choices=CONDITIONINGS, default="queries",
                   help="what the head reads: the query states, the LM's prompt states, or word embeddings")
    p.add_argument("--recall", type=int, default=16,
                   help="also report recall/ratio on the first N training pairs (0: off)")
    p.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True,
                   help="compute the run's eval.metrics at each report (--no-metrics: loss and recall only)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    run, module, out_dir = load_cell(args, {"objective_only": {
        "pairs": args.pairs, "every": args.every, "recall": args.recall, "metrics": args.metrics,
        "conditioning": args.conditioning}})
    swap_conditioning(module, args.conditioning, run.seed)
    start = time.time()
    targets, conds = cached_pairs(module, args.pairs)
    print(f"cached {len(targets)} pairs in {time.time() - start:.0f}s: targets {tuple(targets.shape[1:])}, "
          f"conditioning {tuple(conds.shape[1:])}", flush=True)

    objective, t = module.objective, run.train
    # the run's own optimiser and schedule; the query vectors in it get no gradient here
    optimizers = module.configure_optimizers()
    opt, sched = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    params = [q for q in objective.parameters() if q.requires_grad]
    metrics = build_metrics(run.eval.metrics) if args.metrics else []
    order = torch.Generator().manual_seed(run.seed)
    # the training loop's EMA rule (ablate.ema: torch's, from the weights after the first step)
    ema = (AveragedModel(objective, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True)
           if t.ema_decay else None)
    losses: list[float] = []
    train_s = 0.0
    for step in range(1, t.max_steps + 1):
        tick = time.time()
        losses.append(head_step(objective, opt, params, conds, targets, run, step, order))
        sched.step()
        if ema is not None:
            ema.update_parameters(objective)
        train_s += time.time() - tick
        if step % args.every == 0 or step == t.max_steps:
            values = run_metrics(module, run, step, out_dir, metrics) if metrics else {}
            if ema is not None and metrics:
                module.objective = ema.module
                try:
                    averaged = run_metrics(module, run, step, out_dir / "ema", metrics)
                finally:
                    module.objective = objective
                values.update({f"ema/{k}": v for k, v in averaged.items()})
            values["train/loss"] = sum(losses[-args.every:]) / len(losses[-args.every:])
            n_recall = min(args.recall, len(targets))
            if n_recall > 1:  # the ratio compares each sample with the other pairs: it needs two
                values["recall/ratio"] = conditioning_recall(objective, conds[:n_recall], targets[:n_recall],
                                                             run.seed)
            append_metrics(out_dir, step, values)
            shown = {k: round(v, 3) for k, v in values.items() if not k.startswith("time/")}
            print(f"step {step}: {shown} (train {train_s:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
