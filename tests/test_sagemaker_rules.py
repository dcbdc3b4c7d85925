"""sagemaker_rules: each kind of check catches a bad request that botocore lets through, and valid
requests of every kind pass. No network: botocore's bundled service models only."""
import copy
import re

import botocore.session
import pytest
from botocore.validate import ParamValidator

import sagemaker_rules as rules
from sagemaker_stub import IMAGE, ROLE, StubbedSageMaker, arn

SAGEMAKER = botocore.session.get_session().get_service_model("sagemaker")
S3 = botocore.session.get_session().get_service_model("s3")
METRICS = [{"Name": "valid:accuracy", "Regex": r"valid_acc=([0-9\.]+)"},
           {"Name": "valid:loss", "Regex": r"valid_loss=([0-9\.]+)"}]
DATA = [{"ChannelName": "train", "DataSource": {"S3DataSource": {
    "S3DataType": "S3Prefix", "S3Uri": "s3://test-bucket/data/train/", "S3DataDistributionType": "FullyReplicated"}}}]
TAGS = [{"Key": "created-by", "Value": "image-classifier-launch"}]
RESOURCES = {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50}
KMS_KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"

TRAINING = {
    "TrainingJobName": "ic-job-1",
    "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File", "MetricDefinitions": METRICS},
    "RoleArn": ROLE, "InputDataConfig": DATA, "OutputDataConfig": {"S3OutputPath": "s3://test-bucket/models"},
    "ResourceConfig": RESOURCES, "EnableManagedSpotTraining": True,
    "StoppingCondition": {"MaxRuntimeInSeconds": 86400, "MaxWaitTimeInSeconds": 172800},
    "HyperParameters": {"epochs": "3", "lr": "0.001"}, "Tags": TAGS,
}
BAYESIAN = {
    "HyperParameterTuningJobName": "ic-hpo-1",
    "HyperParameterTuningJobConfig": {
        "Strategy": "Bayesian",
        "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "valid:accuracy"},
        "ResourceLimits": {"MaxNumberOfTrainingJobs": 8, "MaxParallelTrainingJobs": 2},
        "ParameterRanges": {
            "ContinuousParameterRanges": [{"Name": "lr", "MinValue": "0.0001", "MaxValue": "0.03",
                                           "ScalingType": "Logarithmic"}],
            "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "2", "MaxValue": "8", "ScalingType": "Auto"}],
            "CategoricalParameterRanges": [{"Name": "batch-size", "Values": ["16", "32", "64"]}]},
        "TrainingJobEarlyStoppingType": "Auto"},
    "TrainingJobDefinition": {
        "StaticHyperParameters": {"backbone": "resnet50"},
        "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File", "MetricDefinitions": METRICS},
        "RoleArn": ROLE, "InputDataConfig": DATA, "OutputDataConfig": {"S3OutputPath": "s3://test-bucket/models"},
        "ResourceConfig": RESOURCES, "StoppingCondition": {"MaxRuntimeInSeconds": 86400}},
    "Tags": TAGS,
}


def tuning(strategy: str, ranges: dict, limits: dict, **config) -> dict:
    request = copy.deepcopy(BAYESIAN)
    request["HyperParameterTuningJobConfig"].update(Strategy=strategy, ParameterRanges=ranges, ResourceLimits=limits,
                                                    **config)
    if strategy in ("Grid", "Hyperband"):
        request["HyperParameterTuningJobConfig"].pop("TrainingJobEarlyStoppingType")
    return request


GRID_RANGES = {"CategoricalParameterRanges": [{"Name": "lr", "Values": ["0.001", "0.01", "0.1"]},
                                              {"Name": "epochs", "Values": ["2", "5", "8"]}]}
GRID = tuning("Grid", GRID_RANGES, {"MaxParallelTrainingJobs": 2})  # MaxNumberOfTrainingJobs inferred
GRID_EXPLICIT = tuning("Grid", GRID_RANGES, {"MaxNumberOfTrainingJobs": 9, "MaxParallelTrainingJobs": 2})
HYPERBAND_RANGES = {"ContinuousParameterRanges": BAYESIAN["HyperParameterTuningJobConfig"]["ParameterRanges"][
    "ContinuousParameterRanges"]}
