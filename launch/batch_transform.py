"""Batch transform: classify every image under an S3 prefix with a SageMaker model; each image's
answer is written under the output prefix (IMAGE.out) as one JSON line with its full probability
vector (`scores`, in class order), the output SageMaker's built-in image classifier gives and
Clarify reads.

    python -m launch.batch_transform --model-name NAME | --model-data s3://.../model.tar.gz
                                     --input s3://bucket/images/ [--output s3://bucket/predictions/]
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
    parser.add_argument("--job-name")
    parser.add_argument("--no-wait", action="store_true")
    settings_mod.add_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None, session=None) -> int:
    from sagemaker.model import Model
    from sagemaker.transformer import Transformer
    args = parse_args(argv)
    settings = settings_mod.load(args)
    session = session or aws.session(settings)
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
        max_payload=6, max_concurrent_transforms=4, accept="application/jsonlines", output_path=output,
        env={"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SERVE_PROBABILITIES": "true"}, tags=jobs.TAGS,
        sagemaker_session=session)
    transformer.transform(args.input, data_type="S3Prefix", content_type=args.content_type, split_type="None",
                          job_name=name, wait=not args.no_wait, logs=False)
    print(f"transform job: {name}\nanswers: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
