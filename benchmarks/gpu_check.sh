#!/usr/bin/env bash
# The GPU checks, as one script: run from the repository root on a CUDA machine.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]                 # every check
#   CHECKS="strategies bench" bash benchmarks/gpu_check.sh  # some: demo strategies bench real_size learning speed
#   CHECKS=speed bash benchmarks/gpu_check.sh               # issue 15's figures, ~10 minutes on an H100
#
# 1. the toy study (`ablate demo`) on the GPU in bf16: every path of a CPU demo run, on CUDA;
# 2. Lightning's DDP and FSDP strategies on one GPU: train, checkpoint, evaluate and sample from it;
# 3. `ablate bench` of two toy cells on the GPU;
# 4. benchmarks/real_size.py: step time / memory / MFU of the paper-size cells;
# 5. "learning": how many steps the toy FM heads need before GenEval / DPG leave chance
#    (research/toy_diagnostics/objective_only.py, LEARN_STEPS at batch 64, evaluated every LEARN_EVERY;
#    nothing up to 12,500 steps of batch 64 on one H100: results/reference/gpu_learning_h100/).
# 6. "speed" (issue 15): the paper-size cells before / after in one process each (`--baseline`:
#    no feature cache, no compile, full [prompt; queries] pass vs the optimised step), at batch 16
#    and at the largest batch that fits, compiled and not; the toy cells' eval cost as a share of
#    training at the demo's cadence (1 GPU; divide the sampling part by N for N ranks).
# Prints figures; logs and tables go to OUT_DIR. If .whl/ holds wheels (a machine without
# the project's pins and without a package index), they are installed to /tmp/site first.
set -uo pipefail
OUT=${OUT:-${1:-/tmp/gpu_check}}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export HF_HOME=/tmp/ablate-hf MPLCONFIGDIR=/tmp/ablate-mpl TORCH_HOME=/tmp/ablate-torch
A="python3 -m ablate"
quiet() { grep --line-buffered -vE "it/s\]|Loading weights|Writing model shards|litlogger|TPU available|rank_zero"; }
section() { echo; echo "=== $* ($(date +%T))"; }

section environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, diffusers, lightning; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())"

CHECKS=${CHECKS:-demo strategies bench real_size learning speed}
want() { [[ " $CHECKS " == *" $1 "* ]]; }

section toy data
$A toy data --out data/toy 2>&1 | tail -2

if want demo; then
section "ablate demo on the GPU (bf16-mixed)"
start=$(date +%s)
$A demo --set study=demo-gpu --set train.accelerator=gpu --set train.precision=bf16-mixed \
  --set data.num_workers=4 2>&1 | quiet > "$OUT/demo_gpu.log"
echo "exit $? after $(( $(date +%s) - start )) s"; tail -25 "$OUT/demo_gpu.log"
cp results/demo-gpu/final_table.md results/demo-gpu/curves_step.png "$OUT/" 2>/dev/null
fi

want strategies && for strategy in ddp fsdp; do
  section "strategy $strategy: 20 steps with a checkpoint, then ablate eval / sample from it"
  run=results/strategy-$strategy/clip+fm-seed0
  $A grid experiments/demo.yaml --only clip+fm --set study=strategy-$strategy --set train.accelerator=gpu \
    --set train.devices=1 --set train.strategy=$strategy --set train.precision=bf16-mixed --set train.max_steps=20 \
    --set train.checkpoint_every_n_steps=10 --set eval.every_n_steps=0 --set eval.at_start=false \
    --set eval.at_end=false 2>&1 | quiet | tail -4
  ls $run/checkpoints/ 2>&1 && tail -2 $run/metrics.csv | cut -c1-160
  $A eval $run --metrics fid,diversity --device cuda 2>&1 | quiet | tail -8
  $A sample $run --prompt "a photo of a red circle" --n 2 --device cuda 2>&1 | quiet | tail -2
done

if want bench; then
section "ablate bench, toy cells (a run's recorded config.yaml is a run spec)"
for cell in clip+fm vae+fm; do
  config=results/demo-gpu/$cell-seed0/config.yaml
  [ -f $config ] || config=results/strategy-ddp/$cell-seed0/config.yaml
  [ -f $config ] && $A bench $config --set train.strategy=auto --device cuda --steps 20 --warmup 5 2>&1 | quiet | tail -14
done
fi

if want real_size; then
section "paper-size cells (random-init Llama-3.2-1B / CLIP ViT-L/14-336 / FLUX VAE shapes, 1.36 B DiT)"
python3 benchmarks/real_size.py --out "$OUT/real_size.json" 2>&1 | quiet
fi
if want learning; then
# The four runs share the GPU in parallel; each stops at LEARN_TIMEOUT seconds, and what it
# evaluated by then is kept (metrics.csv is appended at every evaluation).
section "learning: FM heads alone on cached pairs (${LEARN_STEPS:=10000} steps of batch 64) and the full clip+fm and short-caption vae+fm runs (${GRID_STEPS:=5000} steps)"
for cell in vae+fm clip+fm; do
  timeout ${LEARN_TIMEOUT:=1800} python3 research/toy_diagnostics/objective_only.py experiments/demo.yaml --cell $cell \
    --set train.max_steps=$LEARN_STEPS data.batch_size=64 --every ${LEARN_EVERY:-2500} --out /tmp/learning 2>&1 \
    | quiet | grep --line-buffered -E "^(cached|step)" | cut -c1-600 | sed -u "s/^/[$cell] /" &
