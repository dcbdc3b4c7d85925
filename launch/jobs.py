"""The Estimator every training and tuning job uses: our image, our metric regexes, the
hyperparameters as the strings the container parses, S3 channels, spot, Debugger and profiler."""
from __future__ import annotations

from image_classifier.hyperparameters import to_sagemaker
from image_classifier.metrics import METRIC_DEFINITIONS

TAGS = [{"Key": "created-by", "Value": "image-classifier-launch"}]  # cleanup.py finds resources by it
DEBUG_COLLECTIONS = ("losses", "weights", "biases", "gradients")


def debugger_config(settings):
    from sagemaker.debugger import CollectionConfig, DebuggerHookConfig
    return DebuggerHookConfig(
        s3_output_path=settings.s3("debug"),
        collection_configs=[CollectionConfig(name, parameters={"save_interval": "50"}) for name in DEBUG_COLLECTIONS])


def profiler_config(settings):
    from sagemaker.debugger import ProfilerConfig
    return ProfilerConfig(s3_output_path=settings.s3("profiler"), system_monitor_interval_millis=500)


def estimator(settings, session, checkpoint_s3_uri: str | None = None, rules: list | None = None):
    from sagemaker.estimator import Estimator
    settings.require("role", "image_uri", "bucket")
    return Estimator(
        image_uri=settings.image_uri,
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
        debugger_hook_config=debugger_config(settings) if settings.debugger else False,
        profiler_config=profiler_config(settings) if settings.profiler else None,
        disable_profiler=not settings.profiler,
        rules=rules or None,
        tags=TAGS,
        sagemaker_session=session,
    )


def inputs(settings, data: str | None, channels: list[str]) -> dict:
    from sagemaker.inputs import TrainingInput
    root = (data or settings.s3("data")).rstrip("/")
    return {name: TrainingInput(f"{root}/{name}/", distribution="FullyReplicated") for name in channels}


def model_artifact(session, job_name: str) -> str:
    """The S3 model.tar.gz of a completed training job."""
    described = session.sagemaker_client.describe_training_job(TrainingJobName=job_name)
    if described["TrainingJobStatus"] != "Completed":
        raise SystemExit(f"training job {job_name} is {described['TrainingJobStatus']}, not Completed")
    return described["ModelArtifacts"]["S3ModelArtifacts"]
