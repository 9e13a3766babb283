"""``ablate grid STUDY.yaml``: every cell of a study, one after another; re-running resumes.

Each cell is an independent ``ablate fit`` run in ``results/<study>/<cell>-seed<seed>/``. A
cell whose ``status.json`` says finished is skipped, an interrupted one (a ``last.ckpt``)
resumes exactly, a failed one is recorded (status.json + ``grid.log``) and the others go on.
A finished cell whose resolved spec changed since (status.json's ``spec_hash``) is refused,
naming the changed keys, unless ``--rerun-changed`` asks to run it again from scratch.
``--launcher subprocess`` runs each cell as ``python -m ablate fit`` in its own process, so
nothing a failing cell does (CUDA errors, leaked memory, global state) reaches the next one;
the resolved run specs it uses stay in ``results/<study>/specs/`` for re-running by hand.

Scaling out — cells share nothing but the results folder, so any split of them works:

* one GPU, every cell in turn::

      ablate grid experiments/blip3o_design.yaml

* several GPUs on one machine, one worker per GPU, each taking every N-th cell::

      for i in 0 1 2 3; do
        CUDA_VISIBLE_DEVICES=$i ablate grid experiments/blip3o_design.yaml --shard $i/4 &
      done; wait
      # or by name:  CUDA_VISIBLE_DEVICES=0 ablate grid STUDY.yaml --only 'clip+*'

* SLURM, one array task per shard (``--array=0-3`` gives task ids 0..3, count 4)::

      #SBATCH --array=0-3 --gpus-per-task=1
      srun ablate grid experiments/blip3o_design.yaml \\
          --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT

  Re-submitting the same array after a time-out or pre-emption resumes every cell from its
  last checkpoint. One cell on several GPUs / nodes is Lightning's job: set
  ``train.devices``, ``train.num_nodes`` and ``train.strategy`` (e.g. ``--set
  train.devices=8 --set train.strategy=ddp``) and start it with ``srun`` as usual.

Never let two workers run the same cell: shards and ``--only`` selections must be disjoint.
On one machine, ``--workers N`` starts the N shard workers itself (see :func:`run_workers`).
"""

from __future__ import annotations

import fnmatch
import gc
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ablate.config import ConfigError
from ablate.provenance import spec_changes
from ablate.study.spec import Cell, Study
from ablate.train import last_checkpoint, read_status, record_failure, writable_dir

log = logging.getLogger("ablate.grid")

LAUNCHERS = ("local", "subprocess")


@dataclass
class Outcome:
    cell: Cell
    before: str  # new | finished | changed | resume | restart
    result: str  # skipped | finished | failed
    error: str | None = None
    seconds: float = 0.0


def changed_keys(cell: Cell) -> list[str]:
    """Spec keys that differ from those the cell finished with ([] if none or unfinished)."""
    status = read_status(cell.run.run_dir)
    if status.get("state") != "finished":
        return []
    return spec_changes(cell.run, cell.run.run_dir, status) or []


def cell_state(cell: Cell) -> str:
    """new, finished, changed (finished with another spec), resume (has a checkpoint) or
    restart (ran, but left no checkpoint)."""
    run_dir = cell.run.run_dir
    status = read_status(run_dir)
    if status.get("state") == "finished":
        return "changed" if changed_keys(cell) else "finished"
    if last_checkpoint(run_dir):
        return "resume"
    return "restart" if status else "new"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {text!r}: need 0 <= I < N")
    return index, count


def select(cells: list[Cell], only=(), shard: tuple[int, int] | None = None) -> list[Cell]:
    """``--only`` globs match the run name or the cell name; ``--shard I/N`` then keeps every
    N-th of the selected cells, starting at I (a deterministic, disjoint split)."""
    if only:
        picked = [c for c in cells if any(fnmatch.fnmatchcase(c.name, p) or
                                          fnmatch.fnmatchcase(c.cell, p) for p in only)]
        if not picked:
            raise ConfigError(f"--only {' '.join(only)}: matches no cell; runs: "
                              f"{[c.name for c in cells]}")
        cells = picked
    if shard:
        index, count = shard
        cells = cells[index::count]
    return cells


