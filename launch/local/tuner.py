"""A local hyperparameter tuner with SageMaker's strategies (Bayesian, Random, Grid, Hyperband)
over the same search space, driven by optuna. Each trial is a local training job; its metric
lines are read with the same regexes SageMaker uses, and it is scored as SageMaker scores it (the
last value of the objective metric); with early stopping "Auto", a trial whose
valid accuracy falls below the median of earlier trials at the same epoch is stopped (SIGTERM),
as SageMaker's early stopping does."""
from __future__ import annotations

import math
import os
import threading
from pathlib import Path

from .. import aws, tuning_report
from ..jobs import own_hook_hyperparameters
from . import jobs
from image_classifier import metrics
from image_classifier.paths import FEATURE_CACHE_ROOT
from image_classifier.search_space import Categorical, Integer, grid_points, hyperband

EPOCH = "valid:accuracy"


class JobFailed(Exception):
    pass


def sampler(strategy: str, space: dict, seed: int):
    import optuna
    if strategy == "Grid":
        return optuna.samplers.GridSampler({n: list(r.values) for n, r in space.items()}, seed=seed)
    if strategy == "Random":
        return optuna.samplers.RandomSampler(seed=seed)
    if strategy in ("Bayesian", "Hyperband"):
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=2)
    raise SystemExit(f"unknown strategy {strategy!r} (Bayesian, Random, Grid or Hyperband)")


def pruner(settings):
    import optuna
    if settings.strategy == "Hyperband":  # epochs is the resource, as SageMaker's Hyperband has it
        _, low, high = hyperband(settings.search_space, settings.hyperparameters)
        return optuna.pruners.HyperbandPruner(min_resource=low, max_resource=high)
    if settings.early_stopping == "Auto":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def suggest(trial, name: str, rng):
    if isinstance(rng, Categorical):
        return trial.suggest_categorical(name, list(rng.values))
    log = rng.scaling == "Logarithmic"
    if isinstance(rng, Integer):
        return trial.suggest_int(name, rng.low, rng.high, log=log)
    return trial.suggest_float(name, rng.low, rng.high, log=log)


def tune(settings, space: dict, data, channels: list[str], local_dir, runner: str, results: Path):
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not data:
        raise SystemExit("--local needs --data: a folder with train/ and valid/ class folders")
    name = aws.job_name(settings, "hpo", aws.MAX_TUNING_NAME)  # as the cloud names it
    root = Path(local_dir) / name
    n_trials = settings.max_jobs
    if settings.strategy == "Grid":  # the whole grid, as SageMaker runs it
        n_trials = grid_points(space)
    parallel = max(1, min(settings.max_parallel_jobs, n_trials))
    static = own_hook_hyperparameters(settings)  # each trial saves tensors for the rules and the report
    # With a frozen backbone, the first trial's backbone features serve every later trial.
    static.setdefault("feature-cache-dir", str((root / "feature-cache").resolve()))
    cache_root = {FEATURE_CACHE_ROOT: static["feature-cache-dir"]}  # train accepts the folder there
    # Parallel trials share this machine's cores: give each its share of loader workers and of
    # torch's compute threads (each process would otherwise start one thread per core).
    share = max(1, len(os.sched_getaffinity(0)) // parallel)
    static.setdefault("num-workers", share - 1)
    threads = {"OMP_NUM_THREADS": share, **cache_root}
    print(f"local tuning {name}: {settings.strategy}, {n_trials} trials, {parallel} at a time, "
          f"early stopping {settings.early_stopping}, objective {settings.objective_metric} maximized; "
          f"jobs in {root}", flush=True)
    rows, finished, lock = [], [], threading.Lock()
    study = optuna.create_study(direction="maximize", sampler=sampler(settings.strategy, space, seed=17),
                                pruner=pruner(settings))

    def objective(trial):
        params = {n: suggest(trial, n, r) for n, r in space.items()}
        job_name = f"{name}-{trial.number + 1:03d}"
        job = jobs.start(job_name, root, Path(data), channels, {**static, **params}, runner, settings.image_uri,
                         env=threads)
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        print(f"[{job_name}] started: {shown}", flush=True)
        pruned, epochs_seen = [], [0]

        def on_line(line):
            values = metrics.parse(line)
            if values[EPOCH] and line.startswith("epoch=") and not pruned:  # not the selected-model line
                epoch = epochs_seen[0]
                epochs_seen[0] += 1
                trial.report(values[EPOCH][0], epoch)
                print(f"[{job_name}] epoch {epoch + 1}: valid_acc={values[EPOCH][0]:.4f}", flush=True)
                if trial.should_prune():
                    pruned.append(epoch + 1)
                    print(f"[{job_name}] stopping early: below the median of earlier trials at epoch {epoch + 1}",
                          flush=True)
                    jobs.stop(job)

        jobs.follow(job, on_line)
        found = job.metrics()
        # SageMaker's objective value: the last one the metric's regex matched (train prints the
        # saved model's last), so local and cloud tuning rank trials alike.
        value = (found.get(settings.objective_metric) or [float("nan")])[-1]
        with lock:
            rows.append({"TrainingJobName": job_name, "TrainingJobStatus": job.status,
                         "FinalObjectiveValue": None if math.isnan(value) else value,
                         "TrainingElapsedTimeSeconds": round(job.seconds, 1), **params})
            finished.append(job)
        if pruned:
            print(f"[{job_name}] stopped early after {job.seconds:.0f} s", flush=True)
            raise optuna.TrialPruned()
        if not job.succeeded:
            print(f"[{job_name}] failed: {job.failure() or 'see ' + str(job.log)}", flush=True)
            raise JobFailed(job.failure())
        print(f"[{job_name}] done in {job.seconds:.0f} s: {settings.objective_metric} {value:.4f}", flush=True)
        return value

    study.optimize(objective, n_trials=n_trials, n_jobs=parallel, catch=(JobFailed,))
    table, plot = tuning_report.write(rows, space, settings.objective_metric, Path(results) / name)
    completed = [r for r in rows if r["TrainingJobStatus"] == "Completed" and r["FinalObjectiveValue"] is not None]
    if not completed:
        print(f"no trial completed; logs in {root}")
        return None
    best = max(completed, key=lambda r: r["FinalObjectiveValue"])
    best_job = next(j for j in finished if j.name == best["TrainingJobName"])
    print(f"best training job: {best_job.name}")
    print(f"  {settings.objective_metric}: {best['FinalObjectiveValue']:.4f}")
    print("  hyperparameters: " + ", ".join(f"{k}={best[k]}" for k in space))
    print(f"  model: {best_job.model_dir}")
    print(f"analytics: {table}\nplot: {plot}")
    (Path(results) / name / "best_job.txt").write_text(str(best_job.base) + "\n")
    return best_job
