"""Delete what the launch scripts created: endpoints, their endpoint configs and models (found
by the tag created-by=image-classifier-launch and the settings' name prefix), or one endpoint.
With --local, stop the local endpoints that deploy.py --local started.

    python -m launch.cleanup [--endpoint NAME] [--dry-run]
    python -m launch.cleanup --local
"""
from __future__ import annotations

import argparse
import sys

from launch import aws, jobs, settings as settings_mod


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m launch.cleanup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", help="only this endpoint, its config and its models")
    parser.add_argument("--dry-run", action="store_true", help="print what would be deleted")
    parser.add_argument("--local", action="store_true", help="stop local endpoints instead")
    settings_mod.add_arguments(parser)
    return parser.parse_args(argv)


def ours(client, arn: str) -> bool:
    tags = client.list_tags(ResourceArn=arn).get("Tags", [])
    return any(t in tags for t in jobs.TAGS)


def listed(client, method: str, key: str, prefix: str) -> list[dict]:
    items, token = [], None
    while True:
        page = getattr(client, method)(NameContains=prefix, **({"NextToken": token} if token else {}))
        items += page[key]
        token = page.get("NextToken")
        if not token:
            return items


def main(argv=None, session=None) -> int:
    args = parse_args(argv)
    settings = settings_mod.load(args)
    if args.local:
        from launch.local import endpoint
        for entry in endpoint.running():
            print(f"stopping local endpoint {entry['name']} (pid {entry['pid']})")
            if not args.dry_run:
                endpoint.stop(entry)
        return 0
    client = (session or aws.session(settings)).sagemaker_client
    if args.endpoint:
        described = client.describe_endpoint(EndpointName=args.endpoint)
        config = client.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
        endpoints, configs = [args.endpoint], [described["EndpointConfigName"]]
        models = [v["ModelName"] for v in config["ProductionVariants"]]
    else:
        endpoints = [e["EndpointName"] for e in listed(client, "list_endpoints", "Endpoints", settings.prefix)
                     if ours(client, e["EndpointArn"])]
        configs = [c["EndpointConfigName"] for c in listed(client, "list_endpoint_configs", "EndpointConfigs",
                                                           settings.prefix) if ours(client, c["EndpointConfigArn"])]
        models = [m["ModelName"] for m in listed(client, "list_models", "Models", settings.prefix)
                  if ours(client, m["ModelArn"])]
    for kind, names, delete in (("endpoint", endpoints, lambda n: client.delete_endpoint(EndpointName=n)),
                                ("endpoint config", configs,
                                 lambda n: client.delete_endpoint_config(EndpointConfigName=n)),
                                ("model", models, lambda n: client.delete_model(ModelName=n))):
        for name in names:
            print(f"{'would delete' if args.dry_run else 'deleting'} {kind} {name}")
            if not args.dry_run:
                delete(name)
    if not (endpoints or configs or models):
        print(f"nothing to delete under prefix {settings.prefix!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
