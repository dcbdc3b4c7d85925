"""Train with the image: a SageMaker training job (generic Estimator), or --local on this machine.

    python -m launch.train [--data s3://BUCKET/PREFIX/data] [--hp epochs=5 ...] [--spot] [--no-wait]
                           [--instance-count N] [--train-instance-type ml.g5.12xlarge]
    python -m launch.train --local --data DIR [--local-runner native|docker] [--hosts N]

--network-isolation, --subnets/--security-group-ids and the KMS keys: launch/security.py; the
backbone's staged weights (python launch/backbones.py stage NAME) go in as the 'pretrained' channel.

A job on several instances (or GPUs) trains data-parallel: batch-size is the global batch.
"""
from __future__ import annotations

import argparse
import sys

from launch import local as local_args
from launch import aws, backbones, jobs, security, settings as settings_mod


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m launch.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="where train/ valid/ test/ are: an S3 prefix (default "
                        "s3://BUCKET/PREFIX/data) or, with --local, a folder")
    parser.add_argument("--channels", help="channels to give the job (default train,valid,test: those of "
                        "them that have data; each channel named here must have data)")
    parser.add_argument("--job-name", help="default: PREFIX-<timestamp>")
    parser.add_argument("--checkpoint-s3-uri", help="default: s3://BUCKET/PREFIX/checkpoints/JOB; reuse one to resume")
    parser.add_argument("--no-wait", action="store_true", help="return once the job is created")
    parser.add_argument("--hosts", type=int, default=1, help="with --local: run the job on N hosts on this "
                        "machine (N /opt/ml trees, one process or container each), as on N instances")
    parser.add_argument("--instance-count", dest="train_instance_count", help="instances for the job (the "
                        "SDK's instance_count; same as --train-instance-count): data-parallel over all their GPUs")
    local_args.add_arguments(parser)
    settings_mod.add_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None, session=None) -> int:
    args = parse_args(argv)
    settings = settings_mod.load(args)
    channels = [c for c in (args.channels or "train,valid,test").split(",") if c]
    if args.local:
        from launch.local import jobs as local_jobs
        channels = local_jobs.present(args.data, channels, explicit=bool(args.channels))
        pretrained = backbones.check_isolation(settings, local=True)
        result = local_jobs.run_training_job(settings, args.data, channels, args.local_dir, args.local_runner,
                                             job_name=args.job_name, hosts=args.hosts, pretrained=pretrained)
        return 0 if result.succeeded else 1

    pretrained = backbones.check_isolation(settings)  # before any request
    security.vpc(settings)
    for note in jobs.cost_notes(settings):
        print(f"note: {note}", file=sys.stderr, flush=True)
    session = session or aws.session(settings)
    security.check_distributed_vpc(settings, jobs.ec2_client(session), settings.train_instance_count)
    name = aws.check_name(args.job_name, "--job-name") if args.job_name else aws.job_name(settings)
    checkpoints = args.checkpoint_s3_uri or settings.s3("checkpoints", name)
    tensorboard = settings.s3("tensorboard", name)
    estimator = jobs.estimator(settings, session, checkpoint_s3_uri=checkpoints, tensorboard_s3_uri=tensorboard)
    data = jobs.inputs(settings, session, args.data, channels, explicit=bool(args.channels), pretrained=pretrained)
    estimator.fit(data, job_name=name, wait=not args.no_wait, logs="All")
    print(f"training job: {name}")
    print(f"checkpoints: {checkpoints}")
    print(f"tensorboard: {tensorboard}")
    if not args.no_wait:
        print(f"model: {estimator.model_data}")
        print_rule_statuses(session.sagemaker_client, name)
    return 0


def print_rule_statuses(client, name: str) -> None:
    """The Debugger and profiler rules' verdicts (rules may still be running when the job ends)."""
    described = client.describe_training_job(TrainingJobName=name)
    for rule, status, detail in jobs.rule_statuses(described):
        print(f"rule {rule}: {status}" + (f" ({detail})" if detail else ""))


if __name__ == "__main__":
    sys.exit(main())
