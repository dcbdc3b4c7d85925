"""One settings source for every launch script: defaults < config file (TOML) < environment
(IC_<NAME>, and AWS_REGION / AWS_DEFAULT_REGION for the region) < command-line flags.

The config file is --config PATH, else $IC_CONFIG, else launch/config.toml if it exists
(see launch/config.example.toml).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import tomllib
from pathlib import Path

from image_classifier import hyperparameters, search_space
from image_classifier.metrics import OBJECTIVE_METRIC, OBJECTIVE_TYPE

DEFAULT_CONFIG = Path(__file__).with_name("config.toml")


@dataclasses.dataclass
class Settings:
    region: str | None = None
    role: str | None = None  # IAM role SageMaker assumes (ARN)
    bucket: str | None = None
    prefix: str = "image-classifier"  # S3 key prefix and name prefix of every resource
    image_uri: str | None = None  # the CPU image, from build_and_push.sh
    gpu_image_uri: str | None = None  # the CUDA image, from build_and_push.sh --gpu; for ml.g*/ml.p* instances
    train_instance_type: str = "ml.m5.xlarge"  # CPU, as the default image is
    train_instance_count: int = 1
    volume_size_gb: int = 50
    max_run_seconds: int = 24 * 3600
    spot: bool = False
    max_wait_seconds: int = 48 * 3600  # with spot: running plus waiting for capacity
    inference_instance_type: str = "ml.m5.large"
    transform_instance_type: str = "ml.m5.large"
    debugger: bool = True  # save tensors with SageMaker Debugger and run its rules
    debug_interval: int = 50  # steps between saved tensors
    profiler: bool = True  # system monitoring
    strategy: str = "Bayesian"
    max_jobs: int = 8
    max_parallel_jobs: int = 2
    parallel_jobs_quota: int = 10  # the account's "parallel training jobs per tuning job": 10 unless raised
    early_stopping: str = "Auto"
    objective_metric: str = OBJECTIVE_METRIC
    objective_type: str = OBJECTIVE_TYPE
    # Security (launch/security.py): every job and endpoint.
    network_isolation: bool = False  # no network in the containers: the backbone's weights bundled or staged
    subnets: str | None = None  # comma-separated subnet ids: jobs and endpoints in your VPC
    security_group_ids: str | None = None  # comma-separated, with subnets
    volume_kms_key: str | None = None  # KMS key of the instances' storage volumes (training, endpoints)
    output_kms_key: str | None = None  # KMS key of the model artifact and output in S3
    encrypt_inter_container_traffic: bool = False  # between the instances of a multi-instance job
    pretrained: str | None = None  # S3 URI of staged backbone weights (default: launch/backbones.py stage's record)
    search_preset: str = "default"  # the tuner's ranges: "default" or "recipe" (search_space.PRESETS); a config
    # file's [search_space] table replaces them
    hyperparameters: dict = dataclasses.field(default_factory=dict)  # static, for every job
    search_space: dict = dataclasses.field(default_factory=lambda: dict(search_space.SEARCH_SPACE))

    def s3(self, *parts: str) -> str:
        if not self.bucket:
            raise SystemExit("no S3 bucket: set bucket in the config, IC_BUCKET, or --bucket")
        return "s3://" + "/".join([self.bucket, self.prefix, *[p.strip("/") for p in parts if p]])

    def image_for(self, instance_type: str) -> str:
        """The image built for this instance type: the CUDA build on GPU instances, the CPU build
        elsewhere. A GPU instance without a CUDA image is refused: the CPU build would train on
        its CPU at GPU prices."""
        if is_gpu(instance_type):
            if not self.gpu_image_uri:
                raise SystemExit(f"{instance_type} is a GPU instance: build the CUDA image (./build_and_push.sh "
                                 "--gpu --tag gpu NAME) and set gpu_image_uri (config, IC_GPU_IMAGE_URI or "
                                 "--gpu-image-uri), or choose a CPU instance type such as ml.m5.xlarge")
            return self.gpu_image_uri
        self.require("image_uri")
        return self.image_uri

    def require(self, *names: str) -> None:
        missing = [n for n in names if not getattr(self, n)]
        if missing:
            flags = ", ".join(f"--{n.replace('_', '-')}" for n in missing)
            raise SystemExit(f"missing settings: {', '.join(missing)} (config file, IC_<NAME> or {flags})")


SPOT_DOC = "https://docs.aws.amazon.com/sagemaker/latest/dg/model-managed-spot-training.html"
MME_GPU_DOC = "https://docs.aws.amazon.com/sagemaker/latest/dg/multi-model-support.html"


def is_gpu(instance_type: str) -> bool:
    """SageMaker's GPU families: ml.g4dn, ml.g5, ml.g6, ml.p3, ml.p4d, ml.p5, ..."""
    return re.match(r"^ml\.[gp]\d", instance_type or "") is not None


