"""The SageMaker SDK session, with telemetry off and clients injectable (tests pass stubbed ones)."""
from __future__ import annotations

import os

# The SDK reads its config and telemetry settings from here instead of looking them up online.
SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}


def session(settings, boto_session=None, sagemaker_client=None, runtime_client=None, s3_client=None):
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    import boto3
    import sagemaker

    boto_session = boto_session or boto3.Session(region_name=settings.region)
    sm = sagemaker.Session(boto_session=boto_session, sagemaker_client=sagemaker_client,
                           sagemaker_runtime_client=runtime_client, default_bucket=settings.bucket,
                           sagemaker_config=SDK_CONFIG)
    if s3_client is not None:  # the SDK makes its own; its multi-model and upload code use this one
        sm.s3_client = s3_client
    return sm


def job_name(settings, kind: str = "") -> str:
    """A unique SageMaker name (63 characters at most) under the settings' prefix."""
    from sagemaker.utils import name_from_base
    return name_from_base(f"{settings.prefix}-{kind}" if kind else settings.prefix, short=bool(kind))


def split_uri(uri: str) -> tuple[str, str]:
    """s3://BUCKET/PREFIX -> (BUCKET, PREFIX without slashes at its ends)."""
    if not uri.startswith("s3://"):
        raise SystemExit(f"not an S3 URI: {uri}")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")
