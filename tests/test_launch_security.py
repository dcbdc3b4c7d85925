"""launch/backbones.py (the catalogue, staging weights for isolated jobs) and launch/security.py
(--network-isolation, VPC, KMS keys) against stubbed clients: every request validated by botocore
and tests/sagemaker_rules.py, and every refusal made before any request."""
import json

import pytest
import torch

import sagemaker_rules
from launch import backbones
from sagemaker_stub import BUCKET, SETTINGS_ARGS
from image_classifier.vision import timm

ARN = "arn:aws:sagemaker:eu-west-1:123456789012:training-job/x"
KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ROOT = f"s3://{BUCKET}/image-classifier/pretrained"


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    path = tmp_path / "staged.json"
    monkeypatch.setattr(backbones, "STAGED", path)
    return path


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """This machine's Hugging Face Hub cache holding test_vit.r160_in1k (a real timm test model,
    random weights), read in offline mode: what a download leaves behind."""
    from huggingface_hub import constants
    torch.manual_seed(0)
    model = timm.create_model("test_vit.r160_in1k", pretrained=False)
    base = tmp_path / "hub" / "models--timm--test_vit.r160_in1k"
    timm.models.save_for_hf(model, base / "snapshots" / ("0" * 40), safe_serialization=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return model


def test_the_catalogue_lists_what_users_choose_by(capsys, ledger):
    assert backbones.main(["--filter", "tf_efficientnet_lite*", "--sort", "params", "--limit", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["backbone", "(arch.tag)", "size", "top-1"]
    assert lines[1].split()[0] == "tf_efficientnet_lite0.in1k" and lines[1].split()[-1] == "bundled"
    assert [float(line.split()[4]) for line in lines[1:4]] == sorted(float(line.split()[4]) for line in lines[1:4])
    rows = backbones.catalogue()
    assert len(rows) > 1500 and all(timm.models.is_model(r["model"].split(".")[0]) for r in rows[:50])
    resnet = next(r for r in rows if r["model"] == "resnet50.tv2_in1k" and r["img_size"] == 224)
    assert (resnet["top1"], resnet["params_m"]) == (80.846, 25.56) and resnet["gflops"] > 7


def test_stage_uploads_a_content_addressed_local_dir_once_and_records_it(sm, hub, ledger, capsys):
    from botocore.exceptions import ClientError  # noqa: F401 - the stub raises it for the 404
    settings_args = [*SETTINGS_ARGS]
    sm.s3_stubber.add_client_error("head_object", "404", "Not Found", 404)
    for _ in range(3):
        sm.respond_s3("put_object", {"ETag": '"x"'})
    session = sm.session(backbones.settings_mod.load(backbones.parse_args(["stage", "test_vit", *settings_args])))
    assert backbones.main(["stage", "test_vit", *settings_args], session=session) == 0
    uploads = [p for op, p in sm.requests if op == "PutObject"]
    keys = [p["Key"] for p in uploads]
    digest = json.loads(ledger.read_text())[ROOT]["test_vit.r160_in1k"]["sha256"]
    prefix = f"image-classifier/pretrained/test_vit.r160_in1k/{digest[:16]}"
    assert keys == [f"{prefix}/model.safetensors", f"{prefix}/config.json", f"{prefix}/staged.json"]  # record last
    assert json.loads(ledger.read_text())[ROOT]["test_vit.r160_in1k"]["uri"] == f"s3://{BUCKET}/{prefix}/"

    sm.respond_s3("head_object", {"ContentLength": 10})  # staged already: nothing is sent again
    assert backbones.main(["stage", "test_vit", *settings_args], session=session) == 0
    assert len([op for op, _ in sm.requests if op == "PutObject"]) == 3
    assert "already in" in capsys.readouterr().out

    # An isolated job of that backbone gets the staged folder as its 'pretrained' channel.
    sm.respond("create_training_job", {"TrainingJobArn": ARN})
    sm.data("train", "valid", "test")
    assert sm.run("train", "--no-wait", "--network-isolation", "--hp", "backbone=test_vit") == 0
    sm.done()
    req = sm.sent("CreateTrainingJob")
    assert req["EnableNetworkIsolation"] is True
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in req["InputDataConfig"]}
    assert channels["pretrained"] == f"s3://{BUCKET}/{prefix}/"


def test_isolation_without_reachable_weights_is_refused_before_any_request(sm, ledger):
    with pytest.raises(SystemExit, match="cannot download convnext_atto's weights, and they are neither bundled"):
        sm.run("train", "--no-wait", "--network-isolation", "--hp", "backbone=convnext_atto")
    with pytest.raises(SystemExit, match="neither bundled in the image nor staged"):
        sm.run("tune", "--no-wait", "--network-isolation", "--hp", "backbone=resnet50")
    assert sm.requests == []
    # A bundled backbone needs nothing staged; so does weights=none.
    sm.respond("create_training_job", {"TrainingJobArn": ARN})
    sm.data("train", "valid", "test")
    sm.run("train", "--no-wait", "--network-isolation", "--hp", "backbone=efficientnet_lite2")
    sm.done()
    assert "pretrained" not in {c["ChannelName"] for c in sm.sent("CreateTrainingJob")["InputDataConfig"]}


def test_vpc_kms_and_encryption_reach_the_training_and_tuning_requests(sm, ledger):
    vpc = ["--subnets", "subnet-0a1b2c3d, subnet-4e5f6a7b", "--security-group-ids", "sg-0123456789abcdef0"]
    keys = ["--volume-kms-key", KEY, "--output-kms-key", KEY, "--encrypt-inter-container-traffic",
            "--pretrained", f"{ROOT}/resnet50.tv2_in1k/0123456789abcdef"]
    sm.respond("create_training_job", {"TrainingJobArn": ARN})
    sm.data("train", "valid", "test")
    sm.run("train", "--no-wait", "--network-isolation", *vpc, *keys)
    sm.respond("create_hyper_parameter_tuning_job", {"HyperParameterTuningJobArn": ARN.replace("training-job",
                                                                                            "hyper-parameter-tuning-job")})
    sm.data("train", "valid")
    sm.run("tune", "--no-wait", "--network-isolation", *vpc, *keys)
    sm.done()
    training = sm.sent("CreateTrainingJob")
    definition = sm.sent("CreateHyperParameterTuningJob")["TrainingJobDefinition"]
    for req in (training, definition):
        assert req["VpcConfig"] == {"Subnets": ["subnet-0a1b2c3d", "subnet-4e5f6a7b"],
                                    "SecurityGroupIds": ["sg-0123456789abcdef0"]}
        resources = req.get("ResourceConfig") or req["HyperParameterTuningResourceConfig"]
        assert resources["VolumeKmsKeyId"] == KEY and req["OutputDataConfig"]["KmsKeyId"] == KEY
        assert req["EnableInterContainerTrafficEncryption"] is True and req["EnableNetworkIsolation"] is True
        assert {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in req["InputDataConfig"]}[
            "pretrained"] == f"{ROOT}/resnet50.tv2_in1k/0123456789abcdef/"


@pytest.mark.parametrize("args, message", [
    (["--subnets", "subnet-0a1b2c3d"], "needs both --subnets and --security-group-ids"),
    (["--volume-kms-key", KEY, "--train-instance-type", "ml.m5d.xlarge"], "ml.m5d.xlarge .* has local NVMe storage"),
])
def test_settings_sagemaker_would_drop_or_refuse_fail_before_any_request(sm, ledger, args, message):
    with pytest.raises(SystemExit, match=message):
        sm.run("train", "--no-wait", *args)
    assert sm.requests == []


def groups(self_referencing: bool) -> dict:
    source = "sg-0123456789abcdef0" if self_referencing else "sg-0fedcba9876543210"
    return {"SecurityGroups": [{"GroupId": "sg-0123456789abcdef0", "GroupName": "training", "IpPermissions": [
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": source}]},
        {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "10.0.0.0/16"}]}]}]}