# GPUs per instance of SageMaker's multi-GPU training types (AWS's accelerated computing instance
# specifications, https://aws.amazon.com/ec2/instance-types/#Accelerated_Computing); every other
# GPU type in SageMaker's training list has one.
MULTI_GPU = {"ml.p2.8xlarge": 8, "ml.p2.16xlarge": 16, "ml.p3.8xlarge": 4, "ml.p3.16xlarge": 8, "ml.p3dn.24xlarge": 8,
             "ml.p4d.24xlarge": 8,
             "ml.p4de.24xlarge": 8, "ml.p5.48xlarge": 8, "ml.p5e.48xlarge": 8, "ml.p5en.48xlarge": 8,
             "ml.g4dn.12xlarge": 4, "ml.g5.12xlarge": 4, "ml.g5.24xlarge": 4, "ml.g5.48xlarge": 8,
             "ml.g6.12xlarge": 4, "ml.g6.24xlarge": 4, "ml.g6.48xlarge": 8, "ml.g6e.12xlarge": 4,
             "ml.g6e.24xlarge": 4, "ml.g6e.48xlarge": 8}


def processes(instance_type: str, count: int) -> int:
    """How many training processes a job runs: one per GPU, or one per CPU instance (as `train` does)."""
    return count * (MULTI_GPU.get(instance_type, 1) if is_gpu(instance_type) else 1)


_SCALARS = [f for f in dataclasses.fields(Settings) if f.name not in ("hyperparameters", "search_space")]
# Each scalar setting's type, from its default (None defaults are strings: region, role, ...).
_KINDS = {f.name: str if f.default is None else type(f.default) for f in _SCALARS}


def _coerce(field: dataclasses.Field, value):
    kind = _KINDS[field.name]
    if kind is bool and isinstance(value, str):
        return hyperparameters.truthy(value)
    return kind(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (override the config file and IC_* variables)")
    group.add_argument("--config", type=Path, help="TOML settings file (default launch/config.toml)")
    for f in _SCALARS:
        flag = "--" + f.name.replace("_", "-")
        if _KINDS[f.name] is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            group.add_argument(flag, default=None)
    group.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                       help="a static hyperparameter for the job(s); repeatable")


def load(args: argparse.Namespace | None = None, environ: dict | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    settings = Settings()
    path = (getattr(args, "config", None) or environ.get("IC_CONFIG")
            or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None))
    table = tomllib.loads(Path(path).read_text()) if path else {}
    for f in _SCALARS:
        if f.name in table:
            setattr(settings, f.name, _coerce(f, table[f.name]))
    settings.hyperparameters = dict(table.get("hyperparameters", {}))
    settings.region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or settings.region
    for f in _SCALARS:
        if f"IC_{f.name.upper()}" in environ:
            setattr(settings, f.name, _coerce(f, environ[f"IC_{f.name.upper()}"]))
    for f in _SCALARS:
        value = getattr(args, f.name, None) if args is not None else None
        if value is not None:
            setattr(settings, f.name, _coerce(f, value))
    for item in getattr(args, "hp", None) or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--hp takes NAME=VALUE, got {item!r}")
        settings.hyperparameters[name] = value
    try:
        settings.search_space = (search_space.from_config(table["search_space"]) if "search_space" in table
                                 else search_space.preset(settings.search_preset))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    hyperparameters.to_sagemaker(settings.hyperparameters)  # fails early on a name or value the image refuses
    if "backbone" in settings.hyperparameters:  # a name timm does not know, as the image would refuse it
        from image_classifier import models
        from image_classifier.errors import TrainingError
        try:
            models.timm_name(str(settings.hyperparameters["backbone"]))
        except TrainingError as e:
            raise SystemExit(str(e)) from None
    if settings.spot and settings.max_wait_seconds <= settings.max_run_seconds:
        raise SystemExit(f"max_wait_seconds {settings.max_wait_seconds} must be larger than max_run_seconds "
                         f"{settings.max_run_seconds} with spot: it counts the wait for capacity plus the run "
                         f"({SPOT_DOC})")
    return settings
