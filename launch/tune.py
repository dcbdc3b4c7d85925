"""Tune with SageMaker's HyperparameterTuner (or --local on this machine), wait, print the best
training job, and write the analytics table and plots.

    python -m launch.tune [--strategy Bayesian|Random|Grid|Hyperband] [--max-jobs 8]
                          [--max-parallel-jobs 2] [--early-stopping Auto|Off] [--hp backbone=resnet50]
    python -m launch.tune --local --data DIR [--max-jobs 4]
The objective is valid:accuracy, maximized: the test set is never used to choose.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from launch import local as local_args
from launch import aws, backbones, jobs, security, settings as settings_mod, tuning_report
from image_classifier.metrics import METRIC_DEFINITIONS
from image_classifier.search_space import (GRID_LIMIT, RESOURCE, Categorical, Continuous, Integer, as_grid,
                                           grid_points, hyperband)

TERMINAL = ("Completed", "Stopped", "Failed")


def sdk_ranges(space: dict) -> dict:
    from sagemaker.tuner import CategoricalParameter, ContinuousParameter, IntegerParameter
    out = {}
    for name, rng in space.items():
        if isinstance(rng, Categorical):
            out[name] = CategoricalParameter([str(v) for v in rng.values])
        elif isinstance(rng, Integer):
            out[name] = IntegerParameter(rng.low, rng.high, scaling_type=rng.scaling)
        elif isinstance(rng, Continuous):
            out[name] = ContinuousParameter(rng.low, rng.high, scaling_type=rng.scaling)
    return out


def tuning_space(settings) -> dict:
    """The ranges the tuner samples. Grid: categorical values only, and the whole grid fits one
    tuning job. Hyperband: `epochs` is its resource (static, at the max), not a tuned range."""
    if settings.strategy == "Grid":
        grid = as_grid(settings.search_space)
        if grid_points(grid) > GRID_LIMIT:
            raise SystemExit(f"the grid has {grid_points(grid)} points; a SageMaker tuning job runs at most "
                             f"{GRID_LIMIT} training jobs: fewer values or hyperparameters in search_space")
        return grid
    if settings.strategy == "Hyperband":
        space, low, high = hyperband(settings.search_space, settings.hyperparameters)
        settings.hyperparameters = {**settings.hyperparameters, RESOURCE: high}
        return space
    return settings.search_space


def max_jobs(settings, space: dict) -> int:
    """Grid: the number of grid points (SageMaker's rule: unset or exactly that many)."""
    return grid_points(space) if settings.strategy == "Grid" else settings.max_jobs


def strategy_config(settings):
    """Hyperband's resource bounds, from the search space's epochs."""
    if settings.strategy != "Hyperband":
        return None
    from sagemaker.tuner import HyperbandStrategyConfig, StrategyConfig
    _, low, high = hyperband(settings.search_space, settings.hyperparameters)
    return StrategyConfig(HyperbandStrategyConfig(max_resource=high, min_resource=low))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m launch.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="S3 prefix with train/ valid/ (default s3://BUCKET/PREFIX/data), "
                        "or a folder with --local")
    parser.add_argument("--channels", help="channels for every training job (default train,valid: those "
                        "of them that have data; each channel named here must have data)")
    parser.add_argument("--job-name", help="tuning job name (32 characters at most)")
    parser.add_argument("--no-wait", action="store_true", help="return once the tuning job is created")
    parser.add_argument("--poll-seconds", type=float, default=30.0, help="progress interval while waiting")
    parser.add_argument("--results", default="tuning-results", help="where analytics.csv and objective.png go")
    parser.add_argument("--instance-count", dest="train_instance_count", help="instances for each trial (the "
                        "SDK's instance_count; same as --train-instance-count): data-parallel over all their GPUs")
    local_args.add_arguments(parser)
    settings_mod.add_arguments(parser)
    return parser.parse_args(argv)


def wait(client, name: str, poll_seconds: float) -> dict:
    """Poll the tuning job and print progress until it ends."""
    while True:
        job = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        counts, best = job["TrainingJobStatusCounters"], job.get("BestTrainingJob")
        line = (f"{time.strftime('%H:%M:%S')} {job['HyperParameterTuningJobStatus']}: "
                f"{counts.get('Completed', 0)} completed, {counts.get('InProgress', 0)} running, "
                f"{counts.get('Stopped', 0)} stopped early, "
                f"{counts.get('NonRetryableError', 0) + counts.get('RetryableError', 0)} failed")
        if best:
            metric = best["FinalHyperParameterTuningJobObjectiveMetric"]
            line += f"; best {metric['MetricName']} {metric['Value']:.4f} ({best['TrainingJobName']})"
        print(line, flush=True)
        if job["HyperParameterTuningJobStatus"] in TERMINAL:
            return job
        time.sleep(poll_seconds)


def analytics_rows(tuner, space: dict) -> list[dict]:
    frame = tuner.analytics().dataframe()
    columns = ["TrainingJobName", "TrainingJobStatus", "FinalObjectiveValue", *space]
    rows = frame[[c for c in columns if c in frame.columns]].to_dict("records")
    for row in rows:
        value = row.get("FinalObjectiveValue")
        row["FinalObjectiveValue"] = None if value is None or value != value else float(value)  # NaN: no value
    return rows


