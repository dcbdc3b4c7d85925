"""A multi-model endpoint: several trained models behind one endpoint (and one instance's cost),
each request naming its model (TargetModel). SageMaker loads a model on its first request and
unloads the least used ones when memory runs short.

    python -m launch.multi_model --model dogs=SOURCE --model cats=SOURCE [--endpoint-name NAME]
    python -m launch.multi_model --add-only --endpoint-name NAME --model birds=SOURCE
    python -m launch.multi_model --local --model dogs=DIR --model cats=DIR [--port 8080]

SOURCE is an S3 model.tar.gz (copied under the endpoint's prefix), a local model.tar.gz (uploaded),
or a training job name (its model). With --local: a model folder, a local job folder or a
model.tar.gz. Each model is stored as NAME.tar.gz under s3://BUCKET/PREFIX/multi-model/ENDPOINT/;
invoke with TARGET_MODEL=NAME.tar.gz launch/invoke.sh ENDPOINT IMAGE. --add-only copies more models
to a running endpoint's prefix; nothing else changes.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from launch import local as local_args
from launch import aws, jobs, settings as settings_mod
from launch.predictor import image_predictor_class

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m launch.multi_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=SOURCE",
                        help="a model to serve under NAME; repeatable")
    parser.add_argument("--endpoint-name", help="default: PREFIX-mme-<timestamp>")
    parser.add_argument("--add-only", action="store_true",
                        help="copy the models to an existing endpoint's prefix; create nothing")
    parser.add_argument("--test-image", help="after deploying, send this image to every model and print the answers")
    parser.add_argument("--no-wait", action="store_true", help="return once the endpoint is being created")
    local_args.add_arguments(parser, job_dir=False, endpoint=True)
    settings_mod.add_arguments(parser)
    return parser.parse_args(argv)


def parse_models(items: list[str]) -> dict[str, str]:
    models = {}
    for item in items:
        name, sep, source = item.partition("=")
        name = name.removesuffix(".tar.gz")
        if not sep or not source or not NAME.match(name):
            raise SystemExit(f"--model takes NAME=SOURCE with NAME of letters, digits, '.', '_', '-': got {item!r}")
        if name in models:
            raise SystemExit(f"model {name} is given twice")
        models[name] = source
    return models


def artifact(session, source: str) -> str:
    """An S3 URI, a local model.tar.gz, or a training job's model."""
    if source.startswith("s3://") or Path(source).is_file():
        return source
    return jobs.model_artifact(session, source)


def refuse_overwrites(session, prefix: str, models: dict) -> None:
    """Never replace a model an endpoint may already serve: SageMaker's docs say to add a changed
    model under a new name, since instances that loaded the old NAME.tar.gz keep serving it."""
    bucket, key = aws.split_uri(prefix)
    listed = session.s3_client.list_objects_v2(Bucket=bucket, Prefix=key + "/")
    present = {o["Key"].rsplit("/", 1)[-1] for o in listed.get("Contents", [])}
    taken = sorted(f"{m}.tar.gz" for m in models if f"{m}.tar.gz" in present)
    if taken:
        raise SystemExit(f"{', '.join(taken)} already in {prefix}: an endpoint may be serving it, and SageMaker "
                         "keeps serving a loaded model when its file changes. Add it under a new name "
                         "(e.g. --model dogs-v2=SOURCE); nothing was uploaded")


def local_source(source: str) -> Path:
    """A model folder, a job folder (its model/), or a model.tar.gz."""
    path = Path(source)
    return path / "model" if (path / "model" / "model.json").exists() else path


def main(argv=None, session=None) -> int:
    args = parse_args(argv)
    settings = settings_mod.load(args)
    models = parse_models(args.model)
    if args.local:
        from launch.local import endpoint
        name = args.endpoint_name or f"{settings.prefix}-mme-local"
        return endpoint.run(name, None, args.port, args.local_runner, settings.image_uri,
                            models={m: local_source(s) for m, s in models.items()})

    from sagemaker.multidatamodel import MultiDataModel
    settings.require("role")
    if settings_mod.is_gpu(settings.inference_instance_type):  # before any request
        raise SystemExit(f"{settings.inference_instance_type} is a GPU instance type: SageMaker's multi-model "
                         "endpoints run bring-your-own containers on CPU instances only (on GPU only NVIDIA Triton; "
                         f"{settings_mod.MME_GPU_DOC}); use a CPU type (inference_instance_type) or launch.deploy")
    if args.add_only and not args.endpoint_name:
        raise SystemExit("--add-only needs --endpoint-name")
    session = session or aws.session(settings)
    name = (aws.check_name(args.endpoint_name, "--endpoint-name") if args.endpoint_name
            else aws.job_name(settings, "mme"))
    prefix = settings.s3("multi-model", name) + "/"
    image = settings.image_for(settings.inference_instance_type)
    endpoint = MultiDataModel(name=name, model_data_prefix=prefix, image_uri=image,
                              role=settings.role, sagemaker_session=session, predictor_cls=image_predictor_class(),
                              env={"SAGEMAKER_MULTI_MODEL": "true"})  # the image's serve reads it
    refuse_overwrites(session, prefix, models)
    for model, source in models.items():
        print(f"model {model}: {endpoint.add_model(artifact(session, source), f'{model}.tar.gz')}", flush=True)
    if args.add_only:
        print(f"added to {prefix}; endpoint {name} loads them on their first request")
        return 0
    predictor = endpoint.deploy(initial_instance_count=1, instance_type=settings.inference_instance_type,
                                endpoint_name=name, tags=jobs.TAGS, wait=not args.no_wait)
    print(f"multi-model endpoint: {name} ({settings.inference_instance_type}, models under {prefix})")
    if args.test_image and predictor is not None:
        image = Path(args.test_image).read_bytes()
        for model in models:
            print(model, json.dumps(predictor.predict(image, target_model=f"{model}.tar.gz")))
    first = next(iter(models))
    print(f"invoke: TARGET_MODEL={first}.tar.gz launch/invoke.sh {name} IMAGE.jpg    "
          f"delete: python -m launch.cleanup --endpoint {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
