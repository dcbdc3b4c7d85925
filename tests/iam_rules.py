"""IAM's rule botocore does not check: a grant applies to an action only on a resource the action
supports (the Service Authorization Reference's resource types, vendored in
data/iam_resource_types.json)."""
import functools
import json
import re
from pathlib import Path

# Which resources each action can be granted on. A List action takes no resource-level permission:
# granted on an ARN pattern, it is denied, however the pattern reads.
RESOURCE_TYPES = json.loads((Path(__file__).parent / "data" / "iam_resource_types.json").read_text())["actions"]
ANY_SEGMENT = "\0"  # an ARN format's ${Variable}: any run of characters without ':' or '/'
ANY_PATH = "\1"  # a variable that may hold '/' (an object key, a path, a log group or stream)
PATH_VARIABLES = {"ObjectName", "RoleNameWithPath", "LogGroupName", "LogStreamName", "ParameterNameWithoutLeadingSlash"}


def globs_meet(policy: str, arn_format: str) -> bool:
    """Whether some ARN matches both the policy's Resource ('*': any run of characters) and the
    action's ARN format (ANY_SEGMENT where it names a variable)."""
    @functools.cache
    def meet(i: int, j: int) -> bool:
        if i == len(policy) and j == len(arn_format):
            return True
        if i < len(policy) and policy[i] == "*":
            return meet(i + 1, j) or (j < len(arn_format) and meet(i, j + 1))
        if j < len(arn_format) and arn_format[j] in (ANY_SEGMENT, ANY_PATH):
            stops = ":" if arn_format[j] == ANY_PATH else ":/"
            return meet(i, j + 1) or (i < len(policy) and policy[i] not in stops and meet(i + 1, j))
        return i < len(policy) and j < len(arn_format) and policy[i] == arn_format[j] and meet(i + 1, j + 1)
    return meet(0, 0)


def granted_on(action: str, resource: str) -> bool:
    if resource == "*":
        return True
    return any(globs_meet(resource, re.sub(r"\$\{([^}]*)\}", _variable, arn)) for arn in RESOURCE_TYPES[action])


def _variable(found: re.Match) -> str:
    return ANY_PATH if found[1] in PATH_VARIABLES else ANY_SEGMENT


def effective_actions(policy: dict) -> set[str]:
    """The actions a policy's Allow statements grant on at least one resource they support."""
    found = set()
    for statement in policy["Statement"]:
        if statement["Effect"] != "Allow":
            continue
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for action in [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]:
            if action not in RESOURCE_TYPES or any(granted_on(action, r) for r in resources):
                found.add(action)
    return found
