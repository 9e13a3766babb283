"""``ablate sweep STUDY.yaml --trials N``: an optuna study over the spec's ``sweep:`` space.

Each trial is one run, ``results/<study>/trial-XXXX/``, made from the sweep's starting cell
with the sampled values applied as dotted overrides. The trial's metric is reported to optuna
each time it is logged (so the pruner can stop bad trials early) and its last logged value
is the objective.

``--trials N`` is the total number of finished (complete or pruned) trials the study should
hold: running the command again after an interruption tops the study up to N and keeps
what was done. Storage is ``results/<study>/optuna.db`` (SQLite) unless ``--storage`` names
another database URL; workers started with the same spec and URL share one study::

    # one worker per GPU, all feeding the same study
    for i in 0 1 2 3; do
      CUDA_VISIBLE_DEVICES=$i ablate sweep experiments/sweep_lr_queries.yaml --trials 40 \\
          --storage postgresql://user@db/ablate &
    done

(SQLite suits workers on one machine; use PostgreSQL/MySQL across nodes: ``pip install
'ablate[postgres]'`` brings psycopg 3, the driver SQLAlchemy uses for a plain
``postgresql://`` URL.) Workers sharing a study make exactly N trials between them: a
trial starts only while fewer than N trials are finished or running ahead of it, and a
sampler seed set in the spec is offset by the trial number (``spec.build_sampler``), so
workers never draw the same parameters. Interrupted
trials come back: Ctrl-C re-queues the trial's parameters before stopping, and a worker that
died outright (kill -9, pre-emption) stops sending heartbeats, so after ``grace_period`` its
trial is failed and re-queued by optuna's ``RetryFailedTrialCallback``. Either way the
re-queued trial keeps the run folder and resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings

import lightning as L
import optuna
from lightning.pytorch.loggers.logger import Logger

from ablate.config import ConfigError
from ablate.study.grid import write_study_yaml
from ablate.study.results import final_value
from ablate.study.spec import Study, build_pruner, build_sampler
from ablate.train import read_status, writable_dir, write_status

log = logging.getLogger("ablate.sweep")

COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
RUNNING = optuna.trial.TrialState.RUNNING


class StudyFull(Exception):
    """Another worker took the study's last trial while this one was being created."""


def trials_ahead(trial: optuna.Trial) -> int:
    """Trials that count before ``trial``: finished ones, and running ones created before it
    (the storage numbers trials atomically, so two workers never both see room for one)."""
    others = trial.study.get_trials(deepcopy=False, states=(*COUNTED, RUNNING))
    return sum(t.state in COUNTED or t.number < trial.number for t in others)


class _MetricTap(Logger):
    """A logger that only forwards what is logged to the pruning callback."""

    def __init__(self, observe):
        super().__init__()
        self._observe = observe

    @property
    def name(self) -> str:
        return "optuna"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self._observe(metrics, step)


class PruningCallback(L.Callback):
    """Report ``metric`` to ``trial`` each time it is logged; raise ``optuna.TrialPruned``
    at the next batch boundary when the pruner says so.

    (optuna-integration's PyTorchLightningPruningCallback is not installed and reads
    ``callback_metrics``, which eval metrics never reach: ``EvalCallback`` writes them to the
    trainer's loggers. So this listens where metrics.csv listens, through a logger.)
    """

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial = trial
        self.metric = metric
        self.reported: set[int] = set()
        self.prune_reason: str | None = None

    def setup(self, trainer, pl_module, stage) -> None:
        trainer.loggers.append(_MetricTap(self.observe))

    def observe(self, metrics: dict, step: int | None) -> None:
        value = metrics.get(self.metric)
        step = int(step or 0)
        if value is None or step in self.reported or not math.isfinite(float(value)):
            return
        self.reported.add(step)
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            self.prune_reason = f"pruned at step {step}: {self.metric} = {float(value):.4g}"

    def on_train_batch_start(self, trainer, *args) -> None:
        if self.prune_reason:
            raise optuna.TrialPruned(self.prune_reason)

    on_train_batch_end = on_train_batch_start


def suggest(trial: optuna.Trial, key: str, dist) -> object:
    D = optuna.distributions
    if isinstance(dist, D.CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, D.IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)