done
# learning_grid NAME CELL [--set ...]: the real training path (queries train too), what a GPU
# `ablate demo` would run, longer; its metrics and samples land in /tmp/learning/NAME
learning_grid() {
  local name=$1 cell=$2; shift 2
  timeout $LEARN_TIMEOUT $A grid experiments/demo.yaml --only $cell --set study=learning-$name --set train.accelerator=gpu \
    --set train.precision=bf16-mixed --set train.max_steps=$GRID_STEPS --set data.batch_size=64 --set data.num_workers=4 \
    --set train.progress_bar=false --set eval.every_n_steps=${GRID_EVERY:-1250} --set train.checkpoint_every_n_steps=$GRID_STEPS \
    "$@" > "$OUT/learning_$name.log" 2>&1
  # the device tool returns no names with '+' and no deep folders: one flat csv per run, one tarball
  mkdir -p /tmp/learning/$name && cp -r results/learning-$name/$cell-seed0/{metrics.csv,samples} /tmp/learning/$name/ 2>/dev/null
}
learning_grid grid clip+fm &
# VAE+FM on GenEval-style captions only (on CPU: GenEval 0.24 after 8,000 steps of batch 16,
# results/reference/multi_object/): how far do more steps take it?
$A toy data --out data/toy_short --short-fraction 1 2>&1 | tail -1
learning_grid grid_short vae+fm --set 'data.train.urls=data/toy_short/shards/train/shards-{00000..00005}.tar' &
wait
for f in /tmp/learning/*/metrics.csv; do d=${f%/metrics.csv}; d=${d##*/}; cp "$f" "$OUT/learning_${d/+/_}.csv"; done
tar czf "$OUT/learning_samples.tgz" --exclude="*.csv" --exclude="*.yaml" -C /tmp learning
python3 - "$OUT" <<'PY'
import sys, pandas as pd, pathlib
for f in sorted(pathlib.Path(sys.argv[1]).glob("learning_*.csv")):
    df = pd.read_csv(f)
    cols = [c for c in ("step", "train/loss", "geneval/overall", "dpg/overall", "fid/overall", "diversity/feature",
                        "recall/ratio") if c in df]
    evals = df.dropna(subset=["geneval/overall"]) if "geneval/overall" in df else df  # not the train-log rows
    print(f, "\n", evals[cols].to_string(index=False))
PY
fi

if want speed; then
SPEED_SHARDS=${SPEED_SHARDS:-data/toy/shards/train/shards-0000[01].tar}  # 2,000 images to cache
section "speed: paper-size cells at batch 16, before (baseline) / after, compile off"
timeout 210 python3 benchmarks/real_size.py --baseline --steps 8 --warmup 3 --shards "$SPEED_SHARDS" \
  --out "$OUT/speed_b16.json" 2>&1 | quiet | cut -c1-400
section "speed: paper-size FM cells, compile on, at the largest batch that fits"
timeout 200 python3 benchmarks/real_size.py --cells clip+fm vae+fm clip+mse --find-batch --steps 6 --warmup 4 \
  --shards "$SPEED_SHARDS" --set train.compile=true --out "$OUT/speed_maxbatch_compiled.json" 2>&1 | quiet | cut -c1-400
section "speed: toy cells on the GPU, before / after, and eval as a share of training (demo cadence)"
timeout 120 $A bench experiments/demo.yaml --device cuda --baseline --eval --steps 10 --warmup 3 \
  --set train.precision=bf16-mixed --set data.num_workers=4 --out "$OUT/speed_toy.json" 2>&1 | quiet | \
  grep -E "^(run|step_time_s|samples_per_s|mfu|share|speedup|loss_max|eval_)" 
python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for name in ("speed_b16.json", "speed_maxbatch_compiled.json"):
    f = out / name
    if not f.is_file():
        continue
    print(name)
    for cell, r in json.loads(f.read_text()).items():
        if "error" in r:
            print(f"  {cell}: {r['error']}"); continue
        b = r.get("baseline") or {}
        fmt = lambda x: "-" if x is None else f"{x:.3f}"
        print(f"  {cell:9} batch {r['batch_size']:4} step {r['step_time_s']:.3f}s mfu {fmt(r['mfu'])} "
              f"(baseline step {fmt(b.get('step_time_s'))}s mfu {fmt(b.get('mfu'))}, x{fmt(r.get('speedup'))}) "
              f"peak {r['peak_memory_gib']:.1f} GiB share {r['share']}")
PY
fi

section done
