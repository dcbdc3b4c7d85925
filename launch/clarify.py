"""SageMaker Clarify image explainability for a model made by this image: which parts of each photo
(superpixels, SHAP values) drive its prediction, computed by a Clarify processing job against a
shadow endpoint of the model.

    python -m launch.clarify --model-name NAME --images s3://bucket/images/ [--output s3://...]
                             [--model-json model.json] [--segments 20] [--samples 100]

It works with the endpoint's own output: Clarify sends each (masked) image as image/jpeg and asks
for application/jsonlines, which `serve` answers with one line per image whose `scores` (the
JMESPath Clarify reads) is the full probability vector in class order; `--model-json` names the
classes (label_headers) from the model's model.json. The analysis configuration is validated by
the SDK's own schema before anything is sent.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from launch import aws, jobs, settings as settings_mod

SCORES = "scores"  # where each answer line holds the probability vector (serving/inference.py)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m launch.clarify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-name", required=True,
                        help="a SageMaker model of this image (launch.deploy and batch_transform create them)")
    parser.add_argument("--images", required=True, help="S3 prefix of the JPEG images to explain")
    parser.add_argument("--output", help="S3 prefix for Clarify's report (default s3://BUCKET/PREFIX/clarify/JOB)")
    parser.add_argument("--model-json", type=Path, help="the model's model.json: class names for the report")
    parser.add_argument("--segments", type=int, default=20, help="superpixels per image (ImageConfig.num_segments)")
    parser.add_argument("--samples", type=int, default=100, help="masked images per photo (SHAPConfig.num_samples)")
    parser.add_argument("--endpoint-instance-type", default="ml.m5.xlarge", help="the shadow endpoint's instances")
    parser.add_argument("--processing-instance-type", default="ml.m5.xlarge", help="the Clarify job's instance")
    parser.add_argument("--job-name")
    parser.add_argument("--no-wait", action="store_true")
    settings_mod.add_arguments(parser)
    return parser.parse_args(argv)


def configs(args, classes: list[str] | None, output: str):
    """The SDK's Clarify configuration objects for an image classifier that answers JSON Lines."""
    from sagemaker import clarify
    data = clarify.DataConfig(s3_data_input_path=args.images, s3_output_path=output,
                              dataset_type="application/x-image")
    model = clarify.ModelConfig(model_name=args.model_name, instance_type=args.endpoint_instance_type,
                                instance_count=1, content_type="image/jpeg", accept_type="application/jsonlines")
    scores = clarify.ModelPredictedLabelConfig(probability=SCORES, label_headers=classes)
    shap = clarify.SHAPConfig(num_samples=args.samples, image_config=clarify.ImageConfig(
        model_type="IMAGE_CLASSIFICATION", num_segments=args.segments, segment_compactness=5))
    return data, model, scores, shap


def main(argv=None, session=None) -> int:
    from sagemaker import clarify
    args = parse_args(argv)
    settings = settings_mod.load(args)
    settings.require("role")
    session = session or aws.session(settings)
    name = aws.check_name(args.job_name, "--job-name") if args.job_name else aws.job_name(settings, "clarify")
    classes = json.loads(args.model_json.read_text())["class_names"] if args.model_json else None
    output = args.output or settings.s3("clarify", name)
    processor = clarify.SageMakerClarifyProcessor(role=settings.role, instance_count=1,
                                                  instance_type=args.processing_instance_type,
                                                  sagemaker_session=session, tags=jobs.TAGS)
    data, model, scores, shap = configs(args, classes, output)
    processor.run_explainability(data, model, shap, model_scores=scores, job_name=name, wait=not args.no_wait,
                                 logs=False)
    print(f"clarify job: {name}\nreport: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