def write_study_yaml(study: Study) -> Path:
    """``results/<study>/study.yaml``, written once; a later, different spec only warns, as
    other workers may be running the recorded one."""
    path = study.study_dir / "study.yaml"
    text = yaml.safe_dump(study.resolved(), sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".study.{os.getpid()}.yaml")
        tmp.write_text(text)
        os.replace(tmp, path)
    elif path.read_text() != text:
        log.warning("%s records a different spec than %s (edited spec or --set?); keeping it",
                    path, study.source)
    return path


def _log_line(study: Study, cell: Cell, event: str, error: str | None = None) -> None:
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')}\t{cell.name}\t{event}"
    if error:
        line += "\t" + " ".join(error.split())[:500]
    with (study.study_dir / "grid.log").open("a") as f:
        f.write(line + "\n")


def _fit_local(cell: Cell, extra_callbacks) -> None:
    from ablate.train import fit

    try:
        fit(cell.run, resume=True, extra_callbacks=extra_callbacks)
    finally:  # the next cell starts from clean memory
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _fit_subprocess(cell: Cell, study: Study) -> None:
    spec_path = study.study_dir / "specs" / f"{cell.name}.yaml"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(yaml.safe_dump(cell.spec, sort_keys=False))
    run_dir = cell.run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "ablate", "fit", str(spec_path), "--resume"]
    tail: list[str] = []
    # Tee the child's output to the console and <run>/fit.log (progress stays visible).
    with (run_dir / "fit.log").open("a") as logfile, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            logfile.write(line)
            sys.stdout.write(line)
            tail = (tail + [line.rstrip()])[-20:]
    if proc.returncode:
        status = read_status(run_dir)
        error = status.get("error") if status.get("state") == "failed" else None
        error = error or f"exit code {proc.returncode}: {' | '.join(t for t in tail[-3:] if t)}"
        raise RuntimeError(error)


def run_cell(study: Study, cell: Cell, launcher: str = "local", extra_callbacks=()) -> Outcome:
    before = cell_state(cell)
    if before == "finished":
        return Outcome(cell, before, "skipped")
    if before == "changed":  # run_grid refused unless --rerun-changed: start again, from scratch
        shutil.rmtree(cell.run.run_dir)
    _log_line(study, cell, {"new": "start", "restart": "start", "changed": "rerun-changed"}.get(before, "resume"))
    start = time.time()
    try:
        if launcher == "subprocess":
            _fit_subprocess(cell, study)
        else:
            _fit_local(cell, extra_callbacks)
    except Exception as err:  # noqa: BLE001 - one failing cell must not stop the grid
        error = str(err) if launcher == "subprocess" else f"{type(err).__name__}: {err}"
        log.error("%s failed: %s", cell.name, error)
        run_dir = cell.run.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if read_status(run_dir).get("state") != "failed":  # e.g. a child killed by the OOM killer
            record_failure(run_dir, error=error)
        _log_line(study, cell, "failed", error)
        return Outcome(cell, before, "failed", error, time.time() - start)
    except BaseException as err:  # Ctrl-C, a kill: stop the whole grid, say where
        _log_line(study, cell, "interrupted", type(err).__name__)
        raise
    _log_line(study, cell, "finished")
    return Outcome(cell, before, "finished", None, time.time() - start)


def describe(cells: list[Cell]) -> str:
    """One line per cell: run name, state, axis values (a pandas table, for alignment)."""
    import pandas as pd

    rows = [{"run": c.name, "state": cell_state(c), **{k: v for k, v in c.axes.items() if k != "cell"}}
            for c in cells]
    return pd.DataFrame(rows).fillna("").to_string(index=False)


def refuse_changed(cells: list[Cell], source: str) -> None:
    """A finished cell whose spec was edited would be skipped and its old results reported
    under the new spec: refuse, naming the cells and keys."""
    changed = {c.name: keys for c in cells if (keys := changed_keys(c))}
    if changed:
        lines = "; ".join(f"{name}: {', '.join(keys[:8])}" + (" ..." if len(keys) > 8 else "")
                          for name, keys in changed.items())
        raise ConfigError(f"{source}: {len(changed)} finished run(s) were made from a different spec "
                          f"({lines}); restore the spec, or pass --rerun-changed to run them again "
                          "from scratch")


