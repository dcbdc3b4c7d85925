"""A real boto3 SageMaker client behind botocore's Stubber: every request the SDK sends is
validated by botocore against SageMaker's service model, and recorded for the tests to check."""
from __future__ import annotations

import copy
import datetime

import boto3
from botocore.stub import Stubber

REGION = "eu-west-1"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/SageMakerRole"
BUCKET = "test-bucket"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/image-classifier:test"
SETTINGS_ARGS = ["--region", REGION, "--role", ROLE, "--bucket", BUCKET, "--image-uri", IMAGE]
NOW = datetime.datetime(2026, 11, 21, 12, 0, tzinfo=datetime.timezone.utc)


class StubbedSageMaker:
    def __init__(self):
        self.boto = boto3.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
        self.client = self.boto.client("sagemaker")
        self.runtime = self.boto.client("sagemaker-runtime")
        self.stubber = Stubber(self.client)
        self.requests: list[tuple[str, dict]] = []
        self.client.meta.events.register("before-parameter-build.sagemaker.*", self._capture)
        self.stubber.activate()

    def _capture(self, params, model, **kwargs):
        self.requests.append((model.name, copy.deepcopy(params)))

    def respond(self, operation: str, response: dict | None = None) -> None:
        self.stubber.add_response(operation, response or {})

    def session(self, settings):
        from launch import aws
        return aws.session(settings, boto_session=self.boto, sagemaker_client=self.client,
                           runtime_client=self.runtime)

    def sent(self, operation: str) -> dict:
        found = [p for op, p in self.requests if op == operation]
        assert found, f"{operation} was not sent; sent: {[op for op, _ in self.requests]}"
        return found[-1]

    def operations(self) -> list[str]:
        return [op for op, _ in self.requests]

    def done(self) -> None:
        self.stubber.assert_no_pending_responses()


def arn(kind: str, name: str) -> str:
    return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:{kind}/{name}"


def parameter_ranges(space: dict) -> dict:
    from image_classifier.search_space import Categorical, Integer
    ranges = {"ContinuousParameterRanges": [], "IntegerParameterRanges": [], "CategoricalParameterRanges": []}
    for name, rng in space.items():
        if isinstance(rng, Categorical):
            ranges["CategoricalParameterRanges"].append({"Name": name, "Values": [str(v) for v in rng.values]})
        else:
            key = "IntegerParameterRanges" if isinstance(rng, Integer) else "ContinuousParameterRanges"
            ranges[key].append({"Name": name, "MinValue": str(rng.low), "MaxValue": str(rng.high),
                                "ScalingType": rng.scaling})
    return ranges


def best_job(name: str, value: float, tuned: dict) -> dict:
    return {"TrainingJobName": name, "TrainingJobArn": arn("training-job", name), "CreationTime": NOW,
            "TrainingJobStatus": "Completed", "TunedHyperParameters": tuned,
            "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "valid:accuracy", "Value": value}}


def describe_tuning_job(name: str, status: str, space: dict, completed: int, running: int,
                        best: dict | None = None) -> dict:
    response = {
        "HyperParameterTuningJobName": name, "HyperParameterTuningJobArn": arn("hyper-parameter-tuning-job", name),
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "valid:accuracy"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 4, "MaxParallelTrainingJobs": 2},
            "ParameterRanges": parameter_ranges(space)},
        "TrainingJobDefinition": {
            "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File"},
            "RoleArn": ROLE, "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/image-classifier/models"},
            "ResourceConfig": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
            "StoppingCondition": {"MaxRuntimeInSeconds": 86400}},
        "HyperParameterTuningJobStatus": status, "CreationTime": NOW,
        "TrainingJobStatusCounters": {"Completed": completed, "InProgress": running, "RetryableError": 0,
                                      "NonRetryableError": 0, "Stopped": 0},
        "ObjectiveStatusCounters": {"Succeeded": completed, "Pending": running, "Failed": 0},
    }
    if best:
        response["BestTrainingJob"] = best
    return response


def describe_training_job(name: str, hyperparameters: dict) -> dict:
    return {"TrainingJobName": name, "TrainingJobArn": arn("training-job", name),
            "ModelArtifacts": {"S3ModelArtifacts": f"s3://{BUCKET}/image-classifier/models/{name}/output/model.tar.gz"},
            "TrainingJobStatus": "Completed", "SecondaryStatus": "Completed", "HyperParameters": hyperparameters,
            "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File"},
            "RoleArn": ROLE, "ResourceConfig": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1,
                                                "VolumeSizeInGB": 50},
            "StoppingCondition": {"MaxRuntimeInSeconds": 86400}, "CreationTime": NOW}
