"""The Estimator every training and tuning job uses: our image, our metric regexes, the
hyperparameters as the strings the container parses, S3 channels, spot, Debugger and profiler."""
from __future__ import annotations

from image_classifier import hyperparameters, search_space
from image_classifier.hyperparameters import to_sagemaker
from image_classifier.metrics import DEBUG_COLLECTIONS, METRIC_DEFINITIONS
from image_classifier.paths import TENSORBOARD_LOCAL_PATH

from . import aws, security
from .settings import is_gpu, processes

TAGS = [{"Key": "created-by", "Value": "image-classifier-launch"}]  # cleanup.py finds resources by it
# SageMaker's built-in rules (rule_configs names), run in SageMaker's rule containers beside the job.
DEBUG_RULES = ("vanishing_gradient", "exploding_tensor", "overfit", "overtraining", "poor_weight_initialization",
               "loss_not_decreasing")
PROFILER_RULES = ("ProfilerReport", "LowGPUUtilization")
# PoorWeightInitialization brings a relu_input collection saved every 500 steps for the whole job,
# but reads only the first 10 steps; for ResNet50 at batch 32 each save is 0.35 GB of activations.
RELU_INPUT = {"include_regex": ".*relu_input", "save_interval": "500", "end_step": "10"}
# Jobs without SageMaker's hook save tensors with the image's own hook into output/data (which
# SageMaker uploads as output.tar.gz): tuning trials (CreateHyperParameterTuningJob has no hook or
# rule fields) and local jobs. launch/report.py and the local rules read them there.
OWN_HOOK_DEBUG_DIR = "data/debug"


def own_hook_hyperparameters(settings) -> dict:
    """The settings' hyperparameters, plus debug-dir and debug-interval when Debugger is on."""
    hp = dict(settings.hyperparameters)
    if settings.debugger:
        hp.setdefault("debug-dir", OWN_HOOK_DEBUG_DIR)
        hp.setdefault("debug-interval", settings.debug_interval)
    return hp


def debugger_config(settings):
    from sagemaker.debugger import CollectionConfig, DebuggerHookConfig
    interval = str(settings.debug_interval)
    return DebuggerHookConfig(
        s3_output_path=settings.s3("debug"),
        collection_configs=[CollectionConfig(name, parameters={"save_interval": interval})
                            for name in DEBUG_COLLECTIONS])


def rules(settings) -> list:
    """Debugger rules over the saved tensors (with Debugger on) and profiler rules (with the profiler on)."""
    from sagemaker.debugger import CollectionConfig, ProfilerRule, Rule, rule_configs
    found = []
    if settings.debugger:
        # A rule brings its own collection configs (gradients every 500 steps, ...). The SDK puts
        # them beside ours in a set, so the request would name a collection twice with two
        # intervals, in hash order. Ours replace the rule's where the names meet.
        ours = {c.name: c for c in debugger_config(settings).collection_configs}
        ours["relu_input"] = CollectionConfig("relu_input", parameters=RELU_INPUT)
        for name in DEBUG_RULES:
            config = getattr(rule_configs, name)()
            theirs = Rule.sagemaker(config).collection_configs
            found.append(Rule.sagemaker(config, collections_to_save=[ours.get(c.name, c) for c in theirs]))
    if settings.profiler:
        found += [ProfilerRule.sagemaker(getattr(rule_configs, name)()) for name in PROFILER_RULES]
    return found


def profiler_config(settings):
    from sagemaker.debugger import ProfilerConfig
    return ProfilerConfig(s3_output_path=settings.s3("profiler"), system_monitor_interval_millis=500)


# Instance types with Elastic Fabric Adapter (EFA) networking that multi-node NCCL uses when the
# image has libfabric and the AWS OFI NCCL plugin; this image has neither, so NCCL uses TCP sockets.
EFA_TYPES = ("ml.p4d.24xlarge", "ml.p4de.24xlarge", "ml.p5.48xlarge", "ml.p5e.48xlarge", "ml.p5en.48xlarge",
             "ml.g5.48xlarge", "ml.g6.48xlarge", "ml.g6e.48xlarge", "ml.trn1.32xlarge", "ml.trn1n.32xlarge")


def cost_notes(settings, parallel: int = 1) -> list[str]:
    """What a job costs or needs beyond its request, said before any request: multi-node traffic
    over TCP on EFA instance types, and the instance quotas a new account may not have."""
    notes = []
    count, kind = settings.train_instance_count, settings.train_instance_type
    if count > 1 and kind in EFA_TYPES:
        notes.append(f"{count} x {kind}: gradients go between instances over TCP, not EFA (the image has no "
                     "libfabric or AWS OFI NCCL plugin); expect lower multi-node scaling than EFA gives "
                     "(docs/DISTRIBUTED.md)")
    if count * parallel > 1 or is_gpu(kind):
        notes.append(f"needs {count * parallel} x {kind} at once: the account's Service Quota '{kind} for training "
                     f"job usage'{' (spot: ... for spot training job usage)' if settings.spot else ''} must allow "
                     "it; new accounts often have 0 for GPU types, and the job fails with ResourceLimitExceeded")
    return notes