def run_grid(study: Study, only=(), shard: tuple[int, int] | None = None, dry_run: bool = False,
             launcher: str = "local", extra_callbacks=(), echo=print,
             rerun_changed: bool = False) -> list[Outcome]:
    """Run the selected cells of ``study`` in turn; return what happened to each."""
    if launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher {launcher!r}: choose one of {list(LAUNCHERS)}")
    cells = select(study.cells, only, shard)
    echo(f"study {study.name}: {len(cells)} of {len(study.cells)} runs -> {study.study_dir}")
    echo(describe(cells))
    if dry_run:
        return [Outcome(c, cell_state(c), "dry-run") for c in cells]
    if not rerun_changed:
        refuse_changed(cells, study.source)
    writable_dir(study.study_dir, "study folder")
    write_study_yaml(study)
    outcomes = []
    for i, cell in enumerate(cells, 1):
        echo(f"[{i}/{len(cells)}] {cell.name}: {cell_state(cell)}")
        outcomes.append(run_cell(study, cell, launcher, extra_callbacks))
    echo("\n".join(f"{o.cell.name:<40} {o.result:<9} {o.seconds:8.1f}s  {o.error or ''}"
                   for o in outcomes))
    return outcomes


def check_workers(workers: int) -> None:
    """``--workers`` of ``ablate grid`` / ``ablate demo``: at least one."""
    if workers < 1:
        raise ConfigError(f"--workers {workers}: need at least 1")


def run_states(cells: list[Cell]) -> dict:
    """Each run's status.json state (None before it starts)."""
    return {c.name: read_status(c.run.run_dir).get("state") for c in cells}


def echo_changes(cells: list[Cell], seen: dict, start: float, echo=print) -> dict:
    """Echo each run whose status.json state changed since ``seen``; the new states."""
    now = run_states(cells)
    for name, state in now.items():
        if state != seen.get(name):
            echo(f"  {name}: {state} ({time.time() - start:.0f}s)")
    return now


def run_workers(study: Study, overrides=(), workers: int = 2, only=(), rerun_changed: bool = False,
                echo=print, poll_s: float = 5.0) -> list[Outcome]:
    """Run a study's cells in ``workers`` local processes side by side: ``ablate grid
    STUDY --shard i/N`` each, every one with ``cores // N`` torch threads. Small models use
    a second thread poorly (a CPU cell on two threads is far from twice as fast), so two
    cells at once finish sooner than one after the other. The target feature caches are
    filled first, here, so no two workers encode the same data; each worker's output goes to
    ``<study>/worker<i>.log``. ``study`` is the loaded ``study.source`` with ``overrides``
    (the workers load the same file with the same ``--set``). Returns what happened to every
    selected cell."""
    from ablate.data.cache_cli import fill_run_caches

    check_workers(workers)
    cells = select(study.cells, only)
    if not rerun_changed:
        refuse_changed(cells, study.source)
    writable_dir(study.study_dir, "study folder")
    write_study_yaml(study)
    before = {c.name: cell_state(c) for c in cells}
    fill_run_caches([c.run for c in study.cells], skip_failing=True)
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    args = [a for o in overrides for a in ("--set", o if isinstance(o, str) else f"{o[0]}={o[1]}")]
    args += [a for p in only for a in ("--only", p)] + (["--rerun-changed"] if rerun_changed else [])
    echo(f"study {study.name}: {len(cells)} runs in {workers} workers of {threads} thread(s) each; "
         f"logs: {study.study_dir}/worker<i>.log")
    start, procs = time.time(), []
    try:
        for i in range(workers):
            log_file = open(study.study_dir / f"worker{i}.log", "a")  # noqa: SIM115 - closed below
            cmd = [sys.executable, "-m", "ablate", "grid", study.source, "--shard", f"{i}/{workers}", *args]
            procs.append((subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT), log_file))
        seen = run_states(cells)
        while any(proc.poll() is None for proc, _ in procs):
            time.sleep(poll_s)
            seen = echo_changes(cells, seen, start, echo)  # the console shows the runs progress
        for proc, log_file in procs:
            proc.wait()
            log_file.close()
    except BaseException:  # Ctrl-C: stop the workers too; their runs resume next time
        for proc, _ in procs:
            proc.terminate()
        raise
    outcomes = []
    for cell in cells:
        state = read_status(cell.run.run_dir)
        result = "finished" if state.get("state") == "finished" else "failed"
        error = None if result == "finished" else state.get("error") or "the worker stopped before this run finished"
        outcomes.append(Outcome(cell, before[cell.name], result, error, time.time() - start))
    echo("\n".join(f"{o.cell.name:<40} {o.result:<9} {o.error or ''}" for o in outcomes))
    return outcomes
