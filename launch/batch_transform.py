"""Batch transform: classify every image under an S3 prefix with a SageMaker model; each image's
answer is written under the output prefix (IMAGE.out) as one JSON line with its full probability
vector (`scores`, in class order), the output SageMaker's built-in image classifier gives and
Clarify reads.

    python -m launch.batch_transform --model-name NAME | --model-data s3://.../model.tar.gz
                                     --input s3://bucket/images/ [--output s3://bucket/predictions/]
                                     [--max-payload-mb 6]

Each image is one request (SplitType None), so every image must fit --max-payload-mb (SageMaker's
MaxPayloadInMB, at most 100; the image's `serve` takes the same limit from it). The input is
listed first: an image over it fails the job, so the job is not started.
"""
from __future__ import annotations

import argparse
import sys

from launch import aws, jobs, settings as settings_mod


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m launch.batch_transform", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-name", help="an existing SageMaker model (deploy.py creates one per endpoint)")
    source.add_argument("--model-data", help="an S3 model.tar.gz: a model is created for the job")
    parser.add_argument("--input", required=True, help="S3 prefix of the images")
    parser.add_argument("--output", help="S3 prefix for the answers (default s3://BUCKET/PREFIX/transform/JOB)")
    parser.add_argument("--content-type", default="application/x-image")
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--max-payload-mb", type=int, default=6,
                        help="largest image, in MB (MiB), 1 to 100 (SageMaker's MaxPayloadInMB; default 6)")
    parser.add_argument("--max-concurrent-transforms", type=int,
                        help="requests in flight per instance (default: 4, fewer where 4 x the payload passes 100 MB)")
    parser.add_argument("--job-name")
    parser.add_argument("--no-wait", action="store_true")
    settings_mod.add_arguments(parser)
    return parser.parse_args(argv)


MAX_PAYLOAD_MB = 100  # MaxPayloadInMB, and MaxConcurrentTransforms x MaxPayloadInMB (API_CreateTransformJob)


def payload_limits(payload_mb: int, concurrent: int | None) -> tuple[int, int]:
    """(MaxPayloadInMB, MaxConcurrentTransforms) within SageMaker's caps, or SystemExit."""
    if not 1 <= payload_mb <= MAX_PAYLOAD_MB:
        raise SystemExit(f"--max-payload-mb {payload_mb}: SageMaker takes 1 to {MAX_PAYLOAD_MB}")
    if concurrent is None:
        concurrent = min(4, MAX_PAYLOAD_MB // payload_mb)
    if concurrent < 1 or concurrent * payload_mb > MAX_PAYLOAD_MB:
        raise SystemExit(f"--max-concurrent-transforms {concurrent} x --max-payload-mb {payload_mb} = "
                         f"{concurrent * payload_mb} MB: SageMaker caps the product at {MAX_PAYLOAD_MB} MB")
    return payload_mb, concurrent


def refuse_oversized(session, prefix: str, payload_mb: int) -> int | None:
    """Every object under the input prefix fits the payload (each is one request); their count,
    or None when the launcher may not list the prefix (the job's role may still read it)."""
    from botocore.exceptions import ClientError
    bucket, key = aws.split_uri(prefix)
    limit, count, over = payload_mb * 1024 * 1024, 0, []
    try:
        for page in session.s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            for item in page.get("Contents", []):
                count += 1
                if item["Size"] > limit:
                    over.append(f"s3://{bucket}/{item['Key']} ({item['Size'] / 1024 / 1024:.1f} MB)")
    except ClientError as e:
        print(f"note: cannot list {prefix} ({e.response['Error'].get('Code', 'error')}): image sizes not checked "
              f"against --max-payload-mb {payload_mb}; an image over it fails the job", file=sys.stderr, flush=True)
        return None
    if over:
        raise SystemExit(f"{len(over)} input file(s) exceed --max-payload-mb {payload_mb} (each image is one request "
                         f"and the job would fail on it): {', '.join(over[:3])}{' ...' if len(over) > 3 else ''}; "
                         f"raise --max-payload-mb (up to {MAX_PAYLOAD_MB}) or resize them. No job was started")
    if not count:
        raise SystemExit(f"no input under {prefix}; no job was started")
    return count


def main(argv=None, session=None) -> int:
    from sagemaker.model import Model
    from sagemaker.transformer import Transformer
    args = parse_args(argv)
    payload_mb, concurrent = payload_limits(args.max_payload_mb, args.max_concurrent_transforms)
    settings = settings_mod.load(args)
    session = session or aws.session(settings)
    images = refuse_oversized(session, args.input, payload_mb)
    name = aws.check_name(args.job_name, "--job-name") if args.job_name else aws.job_name(settings, "transform")
    model_name = args.model_name
    if args.model_data:
        settings.require("role")
        model_name = name
        image = settings.image_for(settings.transform_instance_type)
        Model(image_uri=image, model_data=args.model_data, role=settings.role, name=model_name,
              sagemaker_session=session).create(instance_type=settings.transform_instance_type, tags=jobs.TAGS)
    output = args.output or settings.s3("transform", name)
    transformer = Transformer(
        model_name=model_name, instance_count=args.instance_count, instance_type=settings.transform_instance_type,
        strategy="SingleRecord",  # one image per request
        max_payload=payload_mb, max_concurrent_transforms=concurrent, accept="application/jsonlines",
        output_path=output,
        env={"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SERVE_PROBABILITIES": "true"}, tags=jobs.TAGS,
        sagemaker_session=session)
    transformer.transform(args.input, data_type="S3Prefix", content_type=args.content_type, split_type="None",
                          job_name=name, wait=not args.no_wait, logs=False)
    print(f"transform job: {name} ({images if images is not None else 'unlisted'} inputs, each up to {payload_mb} "
          f"MB)\nanswers: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