def check_batch_split(settings, tuning: bool) -> None:
    """batch-size is the global batch: `train` refuses one that does not split evenly over its
    processes (GPUs x instances). Checked here, for the static value or every value the tuner may
    pick, so that no instance starts for a job that would fail."""
    world = processes(settings.train_instance_type, settings.train_instance_count)
    if world == 1:
        return
    values = [settings.hyperparameters.get("batch-size", hyperparameters.BY_NAME["batch-size"].default)]
    ranged = settings.search_space.get("batch-size") if tuning and "batch-size" not in settings.hyperparameters \
        else None
    if isinstance(ranged, search_space.Categorical):
        values = list(ranged.values)
    elif ranged is not None:  # an integer range: the tuner picks values that do not split
        values = [f"{ranged.low}..{ranged.high} (an integer range; give categorical multiples)"]
    bad = [str(v) for v in values if not str(v).isdigit() or int(v) % world]
    if bad:
        raise SystemExit(f"batch-size {', '.join(bad)}: the global batch must split evenly over the job's {world} "
                         f"training processes ({settings.train_instance_count} x {settings.train_instance_type}); "
                         f"use multiples of {world}")


def tensorboard_config(s3_uri: str):
    """Where SageMaker's managed TensorBoard finds the job's scalars (the image's tensorboard.py)."""
    from sagemaker.debugger import TensorBoardOutputConfig
    return TensorBoardOutputConfig(s3_output_path=s3_uri, container_local_output_path=TENSORBOARD_LOCAL_PATH)


def estimator(settings, session, checkpoint_s3_uri: str | None = None, for_tuning: bool = False,
              tensorboard_s3_uri: str | None = None):
    """for_tuning: no Debugger hook, rules or TensorBoard output, which a tuning job's definition
    cannot carry."""
    from sagemaker.estimator import Estimator
    settings.require("role", "bucket")
    check_batch_split(settings, for_tuning)
    return Estimator(
        image_uri=settings.image_for(settings.train_instance_type),
        role=settings.role,
        instance_count=settings.train_instance_count,
        instance_type=settings.train_instance_type,
        volume_size=settings.volume_size_gb,
        max_run=settings.max_run_seconds,
        use_spot_instances=settings.spot,
        max_wait=settings.max_wait_seconds if settings.spot else None,
        output_path=settings.s3("models"),
        checkpoint_s3_uri=checkpoint_s3_uri,
        hyperparameters=to_sagemaker(settings.hyperparameters),
        metric_definitions=METRIC_DEFINITIONS,
        debugger_hook_config=debugger_config(settings) if settings.debugger and not for_tuning else False,
        profiler_config=profiler_config(settings) if settings.profiler else None,
        disable_profiler=not settings.profiler,
        rules=None if for_tuning else rules(settings) or None,
        tensorboard_output_config=tensorboard_config(tensorboard_s3_uri) if tensorboard_s3_uri else None,
        tags=TAGS,
        sagemaker_session=session,
        **security.estimator_kwargs(settings),
    )


REQUIRED_CHANNELS = ("train",)


def inputs(settings, session, data: str | None, channels: list[str], explicit: bool,
           pretrained: str | None = None) -> dict:
    """Channels for the S3 prefixes that hold objects. SageMaker fails CreateTrainingJob ("No S3
    objects found") for an empty one, so a default channel without data is left out with a line
    saying so; a channel asked for by name (explicit) that has none is an error before any job.
    pretrained: staged backbone weights (launch/backbones.py), the 'pretrained' channel."""
    from sagemaker.inputs import TrainingInput
    root = (data or settings.s3("data")).rstrip("/")
    bucket, prefix = aws.split_uri(root)
    found, missing = {}, []
    for name in channels:
        key = f"{prefix}/{name}/" if prefix else f"{name}/"
        listed = session.s3_client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
        if listed.get("KeyCount", len(listed.get("Contents", []))):
            found[name] = TrainingInput(f"{root}/{name}/", distribution="FullyReplicated")
        else:
            missing.append(name)
    needed = [c for c in missing if explicit or c in REQUIRED_CHANNELS]
    if needed:
        raise SystemExit(f"no data for channel(s) {', '.join(needed)} under {root}/ (s3://BUCKET/PREFIX/CHANNEL/"
                         "CLASS/IMAGE); upload it with python -m launch.upload_data, or leave the channel out")
    for name in missing:
        print(f"channel {name}: no objects under {root}/{name}/; the job runs without it", flush=True)
    if pretrained:
        found["pretrained"] = TrainingInput(pretrained, distribution="FullyReplicated")
        print(f"channel pretrained: the staged backbone weights {pretrained}", flush=True)
    return found


def ec2_client(session):
    """EC2, for the VPC's security groups (tests give a stubbed one as session.ec2_client)."""
    return getattr(session, "ec2_client", None) or session.boto_session.client("ec2")


def model_artifact(session, job_name: str) -> str:
    """The S3 model.tar.gz of a completed training job."""
    described = session.sagemaker_client.describe_training_job(TrainingJobName=job_name)
    if described["TrainingJobStatus"] != "Completed":
        raise SystemExit(f"training job {job_name} is {described['TrainingJobStatus']}, not Completed")
    return described["ModelArtifacts"]["S3ModelArtifacts"]


def rule_statuses(described: dict) -> list[tuple[str, str, str]]:
    """(rule, status, detail) of the Debugger and profiler rules in a DescribeTrainingJob answer."""
    found = described.get("DebugRuleEvaluationStatuses", []) + described.get("ProfilerRuleEvaluationStatuses", [])
    return [(r["RuleConfigurationName"], r["RuleEvaluationStatus"], r.get("StatusDetails", "")) for r in found]
