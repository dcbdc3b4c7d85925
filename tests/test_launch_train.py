"""launch/train.py against a stubbed SageMaker client (requests validated by botocore)."""
import re

import pytest

from image_classifier import hyperparameters, metrics
from sagemaker_stub import BUCKET, IMAGE, ROLE


def test_create_training_job_request(sm, trained):
    sm.respond("create_training_job", {"TrainingJobArn": "arn:aws:sagemaker:eu-west-1:123456789012:training-job/x"})
    sm.data("train", "valid", "test")
    assert sm.run("train", "--no-wait", "--job-name", "ic-job-1", "--hp", "backbone=efficientnet_lite0",
                     "--hp", "epochs=3", "--hp", "lr=0.0005", "--spot") == 0
    sm.done()
    req = sm.sent("CreateTrainingJob")
    assert req["TrainingJobName"] == "ic-job-1"
    assert req["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert req["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert req["RoleArn"] == ROLE
    # The image writes its TensorBoard scalars to LocalPath; SageMaker uploads them per job.
    assert req["TensorBoardOutputConfig"] == {"LocalPath": "/opt/ml/output/tensorboard",
                                              "S3OutputPath": f"s3://{BUCKET}/image-classifier/tensorboard/ic-job-1"}
    # Hyperparameters: strings that the container parses back to the same values.
    sent = req["HyperParameters"]
    assert all(isinstance(v, str) for v in sent.values())
    parsed = hyperparameters.as_dict(hyperparameters.parse(sent))
    assert (parsed["backbone"], parsed["epochs"], parsed["lr"]) == ("efficientnet_lite0", 3, 0.0005)
    # Metric regexes: the package's, and they read what the real container printed.
    assert req["AlgorithmSpecification"]["MetricDefinitions"] == metrics.METRIC_DEFINITIONS
    log = (trained / "train.log").read_text()
    averaged = {"valid:ema_loss", "valid:ema_accuracy"}  # only with ema-decay: test_recipe_e2e reads them
    for definition in req["AlgorithmSpecification"]["MetricDefinitions"]:
        assert bool(re.findall(definition["Regex"], log)) != (definition["Name"] in averaged), definition["Name"]
    # Channels, output, checkpoints, spot.
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in req["InputDataConfig"]}
    assert channels == {c: f"s3://{BUCKET}/image-classifier/data/{c}/" for c in ("train", "valid", "test")}
    assert req["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/image-classifier/models"
    assert req["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/image-classifier/checkpoints/ic-job-1"
    assert req["EnableManagedSpotTraining"] is True
    assert req["StoppingCondition"]["MaxWaitTimeInSeconds"] >= req["StoppingCondition"]["MaxRuntimeInSeconds"]
    # Debugger and profiler configuration.
    sent = req["DebugHookConfig"]["CollectionConfigurations"]
    collections = {c["CollectionName"]: c["CollectionParameters"] for c in sent}
    assert len(collections) == len(sent)  # each collection once, with one interval
    # ours every debug_interval steps; relu_input is what PoorWeightInitialization adds for itself,
    # kept to the 10 steps it reads
    assert collections == {**{c: {"save_interval": "50"} for c in ("losses", "weights", "biases", "gradients")},
                           "relu_input": {"include_regex": ".*relu_input", "save_interval": "500", "end_step": "10"}}
    assert req["DebugHookConfig"]["S3OutputPath"] == f"s3://{BUCKET}/image-classifier/debug"
    assert req["ProfilerConfig"]["ProfilingIntervalInMilliseconds"] == 500
    # SageMaker's built-in rules, each run by its rule container.
    debug_rules = {r["RuleConfigurationName"]: r for r in req["DebugRuleConfigurations"]}
    assert set(debug_rules) == {"VanishingGradient", "ExplodingTensor", "Overfit", "Overtraining",
                                "PoorWeightInitialization", "LossNotDecreasing"}
    assert all(".dkr.ecr.eu-west-1.amazonaws.com/" in r["RuleEvaluatorImage"] for r in debug_rules.values())
    assert debug_rules["Overfit"]["RuleParameters"]["rule_to_invoke"] == "Overfit"
    profiler_rules = {r["RuleConfigurationName"] for r in req["ProfilerRuleConfigurations"]}
    assert profiler_rules == {"ProfilerReport", "LowGPUUtilization"}
    assert {"Key": "created-by", "Value": "image-classifier-launch"} in req["Tags"]


def test_debugger_and_profiler_can_be_off_and_channels_chosen(sm):
    sm.respond("create_training_job", {"TrainingJobArn": "arn:aws:sagemaker:eu-west-1:123456789012:training-job/y"})
    sm.data("train", "valid", bucket="other", root="dogs")
    sm.run("train", "--no-wait", "--no-debugger", "--no-profiler", "--channels", "train,valid",
              "--data", "s3://other/dogs")
    req = sm.sent("CreateTrainingJob")
    assert "DebugHookConfig" not in req and "DebugRuleConfigurations" not in req
    assert "ProfilerRuleConfigurations" not in req
    assert req.get("ProfilerConfig", {}).get("DisableProfiler", True)
    assert [c["DataSource"]["S3DataSource"]["S3Uri"] for c in req["InputDataConfig"]] == [
        "s3://other/dogs/train/", "s3://other/dogs/valid/"]
    assert "EnableManagedSpotTraining" not in req or req["EnableManagedSpotTraining"] is False


def test_settings_the_image_would_refuse_fail_before_any_request(sm):
    with pytest.raises(SystemExit, match="unknown backbone 'vgg': timm has no model 'vgg'"):
        sm.run("train", "--no-wait", "--hp", "backbone=vgg")
    with pytest.raises(Exception, match="unknown hyperparameter"):
        sm.run("train", "--no-wait", "--hp", "backbones=vgg16")
    assert sm.requests == []


def test_rule_statuses_are_printed_after_a_job(sm, capsys):
    from launch import train
    from sagemaker_stub import describe_training_job
    job = describe_training_job("ic-job-2", {})
    job["DebugRuleEvaluationStatuses"] = [
        {"RuleConfigurationName": "Overfit", "RuleEvaluationStatus": "IssuesFound",
         "StatusDetails": "RuleEvaluationConditionMet: Evaluation of the rule Overfit at step 300 resulted in the "
                          "condition being met"},
        {"RuleConfigurationName": "VanishingGradient", "RuleEvaluationStatus": "NoIssuesFound"}]
    job["ProfilerRuleEvaluationStatuses"] = [
        {"RuleConfigurationName": "ProfilerReport", "RuleEvaluationStatus": "InProgress"}]
    sm.respond("describe_training_job", job)
    train.print_rule_statuses(sm.client, "ic-job-2")
    sm.done()
    out = capsys.readouterr().out.splitlines()
    assert out == ["rule Overfit: IssuesFound (RuleEvaluationConditionMet: Evaluation of the rule Overfit at step "
                   "300 resulted in the condition being met)", "rule VanishingGradient: NoIssuesFound",
                   "rule ProfilerReport: InProgress"]


def test_a_default_channel_without_data_is_left_out(sm, capsys):
    sm.respond("create_training_job", {"TrainingJobArn": "arn:aws:sagemaker:eu-west-1:123456789012:training-job/z"})
    sm.data("train", "valid", "test", missing=("test",))  # no test/ under the prefix: README calls it optional
    assert sm.run("train", "--no-wait", "--job-name", "no-test") == 0
    assert [c["ChannelName"] for c in sm.sent("CreateTrainingJob")["InputDataConfig"]] == ["train", "valid"]
    assert "channel test: no objects under s3://test-bucket/image-classifier/data/test/" in capsys.readouterr().out


@pytest.mark.parametrize("channels, missing", [("train,valid,test", "test"), (None, "train")])
def test_a_channel_asked_for_or_train_without_data_fails_before_any_job(sm, channels, missing):
    asked = (channels or "train,valid,test").split(",")
    sm.data(*asked, missing=(missing,))
    with pytest.raises(SystemExit, match=f"no data for channel\\(s\\) {missing} under s3://test-bucket/image-classifier/data/"):
        sm.run("train", "--no-wait", *(["--channels", channels] if channels else []))
    assert set(sm.operations()) == {"ListObjectsV2"}


def test_image_and_instance_type_agree(sm):
    """The CPU image on CPU instances (the default), the CUDA image on GPU ones; a GPU instance
    without a CUDA image is refused before any request, saying which image to build."""
    gpu_image = IMAGE.replace(":test", ":gpu")
    for instance, extra, image in [("ml.m5.xlarge", [], IMAGE),
                                   ("ml.g4dn.xlarge", ["--gpu-image-uri", gpu_image], gpu_image)]:
        sm.respond("create_training_job", {"TrainingJobArn": "arn:aws:sagemaker:eu-west-1:123456789012:training-job/i"})
        sm.data("train", "valid", "test")
        assert sm.run("train", "--no-wait", "--job-name", f"i-{instance[3:5]}", "--train-instance-type", instance,
                      *extra) == 0
        sent = sm.sent_all("CreateTrainingJob")[-1]
        assert (sent["AlgorithmSpecification"]["TrainingImage"], sent["ResourceConfig"]["InstanceType"]) == (
            image, instance)
    before = len(sm.requests)
    with pytest.raises(SystemExit, match=r"ml.p3.2xlarge is a GPU instance: build the CUDA image \(./build_and_push.sh "
                                         r"--gpu --tag gpu NAME\) and set gpu_image_uri"):
        sm.run("train", "--no-wait", "--train-instance-type", "ml.p3.2xlarge")
    assert len(sm.requests) == before


def test_the_default_instance_is_a_cpu_one_like_the_default_image():
    from launch import settings
    assert not settings.is_gpu(settings.Settings().train_instance_type)
    assert settings.Settings().inference_instance_type.startswith("ml.m")


def test_a_job_on_several_multi_gpu_instances(sm):
    """--instance-count N: one job on N instances; every host gets the whole data set (FullyReplicated)
    and `train` gives each GPU its shard. A global batch that does not split over the GPUs is
    refused before any request."""
    gpu_image = IMAGE.replace(":test", ":gpu")
    sm.respond("create_training_job", {"TrainingJobArn": "arn:aws:sagemaker:eu-west-1:123456789012:training-job/d"})
    sm.data("train", "valid", "test")
    args = ["train", "--no-wait", "--instance-count", "2", "--train-instance-type", "ml.g5.12xlarge",
            "--gpu-image-uri", gpu_image]
    assert sm.run(*args, "--job-name", "ddp", "--hp", "batch-size=64") == 0
    req = sm.sent("CreateTrainingJob")
    assert req["ResourceConfig"]["InstanceCount"] == 2 and req["ResourceConfig"]["InstanceType"] == "ml.g5.12xlarge"
    assert req["AlgorithmSpecification"]["TrainingImage"] == gpu_image
    assert {c["DataSource"]["S3DataSource"]["S3DataDistributionType"] for c in req["InputDataConfig"]} == {
        "FullyReplicated"}
    before = len(sm.requests)
    with pytest.raises(SystemExit, match=r"batch-size 36: the global batch must split evenly over the job's 8 "
                                         r"training processes \(2 x ml.g5.12xlarge\); use multiples of 8"):
        sm.run(*args, "--hp", "batch-size=36")
    assert len(sm.requests) == before


def test_efa_instances_and_instance_quotas_are_said_before_any_request(sm, capsys):
    gpu_image = IMAGE.replace(":test", ":gpu")
    sm.respond("create_training_job", {"TrainingJobArn": "arn:aws:sagemaker:eu-west-1:123456789012:training-job/e"})
    sm.data("train", "valid", "test")
    assert sm.run("train", "--no-wait", "--job-name", "efa", "--instance-count", "2", "--train-instance-type",
                  "ml.p4d.24xlarge", "--gpu-image-uri", gpu_image, "--hp", "batch-size=64") == 0
    said = capsys.readouterr().err
    assert "note: 2 x ml.p4d.24xlarge: gradients go between instances over TCP, not EFA" in said
    assert "needs 2 x ml.p4d.24xlarge at once: the account's Service Quota 'ml.p4d.24xlarge for training job usage'" \
        in said
    assert sm.operations()[-1] == "CreateTrainingJob"
    sm.respond("create_training_job", {"TrainingJobArn": "arn:aws:sagemaker:eu-west-1:123456789012:training-job/c"})
    sm.data("train", "valid", "test")
    assert sm.run("train", "--no-wait", "--job-name", "cpu") == 0  # one CPU instance: nothing to say
    assert "note:" not in capsys.readouterr().err


def test_spot_needs_a_wait_larger_than_the_run(sm):
    with pytest.raises(SystemExit, match="max_wait_seconds 3600 must be larger than max_run_seconds 3600 with spot"):
        sm.run("train", "--no-wait", "--spot", "--max-run-seconds", "3600", "--max-wait-seconds", "3600")
    assert sm.operations() == []