def test_a_multi_instance_job_in_a_vpc_needs_a_self_referencing_security_group(sm, ledger):
    vpc = ["--subnets", "subnet-0a1b2c3d", "--security-group-ids", "sg-0123456789abcdef0", "--instance-count", "2"]
    sm.respond_ec2("describe_security_groups", groups(self_referencing=False),
                   {"GroupIds": ["sg-0123456789abcdef0"]})
    with pytest.raises(SystemExit, match="none of the security groups sg-0123456789abcdef0 admits all traffic from"):
        sm.run("train", "--no-wait", "--hp", "backbone=efficientnet_lite0", *vpc)
    assert [op for op, _ in sm.requests] == ["DescribeSecurityGroups"]  # no job was created
    sm.respond_ec2("describe_security_groups", groups(self_referencing=True))
    sm.respond("create_training_job", {"TrainingJobArn": ARN})
    sm.data("train", "valid", "test")
    sm.run("train", "--no-wait", "--hp", "backbone=efficientnet_lite0", *vpc)
    sm.done()
    assert sm.sent("CreateTrainingJob")["ResourceConfig"]["InstanceCount"] == 2


def test_deploy_puts_the_model_in_the_vpc_isolated_and_its_volume_encrypted(sm):
    from sagemaker_stub import arn, describe_endpoint
    sm.respond("create_model", {"ModelArn": arn("model", "dogs")})
    sm.respond("create_endpoint_config", {"EndpointConfigArn": arn("endpoint-config", "dogs")})
    sm.respond("create_endpoint", {"EndpointArn": arn("endpoint", "dogs")})
    sm.respond("describe_endpoint", describe_endpoint("dogs"))
    sm.run("deploy", "--model-data", f"s3://{BUCKET}/m/model.tar.gz", "--endpoint-name", "dogs", "--network-isolation",
           "--subnets", "subnet-0a1b2c3d", "--security-group-ids", "sg-0123456789abcdef0", "--volume-kms-key", KEY)
    sm.done()
    model = sm.sent("CreateModel")
    assert model["EnableNetworkIsolation"] is True
    assert model["VpcConfig"] == {"Subnets": ["subnet-0a1b2c3d"], "SecurityGroupIds": ["sg-0123456789abcdef0"]}
    assert sm.sent("CreateEndpointConfig")["KmsKeyId"] == KEY
    with pytest.raises(SystemExit, match="ml.g5.xlarge .*endpoint.* has local NVMe storage"):
        sm.run("deploy", "--model-data", f"s3://{BUCKET}/m/model.tar.gz", "--volume-kms-key", KEY,
               "--inference-instance-type", "ml.g5.xlarge", "--gpu-image-uri", "x")


