"""The IAM policies README hands out name only actions that exist in the real service models
(botocore's), so a typo cannot reach a user's account. That the launcher policy covers every
request the scripts send is checked by every Stubber test (sagemaker_stub.StubbedSageMaker.done)."""
import json
from pathlib import Path

import botocore.session
import pytest

from iam_rules import RESOURCE_TYPES, granted_on

IAM = Path(__file__).resolve().parents[1] / "launch" / "iam"
# IAM prefix -> botocore services whose operations it authorizes
SERVICES = {"sagemaker": ["sagemaker", "sagemaker-runtime"], "s3": ["s3"], "ecr": ["ecr"], "logs": ["logs"],
            "cloudwatch": ["cloudwatch"], "sts": ["sts"], "iam": ["iam"], "ec2": ["ec2"], "kms": ["kms"]}
PERMISSION_ONLY = {"s3:ListBucket", "iam:PassRole"}  # actions that authorize, not API operations


def actions(policy):
    for statement in policy["Statement"]:
        action = statement["Action"]
        yield from [action] if isinstance(action, str) else action


@pytest.mark.parametrize("name", sorted(p.name for p in IAM.glob("*.json")))
def test_every_action_is_a_real_operation(name):
    policy = json.loads((IAM / name).read_text())
    assert policy["Version"] == "2012-10-17"
    session = botocore.session.get_session()
    models = {}
    for action in actions(policy):
        prefix, _, operation = action.partition(":")
        if action in PERMISSION_ONLY or action == "sts:AssumeRole":
            continue
        known = set()
        for service in SERVICES[prefix]:
            if service not in models:
                models[service] = set(session.get_service_model(service).operation_names)
            known |= models[service]
        assert operation in known, f"{name}: {action} is not an operation of {SERVICES[prefix]}"



@pytest.mark.parametrize("name", sorted(p.name for p in IAM.glob("*.json") if "trust" not in p.name))
def test_every_action_is_granted_on_a_resource_it_supports(name):
    policy = json.loads((IAM / name).read_text())
    denied = []
    for statement in policy["Statement"]:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for action in [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]:
            assert action in RESOURCE_TYPES, f"{action}: not in tests/data/iam_resource_types.json; regenerate it"
            if not any(granted_on(action, r) for r in resources):
                denied.append(f"{action} on {resources} (supports {RESOURCE_TYPES[action] or ['*']})")
    assert not denied, f"{name}: these grants match no resource the action supports:\n  " + "\n  ".join(denied)


def test_the_resource_check_can_fail():
    assert not granted_on("sagemaker:ListModels", "arn:aws:sagemaker:REGION:ACCOUNT:*")
    assert granted_on("sagemaker:CreateModel", "arn:aws:sagemaker:REGION:ACCOUNT:*")
    assert not granted_on("sagemaker:CreateModel", "arn:aws:sagemaker:REGION:ACCOUNT:endpoint/*")
    assert granted_on("s3:GetObject", "arn:aws:s3:::BUCKET/PREFIX/*")
    assert not granted_on("s3:ListBucket", "arn:aws:s3:::BUCKET/PREFIX/*")  # a bucket's name holds no '/'
    assert granted_on("s3:ListBucket", "arn:aws:s3:::BUCKET")
