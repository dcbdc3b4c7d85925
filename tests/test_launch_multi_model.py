"""launch/multi_model.py against stubbed SageMaker and S3 clients (requests validated by botocore)."""
import tarfile

import pytest

from sagemaker_stub import BUCKET, IMAGE, ROLE, arn, describe_endpoint, describe_training_job

PREFIX = "image-classifier/multi-model/dogs-mme"


def test_multi_model_endpoint_from_s3_a_training_job_and_a_local_file(sm, trained, tmp_path, capsys):
    local = tmp_path / "model.tar.gz"
    with tarfile.open(local, "w:gz") as tar:  # small: one PutObject, no multipart upload
        tar.add(trained / "model" / "model.json", arcname="model.json")
    job = describe_training_job("ic-2", {})
    source = f"s3://{BUCKET}/image-classifier/models/ic-1/output/model.tar.gz"
    # nothing to overwrite
    sm.respond_s3("list_objects_v2", {"KeyCount": 0}, {"Bucket": BUCKET, "Prefix": PREFIX + "/"})
    # dogs: an S3 artifact, copied (s3transfer asks its size first)
    sm.respond_s3("head_object", {"ContentLength": 1000},
                  {"Bucket": BUCKET, "Key": "image-classifier/models/ic-1/output/model.tar.gz"})
    sm.respond_s3("copy_object", {"CopyObjectResult": {"ETag": '"x"'}})
    # cats: a training job's model
    sm.respond("describe_training_job", job)
    sm.respond_s3("head_object", {"ContentLength": 1000})
    sm.respond_s3("copy_object", {"CopyObjectResult": {"ETag": '"y"'}})
    # birds: a local model.tar.gz, uploaded
    sm.respond_s3("put_object", {"ETag": '"z"'})
    sm.respond("create_model", {"ModelArn": arn("model", "dogs-mme")})
    sm.respond("create_endpoint_config", {"EndpointConfigArn": arn("endpoint-config", "dogs-mme")})
    sm.respond("create_endpoint", {"EndpointArn": arn("endpoint", "dogs-mme")})
    sm.respond("describe_endpoint", describe_endpoint("dogs-mme"))
    assert sm.run("multi_model", "--endpoint-name", "dogs-mme", "--model", f"dogs={source}",
                  "--model", "cats=ic-2", "--model", f"birds.tar.gz={local}") == 0
    sm.done()
    copies = sm.sent_all("CopyObject")
    assert [(c["Key"], c["CopySource"]["Key"]) for c in copies] == [
        (f"{PREFIX}/dogs.tar.gz", "image-classifier/models/ic-1/output/model.tar.gz"),
        (f"{PREFIX}/cats.tar.gz", job["ModelArtifacts"]["S3ModelArtifacts"].split(BUCKET + "/")[1])]
    assert sm.sent("PutObject")["Key"] == f"{PREFIX}/birds.tar.gz"
    container = sm.sent("CreateModel")["PrimaryContainer"]
    assert container == {"Image": IMAGE, "Mode": "MultiModel", "ModelDataUrl": f"s3://{BUCKET}/{PREFIX}/",
                         "Environment": {"SAGEMAKER_MULTI_MODEL": "true"}}
    assert sm.sent("CreateModel")["ExecutionRoleArn"] == ROLE
    assert {"Key": "created-by", "Value": "image-classifier-launch"} in sm.sent("CreateEndpoint")["Tags"]
    assert "TARGET_MODEL=dogs.tar.gz launch/invoke.sh dogs-mme" in capsys.readouterr().out


def test_add_only_copies_and_creates_nothing(sm):
    sm.respond_s3("list_objects_v2", {"KeyCount": 1, "Contents": [{"Key": f"{PREFIX}/dogs.tar.gz"}]})
    sm.respond_s3("head_object", {"ContentLength": 10})
    sm.respond_s3("copy_object", {"CopyObjectResult": {"ETag": '"x"'}})
    assert sm.run("multi_model", "--add-only", "--endpoint-name", "dogs-mme",
                  "--model", f"new=s3://{BUCKET}/m/model.tar.gz") == 0
    sm.done()
    assert sm.sent("CopyObject")["Key"] == f"{PREFIX}/new.tar.gz"
    assert not [op for op in sm.operations() if op.startswith("Create")]


@pytest.mark.parametrize("spec", ["dogs", "=s3://b/m.tar.gz", "a/b=s3://b/m.tar.gz"])
def test_bad_model_names_fail_before_any_request(sm, spec):
    with pytest.raises(SystemExit, match="--model takes NAME=SOURCE"):
        sm.run("multi_model", "--model", spec)
    assert sm.operations() == []


def test_add_only_never_overwrites_a_model_the_endpoint_may_serve(sm):
    sm.respond_s3("list_objects_v2", {"KeyCount": 1, "Contents": [{"Key": f"{PREFIX}/dogs.tar.gz"}]})
    with pytest.raises(SystemExit, match="dogs.tar.gz already in .* Add it under a new name"):
        sm.run("multi_model", "--add-only", "--endpoint-name", "dogs-mme", "--model", f"dogs=s3://{BUCKET}/m/model.tar.gz")
    assert sm.operations() == ["ListObjectsV2"]


def test_a_gpu_instance_type_is_refused_before_any_request(sm):
    """Multi-model endpoints take bring-your-own containers on CPU instances only (on GPU, Triton)."""
    with pytest.raises(SystemExit, match="ml.g5.xlarge is a GPU instance type.*multi-model-support.html"):
        sm.run("multi_model", "--model", f"dogs=s3://{BUCKET}/m/model.tar.gz", "--inference-instance-type",
               "ml.g5.xlarge")
    assert sm.operations() == []