HYPERBAND = tuning("Hyperband", HYPERBAND_RANGES, {"MaxNumberOfTrainingJobs": 8, "MaxParallelTrainingJobs": 2})
HYPERBAND["TrainingJobDefinition"]["StaticHyperParameters"]["epochs"] = "8"  # MaxResource inferred from it
HYPERBAND_TUNED_EPOCHS = tuning(
    "Hyperband", BAYESIAN["HyperParameterTuningJobConfig"]["ParameterRanges"],
    {"MaxNumberOfTrainingJobs": 8, "MaxParallelTrainingJobs": 2},
    StrategyConfig={"HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": 8}})
SINGLE_MODEL = {"ModelName": "ic-model-1", "ExecutionRoleArn": ROLE, "Tags": TAGS, "PrimaryContainer": {
    "Image": IMAGE, "ModelDataUrl": "s3://test-bucket/models/ic-1/output/model.tar.gz"}}
MULTI_MODEL = {"ModelName": "dogs-mme", "ExecutionRoleArn": ROLE, "PrimaryContainer": {
    "Image": IMAGE, "Mode": "MultiModel", "ModelDataUrl": "s3://test-bucket/multi-model/dogs-mme/"}}
ENDPOINT_CONFIG = {"EndpointConfigName": "ic-endpoint-1", "ProductionVariants": [{
    "VariantName": "AllTraffic", "ModelName": "ic-model-1", "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}]}
ENDPOINT = {"EndpointName": "ic-endpoint-1", "EndpointConfigName": "ic-endpoint-1", "Tags": TAGS}
TRANSFORM = {"TransformJobName": "ic-batch-1", "ModelName": "ic-model-1",
             "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                                "S3Uri": "s3://test-bucket/batch/in/"}}},
             "TransformOutput": {"S3OutputPath": "s3://test-bucket/batch/out/"},
             "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1}}

VALID = [("CreateTrainingJob", TRAINING), ("CreateHyperParameterTuningJob", BAYESIAN),
         ("CreateHyperParameterTuningJob", GRID), ("CreateHyperParameterTuningJob", GRID_EXPLICIT),
         ("CreateHyperParameterTuningJob", HYPERBAND), ("CreateHyperParameterTuningJob", HYPERBAND_TUNED_EPOCHS),
         ("CreateModel", SINGLE_MODEL), ("CreateModel", MULTI_MODEL), ("CreateEndpointConfig", ENDPOINT_CONFIG),
         ("CreateEndpoint", ENDPOINT), ("CreateTransformJob", TRANSFORM)]


def botocore_errors(operation: str, params: dict) -> str:
    shape = SAGEMAKER.operation_model(operation).input_shape
    return ParamValidator().validate(params, shape).generate_report()


def changed(base: dict, path: str, value) -> dict:
    """A deep copy of `base` with the dotted `path` set to `value` (None deletes it)."""
    request = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = request
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return request


# --- valid requests ------------------------------------------------------------------------------

@pytest.mark.parametrize("operation,params", VALID, ids=[f"{op}-{i}" for i, (op, _) in enumerate(VALID)])
def test_valid_requests_pass_both_botocore_and_the_rules(operation, params):
    assert botocore_errors(operation, params) == ""
    assert rules.violations(operation, params, SAGEMAKER) == []


# --- service-model constraints botocore skips ---------------------------------------------------

MODEL_CASES = [  # (kind, operation, bad request, the message expected)
    ("max length", "CreateHyperParameterTuningJob",
     changed(BAYESIAN, "HyperParameterTuningJobConfig.ParameterRanges.IntegerParameterRanges.0.MaxValue", "9" * 257),
     "HyperParameterTuningJobConfig.ParameterRanges.IntegerParameterRanges[0].MaxValue: max length 256 exceeded (257)"),
    ("max length (map value)", "CreateTrainingJob", changed(TRAINING, "HyperParameters.lr", "1" * 2501),
     "HyperParameters.lr: max length 2500 exceeded (2501)"),
    ("max length (map key)", "CreateTrainingJob", changed(TRAINING, "HyperParameters", {"k" * 257: "1"}),
     f"HyperParameters (key {'k' * 257!r}): max length 256 exceeded (257)"),
    ("max length (metric regex)", "CreateTrainingJob",
     changed(TRAINING, "AlgorithmSpecification.MetricDefinitions", [{"Name": "m", "Regex": "x" * 501}]),
     "AlgorithmSpecification.MetricDefinitions[0].Regex: max length 500 exceeded (501)"),
    ("pattern", "CreateTrainingJob", changed(TRAINING, "OutputDataConfig.S3OutputPath", "ftp://test-bucket/models"),
     "OutputDataConfig.S3OutputPath: pattern: 'ftp://test-bucket/models' does not match (https|s3)://([^/]+)/?(.*)"),
    ("pattern (full match)", "CreateEndpoint", changed(ENDPOINT, "EndpointName", "ic_endpoint"),
     "EndpointName: pattern: 'ic_endpoint' does not match [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}"),
    ("pattern (Java \\p{L})", "CreateTrainingJob", changed(TRAINING, "Tags", [{"Key": "created-by", "Value": "a!b"}]),
     r"Tags[0].Value: pattern: 'a!b' does not match ([\p{L}\p{Z}\p{N}_.:/=+\-@]*)"),
    ("enum", "CreateTrainingJob", changed(TRAINING, "AlgorithmSpecification.TrainingInputMode", "Files"),
     "AlgorithmSpecification.TrainingInputMode: enum: 'Files' is not one of ['Pipe', 'File', 'FastFile']"),
    ("list max", "CreateHyperParameterTuningJob",
     changed(BAYESIAN, "HyperParameterTuningJobConfig.ParameterRanges.CategoricalParameterRanges.0.Values",
             [str(i) for i in range(31)]),
     "HyperParameterTuningJobConfig.ParameterRanges.CategoricalParameterRanges[0].Values: max items 30 exceeded (31)"),
    ("list max (metric definitions)", "CreateTrainingJob",
     changed(TRAINING, "AlgorithmSpecification.MetricDefinitions",
             [{"Name": f"m{i}", "Regex": "x"} for i in range(41)]),
     "AlgorithmSpecification.MetricDefinitions: max items 40 exceeded (41)"),
    ("map max", "CreateTrainingJob", changed(TRAINING, "HyperParameters", {f"h{i}": "1" for i in range(101)}),
     "HyperParameters: max entries 100 exceeded (101)"),
    ("numeric max", "CreateTrainingJob", changed(TRAINING, "StoppingCondition.MaxPendingTimeInSeconds", 2419201),
     "StoppingCondition.MaxPendingTimeInSeconds: max value 2419200 exceeded (2419201)"),
    ("numeric max (tuning)", "CreateHyperParameterTuningJob",
     changed(BAYESIAN, "HyperParameterTuningJobConfig.ResourceLimits.MaxRuntimeInSeconds", 15768001),
     "HyperParameterTuningJobConfig.ResourceLimits.MaxRuntimeInSeconds: max value 15768000 exceeded (15768001)"),
]


@pytest.mark.parametrize("kind,operation,params,message", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_model_constraints_botocore_skips_are_caught(kind, operation, params, message):
    assert botocore_errors(operation, params) == ""  # botocore lets it through ...
    assert message in rules.model_violations(operation, params, SAGEMAKER)  # ... this does not


def test_what_botocore_checks_is_left_to_botocore():
    # A string under its min: botocore reports it, so the rules do not repeat it.
    short = changed(ENDPOINT, "Tags", [{"Key": "", "Value": "x"}])
    assert "Invalid length for parameter Tags[0].Key" in botocore_errors("CreateEndpoint", short)
    assert rules.model_violations("CreateEndpoint", short, SAGEMAKER) == []


def test_wrong_types_are_skipped_not_crashed_on():
    params = changed(TRAINING, "StoppingCondition.MaxRuntimeInSeconds", "86400")
    assert rules.model_violations("CreateTrainingJob", params, SAGEMAKER) == []


def test_s3_requests_are_checked_against_the_s3_model():
    params = {"Bucket": "test-bucket", "Key": "k", "CopySource": "no-slash", "ACL": "public"}
    found = rules.violations("CopyObject", params, S3)
    assert r"CopySource: pattern: 'no-slash' does not match \/?.+\/.+" in found
    assert any(f.startswith("ACL: enum: 'public'") for f in found)


# --- Java patterns -------------------------------------------------------------------------------

def test_every_model_pattern_compiles_after_translation():
    # Nine sagemaker patterns do not compile in Python as they are (\p{...}, a UTF-16 surrogate
    # pair range, `${1,256}`); translated, none is left unchecked. A model update that brings
    # one the translator cannot read fails here, with the reason.
    assert rules.uncompilable_patterns(SAGEMAKER) == {}
    assert rules.uncompilable_patterns(S3) == {}


@pytest.mark.parametrize("java,good,bad", [
    (r"([\p{L}\p{Z}\p{N}_.:\/=+\-@]*)${1,256}", ["image-classifier", "hé llo", "日本", ""], ["a!b", "a\nb"]),
    (r"[\u0020-\uD7FF\uE000-\uFFFD\uD800\uDC00-\uDBFF\uDFFF\t]*", ["ok \U0001F600\t"], ["bell\x07"]),
    (r"arn:[\p{Alnum}\-]+:lambda:[\p{Alnum}\-]+:[0-9]{12}:function:.*",
     ["arn:aws:lambda:eu-west-1:123456789012:function:f"], ["arn:aws:lambda:eu-west-1:123456789012:function:f\r"]),
    (r"[\w:]+", ["valid:accuracy"], ["validé"]),  # Java's \w is ASCII
    (r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", ["ic-job--1"], ["ic_job", "ic-job-", "-ic"]),  # the whole value
])
def test_java_patterns_mean_what_they_mean_in_java(java, good, bad):
    compiled = rules.compile_pattern(java)
    assert [g for g in good if not compiled.fullmatch(g)] == []
    assert [b for b in bad if compiled.fullmatch(b)] == []


@pytest.mark.parametrize("java,reason", [
    (r"[a-z&&[^e]]", "intersection"), (r"[a-z[A-Z]]", "nested character class"), (r"\X", r"\X"),
    (r"\p{InGreek}", "not translated"), (r"[\P{L}]", "negated"), (r"a\i", "bad escape"),
])
def test_untranslatable_patterns_are_counted_not_passed(java, reason, monkeypatch):
    assert reason in rules.pattern_problem(java)
    assert rules.compile_pattern(java) is None
    # The operation model and its member shapes are cached, so this reaches the walk.
    shape = SAGEMAKER.operation_model("CreateTrainingJob").input_shape.members["TrainingJobName"]
    monkeypatch.setitem(shape.metadata, "pattern", java)
    monkeypatch.setattr(rules, "UNCHECKED", rules.collections.Counter())
    assert rules.model_violations("CreateTrainingJob", TRAINING, SAGEMAKER) == []
    assert rules.UNCHECKED == {("TrainingJobName", java): 1}


# --- cross-field rules ---------------------------------------------------------------------------

def many(kind: str, count: int, start: int = 0) -> list:
    if kind == "ContinuousParameterRanges":
        return [{"Name": f"c{i}", "MinValue": "0.1", "MaxValue": "0.2"} for i in range(start, start + count)]
    return [{"Name": f"i{i}", "MinValue": "1", "MaxValue": "9"} for i in range(start, start + count)]


LIMITS = "HyperParameterTuningJobConfig.ResourceLimits"
RANGES = "HyperParameterTuningJobConfig.ParameterRanges"
STATIC = "TrainingJobDefinition.StaticHyperParameters"
TUNE = "CreateHyperParameterTuningJob"
RULE_CASES = [  # (rule id, operation, bad request)
    ("name-CreateTrainingJob", "CreateTrainingJob", changed(TRAINING, "TrainingJobName", "ic_job")),
    ("name-CreateHyperParameterTuningJob", TUNE,
     changed(BAYESIAN, "HyperParameterTuningJobName", "image-classifier-hpo-261121-12003")),
    ("name-CreateModel", "CreateModel", changed(SINGLE_MODEL, "ModelName", "ic-model-")),
    ("name-CreateEndpointConfig", "CreateEndpointConfig", changed(ENDPOINT_CONFIG, "EndpointConfigName", "e" * 64)),
    ("name-CreateEndpoint", "CreateEndpoint", changed(ENDPOINT, "EndpointName", "-ic")),
    ("name-CreateTransformJob", "CreateTransformJob", changed(TRANSFORM, "TransformJobName", "ic.batch")),
    ("spot-max-wait", "CreateTrainingJob", changed(TRAINING, "StoppingCondition.MaxWaitTimeInSeconds", 3600)),
    ("spot-max-wait", "CreateTrainingJob", changed(TRAINING, "StoppingCondition.MaxWaitTimeInSeconds", None)),
    ("spot-max-wait", "CreateTrainingJob", changed(TRAINING, "StoppingCondition.MaxWaitTimeInSeconds",
                                                   TRAINING["StoppingCondition"]["MaxRuntimeInSeconds"])),  # equal
    ("transform-payload-100", "CreateTransformJob", changed(TRANSFORM, "MaxPayloadInMB", 101)),
    ("transform-payload-100", "CreateTransformJob", changed(changed(TRANSFORM, "MaxPayloadInMB", 26),
                                                            "MaxConcurrentTransforms", 4)),
    ("multi-model-cpu-only", "CreateEndpointConfig", changed(changed(
        ENDPOINT_CONFIG, "ProductionVariants.0.ModelName", "dogs-mme"), "ProductionVariants.0.InstanceType",
        "ml.g5.xlarge")),
    ("spot-max-wait", TUNE, changed(changed(
        BAYESIAN, "TrainingJobDefinition.EnableManagedSpotTraining", True),
        "TrainingJobDefinition.StoppingCondition.MaxWaitTimeInSeconds", 60)),
    ("max-wait-needs-spot", "CreateTrainingJob", changed(TRAINING, "EnableManagedSpotTraining", False)),
    ("max-wait-needs-spot", TUNE,
     changed(BAYESIAN, "TrainingJobDefinition.StoppingCondition.MaxWaitTimeInSeconds", 172800)),
    ("max-runtime-28-days", "CreateTrainingJob", changed(changed(
        TRAINING, "StoppingCondition.MaxRuntimeInSeconds", 2419201),
        "StoppingCondition.MaxWaitTimeInSeconds", 2419201)),
    ("tuning-parallel-le-total", TUNE, changed(BAYESIAN, f"{LIMITS}.MaxParallelTrainingJobs", 9)),
    ("quota-training-jobs-750", TUNE, changed(BAYESIAN, f"{LIMITS}.MaxNumberOfTrainingJobs", 751)),
    ("quota-parallel-jobs-10", TUNE, changed(changed(
        BAYESIAN, f"{LIMITS}.MaxParallelTrainingJobs", 11), f"{LIMITS}.MaxNumberOfTrainingJobs", 20)),
    ("quota-ranges-30", TUNE, changed(BAYESIAN, RANGES, {
        "ContinuousParameterRanges": many("ContinuousParameterRanges", 16),
        "IntegerParameterRanges": many("IntegerParameterRanges", 15)})),
    ("grid-categorical-only", TUNE, changed(GRID, f"{RANGES}.IntegerParameterRanges",
                                                                       many("IntegerParameterRanges", 1))),
    ("grid-max-jobs", TUNE, changed(GRID, f"{LIMITS}.MaxNumberOfTrainingJobs", 8)),
    ("grid-max-jobs", TUNE, changed(GRID, f"{RANGES}.CategoricalParameterRanges", [
        {"Name": f"h{i}", "Values": [str(v) for v in range(10)]} for i in range(3)])),
    ("tuning-enough-combinations", TUNE, changed(changed(
        BAYESIAN, "HyperParameterTuningJobConfig.Strategy", "Random"), RANGES, {
        "CategoricalParameterRanges": [{"Name": "batch-size", "Values": ["16", "32"]}],
        "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "2", "MaxValue": "4"}]})),  # 6 < 8
    ("hyperband-early-stopping-off", TUNE,
     changed(HYPERBAND, "HyperParameterTuningJobConfig.TrainingJobEarlyStoppingType", "Auto")),
    ("hyperband-max-resource", TUNE,
     changed(HYPERBAND_TUNED_EPOCHS, "HyperParameterTuningJobConfig.StrategyConfig", None)),
    ("hyperband-max-resource", TUNE, changed(
        HYPERBAND_TUNED_EPOCHS, "HyperParameterTuningJobConfig.StrategyConfig.HyperbandStrategyConfig.MaxResource",
        20001)),
    ("hyperband-config-only-with-hyperband", TUNE, changed(
        BAYESIAN, "HyperParameterTuningJobConfig.StrategyConfig", {"HyperbandStrategyConfig": {"MaxResource": 8}})),
    ("range-scaling", TUNE,
     changed(BAYESIAN, f"{RANGES}.ContinuousParameterRanges.0.MinValue", "0")),
    ("range-scaling", TUNE,
     changed(BAYESIAN, f"{RANGES}.IntegerParameterRanges.0.ScalingType", "ReverseLogarithmic")),
    ("range-scaling", TUNE, changed(BAYESIAN, f"{RANGES}.ContinuousParameterRanges", [
        {"Name": "momentum", "MinValue": "0.5", "MaxValue": "1.5", "ScalingType": "ReverseLogarithmic"}])),
    ("range-bounds", TUNE, changed(BAYESIAN, f"{RANGES}.IntegerParameterRanges.0.MinValue", "9")),
    ("range-bounds", TUNE, changed(BAYESIAN, f"{RANGES}.IntegerParameterRanges.0.MaxValue", "8.5")),
    ("range-bounds", TUNE, changed(BAYESIAN, f"{RANGES}.ContinuousParameterRanges.0.MaxValue", "high")),
    ("static-not-tuned", TUNE, changed(BAYESIAN, f"{STATIC}.lr", "0.01")),
    ("static-not-tuned", TUNE, changed(BAYESIAN, f"{RANGES}.CategoricalParameterRanges", [
        {"Name": "epochs", "Values": ["2", "3"]}])),
    ("hyperparameters-100", TUNE, changed(BAYESIAN, STATIC, {f"s{i}": "1" for i in range(97)})),
    ("objective-is-defined-metric", TUNE, changed(
        BAYESIAN, "HyperParameterTuningJobConfig.HyperParameterTuningJobObjective.MetricName", "test:accuracy")),
    ("tuning-metrics-20", TUNE, changed(
        BAYESIAN, "TrainingJobDefinition.AlgorithmSpecification.MetricDefinitions",
        METRICS + [{"Name": f"m{i}", "Regex": "x=(.*)"} for i in range(19)])),
    ("volume-kms-key-local-storage", "CreateTrainingJob", changed(TRAINING, "ResourceConfig.VolumeKmsKeyId", KMS_KEY)),
    ("volume-kms-key-local-storage", "CreateEndpointConfig", changed(changed(
        ENDPOINT_CONFIG, "KmsKeyId", KMS_KEY), "ProductionVariants.0.InstanceType", "ml.m5d.large")),
    ("isolated-job-has-its-weights", "CreateTrainingJob", changed(changed(
        TRAINING, "EnableNetworkIsolation", True), "HyperParameters.backbone", "convnext_atto")),
    ("isolated-job-has-its-weights", TUNE, changed(BAYESIAN, "TrainingJobDefinition.EnableNetworkIsolation", True)),
    ("model-data-url", "CreateModel",
     changed(SINGLE_MODEL, "PrimaryContainer.ModelDataUrl", "s3://test-bucket/models/")),
    ("model-data-url", "CreateModel", changed(MULTI_MODEL, "PrimaryContainer.ModelDataUrl", "s3://b/m/model.tar.gz")),
    ("model-data-url", "CreateModel", changed(MULTI_MODEL, "PrimaryContainer.ModelDataSource", {"S3DataSource": {
        "S3Uri": "s3://test-bucket/m/", "S3DataType": "S3Prefix", "CompressionType": "Gzip"}})),
]


def rule_ids(found: list[str]) -> set[str]:
    return {m.group(1) for m in (re.match(r"\[([\w-]+)\] ", f) for f in found) if m}


@pytest.mark.parametrize("rule_id,operation,params", RULE_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(RULE_CASES)])
def test_each_cross_field_rule_catches_its_bad_request(rule_id, operation, params):
    assert botocore_errors(operation, params) == ""  # the model alone cannot tell
    found = rules.violations(operation, params, SAGEMAKER, HISTORY)
    assert rule_id in rule_ids(found), found


HISTORY = (("CreateModel", MULTI_MODEL), ("CreateModel", SINGLE_MODEL))  # what was sent before a case


def test_a_multi_model_endpoint_on_cpu_and_a_single_model_on_gpu_pass():
    on_gpu = changed(ENDPOINT_CONFIG, "ProductionVariants.0.InstanceType", "ml.g5.xlarge")  # ic-model-1: single
    assert rules.violations("CreateEndpointConfig", on_gpu, SAGEMAKER, HISTORY) == []
    on_cpu = changed(ENDPOINT_CONFIG, "ProductionVariants.0.ModelName", "dogs-mme")
    assert rules.violations("CreateEndpointConfig", on_cpu, SAGEMAKER, HISTORY) == []


def test_runtime_requests_are_checked_against_the_runtime_model():
    runtime = botocore.session.get_session().get_service_model("sagemaker-runtime")
    found = rules.violations("InvokeEndpoint", {"EndpointName": "dogs", "Body": b"x" * (6 * 1024 * 1024 + 1),
                                                "CustomAttributes": "top_k=3" * 200, "TargetModel": " dogs.tar.gz"},
                             runtime)
    assert any("Body" in f for f in found) and any("CustomAttributes" in f for f in found), found
    assert any("TargetModel" in f for f in found), found
    assert rules.violations("InvokeEndpoint", {"EndpointName": "dogs", "Body": b"x", "CustomAttributes": "top_k=3",
                                               "TargetModel": "dogs.tar.gz"}, runtime) == []


def test_messages_name_the_path_and_the_numbers():
    found = rules.violations("CreateHyperParameterTuningJob", changed(GRID, f"{LIMITS}.MaxNumberOfTrainingJobs", 8),
                             SAGEMAKER)
    assert found == ["[grid-max-jobs] HyperParameterTuningJobConfig.ResourceLimits.MaxNumberOfTrainingJobs: 8 != 9 "
                     "grid points of HyperParameterTuningJobConfig.ParameterRanges"]
    found = rules.violations("CreateHyperParameterTuningJob",
                             changed(HYPERBAND_TUNED_EPOCHS, "HyperParameterTuningJobConfig.StrategyConfig", None),
                             SAGEMAKER)
    assert found == ["[hyperband-max-resource] TrainingJobDefinition.StaticHyperParameters: no MaxResource and none of "
                     "('epochs', 'numepochs', 'n-epochs', 'n_epochs', 'num_epochs') is static (['epochs'] are tuned "
                     "ranges, which do not count)"]


def test_every_rule_has_a_case_a_source_and_a_confirmation_note():
    assert {r.id for r in rules.RULES} == {c[0] for c in RULE_CASES}
    assert len({r.id for r in rules.RULES}) == len(rules.RULES)
    for rule in rules.RULES:
        assert rule.source.startswith("https://docs.aws.amazon.com/sagemaker/latest/"), rule.id
        assert rule.text and rule.confirmed and rule.operations, rule.id
        assert all(op in SAGEMAKER.operation_names for op in rule.operations), rule.id


def test_name_rules_agree_with_the_service_model():
    # The documented name pattern is the model's (the model drops the leading ^).
    for op, key, limit in (("CreateTrainingJob", "TrainingJobName", 63),
                           ("CreateHyperParameterTuningJob", "HyperParameterTuningJobName", 32),
                           ("CreateEndpoint", "EndpointName", 63), ("CreateTransformJob", "TransformJobName", 63)):
        shape = SAGEMAKER.operation_model(op).input_shape.members[key]
        assert shape.metadata["max"] == limit
        assert shape.metadata["pattern"] == f"[a-zA-Z0-9](-*[a-zA-Z0-9]){{0,{limit - 1}}}"


# --- the Stubber harness --------------------------------------------------------------------------

def test_the_harness_refuses_what_the_service_would_refuse():
    sm = StubbedSageMaker()
    for _ in range(2):  # the Stubber wants a response queued before it lets a call reach the capture
        sm.respond("create_training_job", {"TrainingJobArn": arn("training-job", "ic-job-1")})
    sm.client.create_training_job(**TRAINING)  # valid: goes through
    with pytest.raises(rules.InvalidRequest, match=r"CreateTrainingJob would be refused:\n  \[spot-max-wait\]"):
        sm.client.create_training_job(**changed(TRAINING, "StoppingCondition.MaxWaitTimeInSeconds", 60))
    assert [op for op, _ in sm.requests] == ["CreateTrainingJob", "CreateTrainingJob"]
    with pytest.raises(AssertionError, match="spot-max-wait"):
        sm.done()  # fails even when launch code swallowed the exception
