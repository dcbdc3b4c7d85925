"""launch/deploy.py against a stubbed SageMaker client (requests validated by botocore)."""
import pytest

from image_classifier import search_space
from sagemaker_stub import (IMAGE, ROLE, arn, best_job, describe_endpoint, describe_training_job,
                            describe_tuning_job)


def test_deploy_best_model_of_a_tuning_job(sm, capsys):
    best = best_job("ic-hpo-001", 0.93, {"lr": "0.001"})
    job = describe_training_job("ic-hpo-001", {"lr": "0.001"})
    sm.respond("describe_hyper_parameter_tuning_job",
               describe_tuning_job("ic-hpo", "Completed", search_space.SEARCH_SPACE, 4, 0, best))
    sm.respond("describe_training_job", job)
    sm.respond("create_model", {"ModelArn": arn("model", "dogs-endpoint")})
    sm.respond("create_endpoint_config", {"EndpointConfigArn": arn("endpoint-config", "dogs-endpoint")})
    sm.respond("create_endpoint", {"EndpointArn": arn("endpoint", "dogs-endpoint")})
    sm.respond("describe_endpoint", describe_endpoint("dogs-endpoint"))
    assert sm.run("deploy", "--tuning-job", "ic-hpo", "--endpoint-name", "dogs-endpoint",
                      "--inference-instance-type", "ml.c5.xlarge") == 0
    sm.done()
    model = sm.sent("CreateModel")
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == job["ModelArtifacts"]["S3ModelArtifacts"]
    assert model["ExecutionRoleArn"] == ROLE
    config = sm.sent("CreateEndpointConfig")
    [variant] = config["ProductionVariants"]
    assert (variant["ModelName"], variant["InstanceType"], variant["InitialInstanceCount"]) == (
        "dogs-endpoint", "ml.c5.xlarge", 1)
    endpoint = sm.sent("CreateEndpoint")
    assert endpoint["EndpointName"] == "dogs-endpoint" and endpoint["EndpointConfigName"] == "dogs-endpoint"
    assert {"Key": "created-by", "Value": "image-classifier-launch"} in endpoint["Tags"]
    out = capsys.readouterr().out
    assert "model of training job ic-hpo-001" in out and "launch/invoke.sh dogs-endpoint" in out


def test_a_training_job_that_did_not_complete_is_not_deployed(sm):
    job = describe_training_job("ic-1", {})
    job["TrainingJobStatus"] = "Failed"
    sm.respond("describe_training_job", job)
    with pytest.raises(SystemExit, match="is Failed, not Completed"):
        sm.run("deploy", "--training-job", "ic-1")
    assert "CreateModel" not in sm.operations()
