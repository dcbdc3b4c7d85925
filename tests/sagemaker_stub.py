"""Real boto3 SageMaker and S3 clients behind botocore's Stubber: every request the scripts send
is validated by botocore against the service's model, then by sagemaker_rules against what
botocore skips (max, pattern, enum) and SageMaker's documented cross-field rules, and recorded
for the tests to check. A request the service would refuse raises sagemaker_rules.InvalidRequest."""
from __future__ import annotations

import copy
import datetime

import json
from pathlib import Path

import boto3
from botocore.stub import Stubber

import iam_rules
import sagemaker_rules

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
        self.s3 = self.boto.client("s3")
        self.ec2 = self.boto.client("ec2")  # the VPC's security groups (launch/security.py)
        self.stubber, self.s3_stubber, self.ec2_stubber = Stubber(self.client), Stubber(self.s3), Stubber(self.ec2)
        self.requests: list[tuple[str, dict]] = []
        self.violations: list[sagemaker_rules.InvalidRequest] = []
        self.client.meta.events.register("before-parameter-build.sagemaker.*", self._capture)
        self.s3.meta.events.register("before-parameter-build.s3.*", self._capture)
        self.runtime.meta.events.register("before-parameter-build.sagemaker-runtime.*", self._capture)
        self.ec2.meta.events.register("before-parameter-build.ec2.*", self._capture)
        self.stubber.activate()
        self.s3_stubber.activate()
        self.ec2_stubber.activate()

    def _capture(self, params, model, **kwargs):
        # An upload's Body is an open file: record that one was sent, not its bytes.
        recorded = {k: "<body>" if k == "Body" else copy.deepcopy(v) for k, v in params.items()}
        history = tuple(self.requests)
        self.requests.append((model.name, recorded))
        found = sagemaker_rules.violations(model.name, params, model.service_model, history)
        if found:  # kept too, so done() still fails if the launch code swallows the exception
            self.violations.append(sagemaker_rules.InvalidRequest(model.name, found))
            raise self.violations[-1]

    def respond(self, operation: str, response: dict | None = None) -> None:
        self.stubber.add_response(operation, response or {})

    def respond_s3(self, operation: str, response: dict | None = None, params: dict | None = None) -> None:
        self.s3_stubber.add_response(operation, response or {}, params)

    def respond_ec2(self, operation: str, response: dict | None = None, params: dict | None = None) -> None:
        self.ec2_stubber.add_response(operation, response or {}, params)

    def data(self, *channels: str, missing: tuple = (), root: str = "image-classifier/data",
             bucket: str = BUCKET) -> None:
        """S3's answers to the launch scripts' look at each channel's prefix (train, tune), in order."""
        for name in channels:
            count = 0 if name in missing else 1
            self.respond_s3("list_objects_v2", {"KeyCount": count, **({"Contents": [{"Key": f"{root}/{name}/a/x.jpg"}]}
                                                                      if count else {})},
                            {"Bucket": bucket, "Prefix": f"{root}/{name}/", "MaxKeys": 1})

    def session(self, settings):
        from launch import aws
        found = aws.session(settings, boto_session=self.boto, sagemaker_client=self.client,
                            runtime_client=self.runtime, s3_client=self.s3)
        found.ec2_client = self.ec2  # launch.jobs.ec2_client takes it
        return found

    def run(self, script: str, *args: str) -> int:
        """launch/SCRIPT.py's main() with the test settings and this stubbed session."""
        import importlib
        from launch import settings as settings_mod
        module = importlib.import_module(f"launch.{script}")
        argv = [*SETTINGS_ARGS, *args]
        return module.main(argv, session=self.session(settings_mod.load(module.parse_args(argv))))

    def sent(self, operation: str) -> dict:
        found = [p for op, p in self.requests if op == operation]
        assert found, f"{operation} was not sent; sent: {[op for op, _ in self.requests]}"
        return found[-1]

    def operations(self) -> list[str]:
        return [op for op, _ in self.requests]

    def sent_all(self, operation: str) -> list[dict]:
        return [p for op, p in self.requests if op == operation]

    def done(self) -> None:
        assert not self.violations, "\n".join(str(v) for v in self.violations)
        self.stubber.assert_no_pending_responses()
        self.s3_stubber.assert_no_pending_responses()
        self.ec2_stubber.assert_no_pending_responses()
        # The IAM policy README gives the launching user covers every request the scripts sent.
        denied = sorted({f"{service}:{op}" for service, op in self.requests_by_service()} - allowed_actions())
        assert not denied, f"launch/iam/launcher-policy.json does not allow {denied}"

    def requests_by_service(self):
        for op, _ in self.requests:
            if hasattr(self.client, _snake(op)):
                yield "sagemaker", op
            elif hasattr(self.ec2, _snake(op)) and not hasattr(self.s3, _snake(op)):
                yield "ec2", op
            else:  # S3 authorizes some operations under another action's name
                yield "s3", S3_PERMISSION.get(op, op)


LAUNCHER_POLICY = Path(__file__).resolve().parents[1] / "launch" / "iam" / "launcher-policy.json"
S3_PERMISSION = {"HeadObject": "GetObject", "ListObjectsV2": "ListBucket", "CopyObject": "PutObject"}


def allowed_actions() -> set[str]:
    """What the launcher policy grants, counting a grant only where IAM applies it (iam_rules)."""
    return iam_rules.effective_actions(json.loads(LAUNCHER_POLICY.read_text()))


def _snake(operation: str) -> str:
    import botocore
    return botocore.xform_name(operation)


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


def describe_endpoint(name: str, status: str = "InService") -> dict:
    return {"EndpointName": name, "EndpointArn": arn("endpoint", name), "EndpointConfigName": name,
            "EndpointStatus": status, "CreationTime": NOW, "LastModifiedTime": NOW}
