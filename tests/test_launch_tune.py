"""launch/tune.py against a stubbed SageMaker client (requests validated by botocore)."""
import csv
import re

import pytest

from image_classifier import hyperparameters, metrics, search_space
from sagemaker_stub import (arn, best_job, describe_training_job,
                            describe_tuning_job)

SPACE = search_space.SEARCH_SPACE


def summary(name, value, tuned):
    return {"TrainingJobName": name, "TrainingJobArn": arn("training-job", name), "CreationTime": best_job(
        name, 0, {})["CreationTime"], "TrainingJobStatus": "Completed", "TunedHyperParameters": tuned,
        "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "valid:accuracy", "Value": value}}


def test_tuning_job_request_progress_best_job_and_report(sm, tmp_path, trained, capsys):
    name = "ic-hpo-test"
    tuned = [{"lr": "0.001", "batch-size": "32", "epochs": "4", "weight-decay": "0.0001"},
             {"lr": "0.01", "batch-size": "16", "epochs": "2", "weight-decay": "1e-05"}]
    best = best_job(f"{name}-001", 0.93, tuned[0])
    sm.respond("create_hyper_parameter_tuning_job",
               {"HyperParameterTuningJobArn": arn("hyper-parameter-tuning-job", name)})
    sm.respond("describe_hyper_parameter_tuning_job", describe_tuning_job(name, "InProgress", SPACE, 1, 1, best))
    sm.respond("describe_hyper_parameter_tuning_job", describe_tuning_job(name, "Completed", SPACE, 2, 0, best))
    sm.respond("describe_hyper_parameter_tuning_job", describe_tuning_job(name, "Completed", SPACE, 2, 0, best))
    sm.respond("describe_training_job", describe_training_job(best["TrainingJobName"], {
        **tuned[0], "backbone": "resnet50", "_tuning_objective_metric": "valid:accuracy"}))
    sm.respond("list_training_jobs_for_hyper_parameter_tuning_job", {"TrainingJobSummaries": [
        summary(f"{name}-001", 0.93, tuned[0]), summary(f"{name}-002", 0.71, tuned[1])]})
    sm.data("train", "valid")

    assert sm.run("tune", "--job-name", name, "--poll-seconds", "0", "--max-jobs", "4", "--hp", "backbone=resnet50",
                    "--results", str(tmp_path)) == 0
    sm.done()
    req = sm.sent("CreateHyperParameterTuningJob")
    config = req["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Bayesian"
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "valid:accuracy"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 4, "MaxParallelTrainingJobs": 2}
    assert config["TrainingJobEarlyStoppingType"] == "Auto"
    ranges = config["ParameterRanges"]
    assert ranges["ContinuousParameterRanges"] == [
        {"Name": "lr", "MinValue": "0.0001", "MaxValue": "0.03", "ScalingType": "Logarithmic"},
        {"Name": "weight-decay", "MinValue": "1e-06", "MaxValue": "0.01", "ScalingType": "Logarithmic"}]
    assert ranges["IntegerParameterRanges"] == [{"Name": "epochs", "MinValue": "2", "MaxValue": "8",
                                                 "ScalingType": "Auto"}]
    assert ranges["CategoricalParameterRanges"] == [{"Name": "batch-size", "Values": ["16", "32", "64"]}]
    # Every range bound and value is one the container parses.
    for r in ranges["ContinuousParameterRanges"] + ranges["IntegerParameterRanges"]:
        hyperparameters.BY_NAME[r["Name"]].parse(r["MinValue"]), hyperparameters.BY_NAME[r["Name"]].parse(r["MaxValue"])
    definition = req["TrainingJobDefinition"]
    static = definition["StaticHyperParameters"]
    assert static["backbone"] == "resnet50" and not set(static) & set(SPACE)
    hyperparameters.parse(static)  # the container accepts them (sagemaker_* keys are ignored)
    # No hook or rules exist for tuning jobs: each trial's own hook writes into output.tar.gz.
    assert static["debug-dir"] == "data/debug"
    out = capsys.readouterr().out
    assert "Debugger: tuning jobs take no hook or rules" in out
    # The objective is one of the metric definitions and reads the real container's output.
    defs = definition["AlgorithmSpecification"]["MetricDefinitions"]
    assert defs == metrics.METRIC_DEFINITIONS
    objective = next(d for d in defs if d["Name"] == config["HyperParameterTuningJobObjective"]["MetricName"])
    assert re.findall(objective["Regex"], (trained / "train.log").read_text())
    assert "test" not in objective["Name"]

    assert "InProgress: 1 completed, 1 running" in out and "best valid:accuracy 0.9300" in out
    assert f"best training job: {name}-001" in out and "lr=0.001" in out and "_tuning_objective_metric" not in out
    rows = list(csv.DictReader(open(tmp_path / name / "analytics.csv")))
    assert [r["TrainingJobName"] for r in rows] == [f"{name}-001", f"{name}-002"]
    assert (rows[0]["batch-size"], rows[0]["epochs"], rows[1]["weight-decay"]) == ("32", "4", "1e-05")
    assert (tmp_path / name / "objective.png").stat().st_size > 10_000


def test_grid_strategy_sends_only_categorical_ranges(sm):
    sm.respond("create_hyper_parameter_tuning_job",
               {"HyperParameterTuningJobArn": arn("hyper-parameter-tuning-job", "g")})
    sm.data("train", "valid")
    assert sm.run("tune", "--job-name", "g", "--strategy", "Grid", "--no-wait") == 0
    ranges = sm.sent("CreateHyperParameterTuningJob")["HyperParameterTuningJobConfig"]["ParameterRanges"]
    assert not ranges.get("ContinuousParameterRanges") and not ranges.get("IntegerParameterRanges")
    values = {r["Name"]: r["Values"] for r in ranges["CategoricalParameterRanges"]}
    assert values["lr"] == ["0.0001", "0.00173", "0.03"] and values["epochs"] == ["2", "5", "8"]
    for name, vals in values.items():
        for v in vals:
            hyperparameters.BY_NAME[name].parse(v)
    # SageMaker's rule: MaxNumberOfTrainingJobs unset or the number of grid points (3 x 3 x 3 x 3)
    assert sm.sent("CreateHyperParameterTuningJob")["HyperParameterTuningJobConfig"]["ResourceLimits"][
        "MaxNumberOfTrainingJobs"] == 81


def test_the_recipe_preset_tunes_the_recipe_options_too(sm, tmp_path):
    sm.respond("create_hyper_parameter_tuning_job",
               {"HyperParameterTuningJobArn": arn("hyper-parameter-tuning-job", "r")})
    sm.data("train", "valid")
    assert sm.run("tune", "--job-name", "r", "--search-preset", "recipe", "--no-wait") == 0
    ranges = sm.sent("CreateHyperParameterTuningJob")["HyperParameterTuningJobConfig"]["ParameterRanges"]
    tuned = {r["Name"]: r for kind in ranges.values() for r in kind}
    assert set(tuned) == set(search_space.RECIPE_SPACE) > set(SPACE)
    assert tuned["augment"]["Values"] == ["none", "trivialaugment", "randaugment"]
    assert (tuned["label-smoothing"]["MinValue"], tuned["label-smoothing"]["MaxValue"]) == ("0.0", "0.2")
    for r in tuned.values():  # every value the tuner can pick is one the container parses
        for v in r.get("Values", [r.get("MinValue"), r.get("MaxValue")]):
            hyperparameters.BY_NAME[r["Name"]].parse(v)
    config = tmp_path / "c.toml"
    config.write_text('search_preset = "fancy"\n')
    with pytest.raises(SystemExit, match="unknown search preset 'fancy': one of default, recipe"):
        sm.run("tune", "--config", str(config), "--no-wait")


def test_a_grid_over_sagemakers_job_limit_is_refused_before_any_request(sm, tmp_path):
    config = tmp_path / "big.toml"
    config.write_text("[search_space]\n" + "".join(
        f'{name} = {{ values = {values} }}\n' for name, values in
        [("lr", [0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009, 0.01]),
         ("batch-size", [8, 16, 32, 64]), ("epochs", [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
         ("weight-decay", [0.0, 0.0001])]))
    with pytest.raises(SystemExit, match="the grid has 800 points; a SageMaker tuning job runs at most 750"):
        sm.run("tune", "--config", str(config), "--strategy", "Grid", "--no-wait")
    assert sm.requests == []


def test_hyperband_turns_sagemaker_early_stopping_off(sm):
    sm.respond("create_hyper_parameter_tuning_job",
               {"HyperParameterTuningJobArn": arn("hyper-parameter-tuning-job", "h")})
    sm.data("train", "valid")
    sm.run("tune", "--job-name", "h", "--strategy", "Hyperband", "--no-wait")
    sent = sm.sent("CreateHyperParameterTuningJob")
    config = sent["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Hyperband" and config.get("TrainingJobEarlyStoppingType", "Off") == "Off"
    # epochs is Hyperband's resource: bounded by the search space's range, static at its max, not tuned
    assert config["StrategyConfig"] == {"HyperbandStrategyConfig": {"MinResource": 2, "MaxResource": 8}}
    tuned = [r["Name"] for kind in config["ParameterRanges"].values() for r in kind]
    assert "epochs" not in tuned and "lr" in tuned
    assert sent["TrainingJobDefinition"]["StaticHyperParameters"]["epochs"] == "8"


@pytest.mark.parametrize("prefix", ["ic", "image-classifier", "a-very-long-project-prefix-for-dogs-and-cats-classifier",
                                    "x" * 40 + "-" * 5 + "y"])
def test_tuning_job_names_are_valid_and_unique_for_any_prefix(sm, prefix):
    for name in ("a", "b"):
        sm.respond("create_hyper_parameter_tuning_job",
                   {"HyperParameterTuningJobArn": arn("hyper-parameter-tuning-job", name)})
    sm.data("train", "valid", root=f"{prefix}/data")
    assert sm.run("tune", "--prefix", prefix, "--no-wait") == 0
    sm.data("train", "valid", root=f"{prefix}/data")
    assert sm.run("tune", "--prefix", prefix, "--no-wait") == 0  # the same second, most likely
    first, second = [p["HyperParameterTuningJobName"] for op, p in sm.requests if op == "CreateHyperParameterTuningJob"]
    for name in (first, second):  # the strict validator has checked the pattern; the length and the stamp:
        assert len(name) <= 32 and re.search(r"-\d{6}-\d{6}-[0-9a-f]{4}$", name), name
    assert first != second


@pytest.mark.parametrize("args, what", [(["--prefix", "my_project"], "prefix 'my_project'"),
                                        (["--prefix=-x"], "prefix .-x."),
                                        (["--job-name", "x" * 33], "--job-name")])
def test_an_invalid_name_or_prefix_is_refused_before_any_request(sm, args, what):
    with pytest.raises(SystemExit, match=f"{what}.* is not a valid SageMaker name: letters, digits and hyphens"):
        sm.run("tune", *args, "--no-wait")
    assert sm.requests == []


def test_spot_trials_resume_from_their_own_checkpoints(sm):
    sm.respond("create_hyper_parameter_tuning_job",
               {"HyperParameterTuningJobArn": arn("hyper-parameter-tuning-job", "s")})
    sm.data("train", "valid")
    assert sm.run("tune", "--job-name", "spot-hpo", "--spot", "--no-wait") == 0
    definition = sm.sent("CreateHyperParameterTuningJob")["TrainingJobDefinition"]
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["CheckpointConfig"]["S3Uri"] == "s3://test-bucket/image-classifier/checkpoints/spot-hpo"
    # each trial keeps its checkpoints under its own job name inside /opt/ml/checkpoints
    assert definition["StaticHyperParameters"]["checkpoint-per-job"] == "true"
    # and a trial removes other trials' folders once they can no longer be resumed (MaxWait: 48 h)
    assert definition["StaticHyperParameters"]["trial-lifetime-hours"] == "48"
    assert definition["StoppingCondition"]["MaxWaitTimeInSeconds"] == 48 * 3600


def test_the_local_tuner_runs_hyperband_over_epochs_and_the_whole_grid():
    from launch import settings as settings_mod, tune
    from launch.local import tuner
    hb = settings_mod.Settings(strategy="Hyperband")
    space = tune.tuning_space(hb)
    assert "epochs" not in space and hb.hyperparameters["epochs"] == 8  # static at the max, as sent to SageMaker
    pruner = tuner.pruner(hb)
    assert (pruner._min_resource, pruner._max_resource) == (2, 8)
    grid = settings_mod.Settings(strategy="Grid", max_jobs=4)
    assert search_space.grid_points(tune.tuning_space(grid)) == 81 == tune.max_jobs(grid, tune.tuning_space(grid))


def test_trials_on_several_instances_and_a_batch_range_that_splits(sm):
    sm.respond("create_hyper_parameter_tuning_job",
               {"HyperParameterTuningJobArn": arn("hyper-parameter-tuning-job", "m")})
    sm.data("train", "valid")
    gpu = ["--train-instance-type", "ml.g4dn.12xlarge", "--gpu-image-uri", "123456789012.dkr.ecr.eu-west-1."
           "amazonaws.com/image-classifier:gpu"]
    assert sm.run("tune", "--job-name", "ddp-hpo", "--no-wait", "--instance-count", "2", *gpu) == 0
    definition = sm.sent("CreateHyperParameterTuningJob")["TrainingJobDefinition"]
    resources = definition["HyperParameterTuningResourceConfig"]  # the SDK's form of ResourceConfig
    assert (resources["InstanceCount"], resources["InstanceType"]) == (2, "ml.g4dn.12xlarge")  # 16, 32, 64 split
    # over 8 GPUs
    before = len(sm.requests)
    with pytest.raises(SystemExit, match=r"batch-size 16, 32, 64: the global batch must split evenly over the job's "
                                         r"12 training processes"):
        sm.run("tune", "--no-wait", "--instance-count", "3", *gpu)
    assert len(sm.requests) == before


def test_an_integer_batch_range_is_refused_for_several_processes():
    from image_classifier import search_space
    from launch import jobs, settings as settings_mod
    s = settings_mod.Settings(train_instance_type="ml.g5.12xlarge")  # 4 GPUs
    s.search_space = {**s.search_space, "batch-size": search_space.Integer(16, 64)}
    with pytest.raises(SystemExit, match=r"batch-size 16..64 \(an integer range; give categorical multiples\)"):
        jobs.check_batch_split(s, tuning=True)
    jobs.check_batch_split(s, tuning=False)  # a training job takes the static batch-size, 32: it splits
    assert settings_mod.processes("ml.p4d.24xlarge", 2) == 16 and settings_mod.processes("ml.m5.xlarge", 3) == 3


def test_parallel_trials_over_the_quota_are_refused_before_any_request(sm, tmp_path):
    with pytest.raises(SystemExit, match="max_parallel_jobs 12 is over the quota of 10 parallel training jobs"):
        sm.run("tune", "--max-jobs", "20", "--max-parallel-jobs", "12", "--no-wait")
    assert sm.requests == []