def test_the_validator_refuses_what_sagemaker_would():
    isolated = {"TrainingJobName": "j", "EnableNetworkIsolation": True,
                "HyperParameters": {"backbone": "convnext_atto"},
                "InputDataConfig": [{"ChannelName": "train"}],
                "ResourceConfig": {"InstanceType": "ml.p4d.24xlarge", "VolumeKmsKeyId": KEY}}
    found = sagemaker_rules.rule_violations("CreateTrainingJob", isolated)
    assert any("[isolated-job-has-its-weights]" in f for f in found)
    assert any("[volume-kms-key-local-storage]" in f and "ml.p4d.24xlarge" in f for f in found)
    isolated["InputDataConfig"].append({"ChannelName": "pretrained"})
    isolated["ResourceConfig"]["InstanceType"] = "ml.m5.xlarge"
    assert sagemaker_rules.rule_violations("CreateTrainingJob", isolated) == []
    endpoint = {"EndpointConfigName": "e", "KmsKeyId": KEY, "ProductionVariants": [{"InstanceType": "ml.c5d.large"}]}
    assert any("[volume-kms-key-local-storage]" in f for f in sagemaker_rules.rule_violations("CreateEndpointConfig",
                                                                                                endpoint))


def test_a_local_isolated_container_has_no_network():
    from launch.local import docker_run
    assert "--network=none" in docker_run("job", isolated=True) and "--network=host" in docker_run("job")


@pytest.mark.parametrize("hosts", [1, 2])
def test_every_local_docker_host_mounts_the_pretrained_channel(tmp_path, tiny_data, monkeypatch, hosts):
    """Each container sees the 'pretrained' folder its /opt/ml tree links to (read-only)."""
    from launch.local import jobs
    started = []
    monkeypatch.setattr(jobs.subprocess, "Popen", lambda cmd, **kw: started.append(cmd))
    weights = tmp_path / "weights"
    weights.mkdir()
    jobs.start("j", tmp_path / "jobs", tiny_data["train"].parent, ["train", "valid"], {}, runner="docker",
               image="img", hosts=hosts, pretrained=weights)
    assert len(started) == hosts
    for cmd in started:
        assert f"{weights}:{weights}:ro" in cmd
    for tree in (tmp_path / "jobs" / "j").glob("**/input/data/pretrained"):
        assert tree.resolve() == weights
