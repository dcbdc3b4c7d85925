"""The SageMaker SDK session, with telemetry off and clients injectable (tests pass stubbed ones)."""
from __future__ import annotations

import os
import re
import secrets
import time

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
        sm.s3_resource = boto_session.resource("s3", region_name=settings.region)
        sm.s3_resource.meta.client = s3_client  # S3Uploader (Clarify's analysis config) goes through it too
    return sm


# SageMaker's resource names (training, tuning and transform jobs, models, endpoints and their
# configs): letters, digits and single or repeated hyphens between them (API_CreateTrainingJob.html).
NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
NAME_RULE = "letters, digits and hyphens, starting and ending with a letter or digit"
MAX_NAME = 63
MAX_TUNING_NAME = 32  # API_CreateHyperParameterTuningJob.html


def check_name(name: str, what: str, max_length: int | None = MAX_NAME) -> str:
    """Refuse, before any request, a name SageMaker would refuse (max_length None: any length,
    for a prefix that job_name shortens)."""
    if not NAME.match(name) or (max_length is not None and len(name) > max_length):
        raise SystemExit(f"{what} {name!r} is not a valid SageMaker name: {NAME_RULE}"
                         + (f", {max_length} characters at most" if max_length is not None else ""))
    return name


def job_name(settings, kind: str = "", max_length: int = MAX_NAME) -> str:
    """A unique, valid SageMaker name for any prefix: PREFIX[-KIND]-yymmdd-HHMMSS-xxxx, the
    prefix shortened to fit max_length; the random part keeps two runs in the same second apart."""
    check_name(settings.prefix, "prefix", max_length=None)
    stamp = f"{time.strftime('%y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    base = f"{settings.prefix}-{kind}" if kind else settings.prefix
    return f"{base[:max_length - len(stamp) - 1].rstrip('-')}-{stamp}"


def split_uri(uri: str) -> tuple[str, str]:
    """s3://BUCKET/PREFIX -> (BUCKET, PREFIX without slashes at its ends)."""
    if not uri.startswith("s3://"):
        raise SystemExit(f"not an S3 URI: {uri}")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")
