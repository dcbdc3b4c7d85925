"""launch/tune.py against a stubbed SageMaker client (requests validated by botocore)."""
import csv
import re

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
    sm.respond("create_hyper_parameter_tuning_job", {"HyperParameterTuningJobArn": arn("hyper-parameter-tuning-job", name)})
    sm.respond("describe_hyper_parameter_tuning_job", describe_tuning_job(name, "InProgress", SPACE, 1, 1, best))
    sm.respond("describe_hyper_parameter_tuning_job", describe_tuning_job(name, "Completed", SPACE, 2, 0, best))
    sm.respond("describe_hyper_parameter_tuning_job", describe_tuning_job(name, "Completed", SPACE, 2, 0, best))
    sm.respond("describe_training_job", describe_training_job(best["TrainingJobName"], {
        **tuned[0], "backbone": "resnet50", "_tuning_objective_metric": "valid:accuracy"}))
    sm.respond("list_training_jobs_for_hyper_parameter_tuning_job", {"TrainingJobSummaries": [
        summary(f"{name}-001", 0.93, tuned[0]), summary(f"{name}-002", 0.71, tuned[1])]})

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
    sm.respond("create_hyper_parameter_tuning_job", {"HyperParameterTuningJobArn": arn("hyper-parameter-tuning-job", "g")})
    assert sm.run("tune", "--job-name", "g", "--strategy", "Grid", "--no-wait") == 0
    ranges = sm.sent("CreateHyperParameterTuningJob")["HyperParameterTuningJobConfig"]["ParameterRanges"]
    assert not ranges.get("ContinuousParameterRanges") and not ranges.get("IntegerParameterRanges")
    values = {r["Name"]: r["Values"] for r in ranges["CategoricalParameterRanges"]}
    assert values["lr"] == ["0.0001", "0.00173", "0.03"] and values["epochs"] == ["2", "5", "8"]
    for name, vals in values.items():
        for v in vals:
            hyperparameters.BY_NAME[name].parse(v)


def test_hyperband_turns_sagemaker_early_stopping_off(sm):
    sm.respond("create_hyper_parameter_tuning_job", {"HyperParameterTuningJobArn": arn("hyper-parameter-tuning-job", "h")})
    sm.run("tune", "--job-name", "h", "--strategy", "Hyperband", "--no-wait")
    config = sm.sent("CreateHyperParameterTuningJob")["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Hyperband" and config.get("TrainingJobEarlyStoppingType", "Off") == "Off"