def make_objective(study: Study, trials: int, extra_callbacks=()):
    from ablate.train import fit

    metric = study.sweep.metric

    def objective(trial: optuna.Trial) -> float:
        if trials_ahead(trial) >= trials:
            trial.study.stop()
            trial.set_user_attr("surplus", True)
            raise StudyFull(f"the study already holds or runs {trials} trials; this one did not run")
        params = {key: suggest(trial, key, dist) for key, dist in study.distributions.items()}
        # A re-queued trial carries its run name (user attrs travel with retries).
        name = trial.user_attrs.get("run") or f"trial-{trial.number:04d}"
        trial.set_user_attr("run", name)
        run = study.trial_spec(name, params, {"cell": name, "trial": trial.number, "axes": params})
        if read_status(run.run_dir).get("state") != "finished":  # else: died after training
            try:
                fit(run, resume=True, extra_callbacks=(PruningCallback(trial, metric), *extra_callbacks))
            except optuna.TrialPruned:
                write_status(run.run_dir, state="pruned")
                raise
            except (KeyboardInterrupt, SystemExit) as exn:
                # Ctrl-C (Lightning re-raises it as SystemExit): queue these parameters again,
                # so the next start resumes this run; optuna marks this trial failed.
                trial.study.enqueue_trial(trial.params, user_attrs={"run": name})
                log.warning("%s interrupted; re-queued, run the sweep again to resume it", name)
                raise KeyboardInterrupt(f"{name} interrupted") from exn
        return final_value(run.run_dir, metric)

    return objective


def storage_url(study: Study, storage: str | None = None) -> str:
    return storage or f"sqlite:///{(study.study_dir / 'optuna.db').resolve()}"


def _storage(url: str, sweep, attempts: int = 5) -> optuna.storages.RDBStorage:
    """optuna's RDB storage. Workers started together on a new database race to create its
    tables (one gets a unique-constraint error); the loser retries and finds them made."""
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are flagged experimental; they are the point
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=sweep.heartbeat_interval, grace_period=sweep.grace_period,
                    heartbeat_stale_trial_callback=optuna.storages.RetryFailedTrialCallback(sweep.max_retry))
        except ModuleNotFoundError as err:  # e.g. psycopg for postgresql://
            raise ConfigError(f"--storage {url}: its database driver {err.name!r} is not installed "
                              "(for PostgreSQL: pip install 'ablate[postgres]')") from None
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as err:
            if attempt == attempts - 1:
                reason = str(err.orig if hasattr(err, "orig") else err).strip().splitlines()[0]
                raise ConfigError(f"--storage {url}: cannot open the database: {reason}") from None
            time.sleep(0.5 + random.random())


def open_study(study: Study, storage: str | None = None) -> optuna.Study:
    sweep = study.sweep
    if sweep is None:
        raise ConfigError(f"{study.source}: no sweep: section (metric, direction, params)")
    study.study_dir.mkdir(parents=True, exist_ok=True)
    rdb = _storage(storage_url(study, storage), sweep)
    return optuna.create_study(
        storage=rdb, study_name=study.name, direction=sweep.direction, load_if_exists=True,
        sampler=build_sampler(sweep, study.distributions, study.source),
        pruner=build_pruner(sweep, study.source))


def run_sweep(study: Study, trials: int, storage: str | None = None, extra_callbacks=(),
              echo=print) -> optuna.Study:
    """Top the optuna study up to ``trials`` complete-or-pruned trials; return it."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials {trials!r}: expected an integer >= 1 (the total number of "
                          "trials the study should hold)")
    writable_dir(study.study_dir, "study folder")
    ostudy = open_study(study, storage)
    write_study_yaml(study)
    done = len(ostudy.get_trials(deepcopy=False, states=COUNTED))
    echo(f"sweep {study.name}: {done} of {trials} trials done; storage {storage_url(study, storage)}")
    if done < trials:
        # n_trials bounds this worker (failing trials do not loop forever); MaxTrialsCallback
        # stops a worker once finished + running trials reach N (running ones may still
        # fail: then their worker goes on), and the objective refuses a trial created past N.
        ostudy.optimize(make_objective(study, trials, extra_callbacks), n_trials=trials - done,
                        catch=(Exception,), gc_after_trial=True,
                        callbacks=[optuna.study.MaxTrialsCallback(trials, states=(*COUNTED, RUNNING))])
    frame = ostudy.trials_dataframe()
    frame.to_csv(study.study_dir / "trials.csv", index=False)
    counts = frame["state"].value_counts().to_dict() if "state" in frame else {}
    echo(f"trials: {counts}; table: {study.study_dir / 'trials.csv'}")
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in ostudy.trials):
        best = ostudy.best_trial
        echo(f"best: {best.user_attrs.get('run')} {study.sweep.metric} = {best.value:.6g} {best.params}")
    return ostudy

