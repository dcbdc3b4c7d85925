"""Network isolation, a VPC and KMS keys for every job and endpoint: checked before any request
that creates something, and handed to the SDK from here only.

    --network-isolation           no network in the training and serving containers
                                  (EnableNetworkIsolation): the backbone's weights must be bundled
                                  in the image or staged (python launch/backbones.py stage NAME)
    --subnets A,B --security-group-ids SG   jobs and endpoints in your VPC (VpcConfig)
    --volume-kms-key KEY          the instances' storage volumes (training, endpoints)
    --output-kms-key KEY          the model artifact and output in S3
    --encrypt-inter-container-traffic       between the instances of a multi-instance job

Documented rules checked here (each also in tests/sagemaker_rules.py, which validates requests):
- A VPC takes subnets and security groups together: the SDK drops a VpcConfig given only one of
  them (sagemaker/vpc_utils.py), so the job would run outside the VPC without a word.
- Distributed training in a VPC needs a security group that admits traffic from itself
  (https://docs.aws.amazon.com/sagemaker/latest/dg/train-vpc.html): asked of EC2 before the job.
- Instance types with local NVMe storage encrypt it in hardware and refuse a volume KMS key
  (API_ResourceConfig.html, API_CreateEndpointConfig.html).
"""
from __future__ import annotations


TRAIN_VPC_DOC = "https://docs.aws.amazon.com/sagemaker/latest/dg/train-vpc.html"
RESOURCE_CONFIG_DOC = "https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_ResourceConfig.html"
ENDPOINT_CONFIG_DOC = "https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_CreateEndpointConfig.html"

# Instance types with local NVMe storage, which the hardware encrypts: SageMaker refuses a volume
# KMS key for them ("You can't request a VolumeKmsKeyId when using an instance type with local
# storage", API_ResourceConfig.html; KmsKeyId likewise, API_CreateEndpointConfig.html). Neither
# page lists them; this is the SageMaker SDK's own rule (sagemaker/utils.py volume_size_supported:
# any family with a "d" in it, c5d, p4d, g4dn, ..., and g5, g6, p5, trn1).
LOCAL_STORAGE_FAMILIES = ("g5", "g6", "p5", "trn1")


def has_local_storage(instance_type: str) -> bool:
    family = (instance_type or "").removeprefix("ml.").split(".")[0]
    return "d" in family or family.startswith(LOCAL_STORAGE_FAMILIES)


def _ids(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def vpc(settings) -> dict | None:
    """VpcConfig, or None; one of subnets / security groups without the other is refused."""
    subnets, groups = _ids(settings.subnets), _ids(settings.security_group_ids)
    if bool(subnets) != bool(groups):
        raise SystemExit("a VPC needs both --subnets and --security-group-ids (the SDK drops a VpcConfig with "
                         "only one of them, and the job would run outside your VPC)")
    return {"Subnets": subnets, "SecurityGroupIds": groups} if subnets else None


def check_volume_key(settings, instance_type: str, what: str) -> None:
    if settings.volume_kms_key and has_local_storage(instance_type):
        raise SystemExit(f"{instance_type} ({what}) has local NVMe storage, which the hardware encrypts: SageMaker "
                         f"refuses a volume KMS key for it ({RESOURCE_CONFIG_DOC}); drop --volume-kms-key or "
                         "choose an instance type without local storage")


def estimator_kwargs(settings) -> dict:
    """The Estimator's isolation, VPC and encryption arguments (a tuning job's definition takes the
    estimator's)."""
    check_volume_key(settings, settings.train_instance_type, "training")
    found = vpc(settings) or {}
    return {"enable_network_isolation": settings.network_isolation,
            "subnets": found.get("Subnets"), "security_group_ids": found.get("SecurityGroupIds"),
            "volume_kms_key": settings.volume_kms_key or None, "output_kms_key": settings.output_kms_key or None,
            "encrypt_inter_container_traffic": settings.encrypt_inter_container_traffic}


def model_kwargs(settings) -> dict:
    """A Model's isolation and VPC arguments (serving never downloads: isolation costs it nothing)."""
    return {"enable_network_isolation": settings.network_isolation, "vpc_config": vpc(settings)}


def deploy_kwargs(settings, instance_type: str) -> dict:
    """Model.deploy's key for the endpoint's storage volume."""
    if not settings.volume_kms_key:
        return {}
    check_volume_key(settings, instance_type, "endpoint")
    return {"kms_key": settings.volume_kms_key}


def check_distributed_vpc(settings, ec2, instance_count: int) -> None:
    """A job of several instances in a VPC: at least one of its security groups must admit
    traffic from itself, or the instances cannot reach each other and the job hangs until NCCL
    times out. Asked of EC2 (DescribeSecurityGroups, read-only) before the job is created."""
    found = vpc(settings)
    if not found or instance_count < 2:
        return
    groups = ec2.describe_security_groups(GroupIds=found["SecurityGroupIds"])["SecurityGroups"]
    for group in groups:
        for rule in group.get("IpPermissions", []):
            if rule.get("IpProtocol") == "-1" and any(pair.get("GroupId") == group["GroupId"]
                                                       for pair in rule.get("UserIdGroupPairs", [])):
                return
    raise SystemExit(f"{instance_count} instances in a VPC: none of the security groups "
                     f"{', '.join(found['SecurityGroupIds'])} admits all traffic from itself, so the instances "
                     f"cannot reach each other ({TRAIN_VPC_DOC}); add an inbound rule 'All traffic' whose source "
                     "is the group itself")
