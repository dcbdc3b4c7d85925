"""Deploy a trained model to a real-time endpoint (SageMaker, or --local on this machine).

    python -m launch.deploy --tuning-job NAME | --training-job NAME | --model-data s3://.../model.tar.gz
                            [--endpoint-name NAME] [--test-image dog.jpg]
    python -m launch.deploy --local --model-dir DIR | --local-job DIR | --tuning-results DIR [--port 8080]
Then invoke it with launch/invoke.sh (the AWS CLI), locally with ENDPOINT_URL=http://127.0.0.1:PORT.
--network-isolation, --subnets/--security-group-ids and --volume-kms-key apply to the model and
its endpoint (launch/security.py); serving never downloads, so isolation costs it nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from launch import local as local_args
from launch import aws, jobs, security, settings as settings_mod
from launch.predictor import image_predictor_class


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m launch.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tuning-job", help="deploy the best training job of this tuning job")
    source.add_argument("--training-job", help="deploy this training job's model")
    source.add_argument("--model-data", help="an S3 model.tar.gz")
    source.add_argument("--model-dir", help="with --local: a model folder (model.pt + model.json)")
    source.add_argument("--local-job", help="with --local: a local job folder (its model/ is deployed)")
    source.add_argument("--tuning-results", help="with --local: a local tuning results folder (its best job)")
    parser.add_argument("--endpoint-name", help="default: PREFIX-<timestamp>")
    parser.add_argument("--test-image", help="after deploying, send this image and print the answer")
    parser.add_argument("--no-wait", action="store_true", help="return once the endpoint is being created")
    local_args.add_arguments(parser, job_dir=False, endpoint=True)
    settings_mod.add_arguments(parser)
    return parser.parse_args(argv)


def model_data(session, args) -> str:
    client = session.sagemaker_client
    if args.model_data:
        return args.model_data
    job = args.training_job
    if args.tuning_job:
        tuning = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=args.tuning_job)
        if not tuning.get("BestTrainingJob"):
            raise SystemExit(f"tuning job {args.tuning_job} has no best training job (yet)")
        job = tuning["BestTrainingJob"]["TrainingJobName"]
    print(f"model of training job {job}")
    return jobs.model_artifact(session, job)


def local_model_dir(args) -> Path:
    if args.model_dir:
        return Path(args.model_dir)
    if args.local_job:
        return Path(args.local_job) / "model"
    if args.tuning_results:
        return Path((Path(args.tuning_results) / "best_job.txt").read_text().strip()) / "model"
    raise SystemExit("--local needs --model-dir, --local-job or --tuning-results")


def main(argv=None, session=None) -> int:
    args = parse_args(argv)
    settings = settings_mod.load(args)
    if args.local:
        from launch.local import endpoint
        name = args.endpoint_name or f"{settings.prefix}-local"
        return endpoint.run(name, local_model_dir(args), args.port, args.local_runner, settings.image_uri)

    from sagemaker.model import Model
    settings.require("role")
    placement = security.model_kwargs(settings)  # refused before any request
    encryption = security.deploy_kwargs(settings, settings.inference_instance_type)
    session = session or aws.session(settings)
    data = model_data(session, args)
    name = aws.check_name(args.endpoint_name, "--endpoint-name") if args.endpoint_name else aws.job_name(settings)
    image = settings.image_for(settings.inference_instance_type)
    model = Model(image_uri=image, model_data=data, role=settings.role, name=name,
                  predictor_cls=image_predictor_class(), sagemaker_session=session, **placement)
    predictor = model.deploy(initial_instance_count=1, instance_type=settings.inference_instance_type,
                             endpoint_name=name, tags=jobs.TAGS, wait=not args.no_wait, **encryption)
    print(f"endpoint: {name} ({settings.inference_instance_type}, model {data})")
    if args.test_image and predictor is not None:
        answer = predictor.predict(Path(args.test_image).read_bytes())
        print(json.dumps(answer, indent=2))
    print(f"invoke: launch/invoke.sh {name} IMAGE.jpg    delete: python -m launch.cleanup --endpoint {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