def main(argv=None, session=None) -> int:
    args = parse_args(argv)
    settings = settings_mod.load(args)
    space = tuning_space(settings)
    channels = [c for c in (args.channels or "train,valid").split(",") if c]
    if args.local:
        from launch.local import jobs as local_jobs, tuner as local_tuner
        channels = local_jobs.present(args.data, channels, explicit=bool(args.channels))
        best = local_tuner.tune(settings, space, args.data, channels, args.local_dir, args.local_runner,
                                Path(args.results))
        return 0 if best is not None else 1

    from sagemaker.tuner import HyperparameterTuner
    parallel = min(settings.max_parallel_jobs, max_jobs(settings, space))
    if parallel > settings.parallel_jobs_quota:  # the service refuses the request (ResourceLimitExceeded)
        raise SystemExit(f"max_parallel_jobs {parallel} is over the quota of {settings.parallel_jobs_quota} parallel "
                         "training jobs per tuning job (10 by default; Service Quotas can raise it to 100): lower it, "
                         "or set parallel_jobs_quota to your account's raised quota")
    if "backbone" in space and settings.network_isolation:
        raise SystemExit("--network-isolation with a tuned backbone: a job has one 'pretrained' channel; tune the "
                         "backbone without isolation, or fix it (--hp backbone=NAME) and stage its weights")
    pretrained = backbones.check_isolation(settings)  # before any request
    security.vpc(settings)
    for note in jobs.cost_notes(settings, parallel):
        print(f"note: {note}", file=sys.stderr, flush=True)
    session = session or aws.session(settings)
    security.check_distributed_vpc(settings, jobs.ec2_client(session), settings.train_instance_count)
    if settings.debugger:
        settings.hyperparameters = jobs.own_hook_hyperparameters(settings)
        print("Debugger: tuning jobs take no hook or rules; each trial saves its tensors into its "
              f"output.tar.gz instead (debug-dir={jobs.OWN_HOOK_DEBUG_DIR}); "
              "python -m launch.report JOB runs the rules over them")
    name = aws.check_name(args.job_name, "--job-name", aws.MAX_TUNING_NAME) if args.job_name \
        else aws.job_name(settings, "hpo", aws.MAX_TUNING_NAME)
    checkpoints = None
    if settings.spot:  # an interrupted spot trial resumes from its own checkpoints, not from epoch 1
        checkpoints = settings.s3("checkpoints", name)
        # each trial in a folder of its own, removed when it ends; others' removed once past MaxWait
        settings.hyperparameters = {**settings.hyperparameters, "checkpoint-per-job": "true",
                                    "trial-lifetime-hours": f"{settings.max_wait_seconds / 3600:g}"}
    tuner = HyperparameterTuner(
        jobs.estimator(settings, session, checkpoint_s3_uri=checkpoints, for_tuning=True),
        objective_metric_name=settings.objective_metric,
        objective_type=settings.objective_type,
        hyperparameter_ranges=sdk_ranges(space),
        metric_definitions=METRIC_DEFINITIONS,
        strategy=settings.strategy,
        strategy_config=strategy_config(settings),
        max_jobs=max_jobs(settings, space),
        max_parallel_jobs=parallel,
        early_stopping_type="Off" if settings.strategy == "Hyperband" else settings.early_stopping,
        tags=jobs.TAGS,
    )
    tuner.fit(jobs.inputs(settings, session, args.data, channels, explicit=bool(args.channels), pretrained=pretrained),
              job_name=name, wait=False)
    print(f"tuning job: {name} ({settings.strategy}, {max_jobs(settings, space)} jobs, "
          f"{settings.max_parallel_jobs} at a time, objective {settings.objective_metric} maximized)", flush=True)
    if args.no_wait:
        return 0
    final = wait(session.sagemaker_client, name, args.poll_seconds)
    if final["HyperParameterTuningJobStatus"] != "Completed" or not final.get("BestTrainingJob"):
        print(f"tuning job {name} ended {final['HyperParameterTuningJobStatus']}: "
              f"{final.get('FailureReason', 'no training job gave an objective value')}", file=sys.stderr)
        return 1
    best = tuner.best_training_job()
    described = session.sagemaker_client.describe_training_job(TrainingJobName=best)
    tuned = {k: v for k, v in described["HyperParameters"].items() if not k.startswith(("sagemaker_", "_"))}
    print(f"best training job: {best}")
    value = final["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
    print(f"  {settings.objective_metric}: {value:.4f}")
    print("  hyperparameters: " + ", ".join(f"{k}={v}" for k, v in sorted(tuned.items())))
    print(f"  model: {described['ModelArtifacts']['S3ModelArtifacts']}")
    table, plot = tuning_report.write(analytics_rows(tuner, space), space, settings.objective_metric,
                                      Path(args.results) / name)
    print(f"analytics: {table}\nplot: {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
