"""launch/clarify.py against a stubbed SageMaker and S3: the Clarify image-explainability job's
request (botocore's model and sagemaker_rules), its analysis configuration (the SDK's schema),
and that the configuration reads what `serve` really answers."""
import json

import jmespath
import pytest

from sagemaker_stub import BUCKET, ROLE, arn


def test_clarify_image_explainability_job(sm, trained, tmp_path):
    sm.respond_s3("put_object", {"ETag": '"x"'})  # the analysis config, uploaded by the SDK
    sm.respond("create_processing_job", {"ProcessingJobArn": arn("processing-job", "cl")})
    assert sm.run("clarify", "--model-name", "ic-model", "--images", f"s3://{BUCKET}/images/", "--job-name", "cl",
                  "--model-json", str(trained / "model" / "model.json"), "--no-wait") == 0
    sm.done()
    job = sm.sent("CreateProcessingJob")
    assert job["ProcessingJobName"] == "cl" and job["RoleArn"] == ROLE
    assert "sagemaker-clarify-processing" in job["AppSpecification"]["ImageUri"]
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in job["ProcessingInputs"]}
    assert inputs["dataset"] == f"s3://{BUCKET}/images/"
    assert inputs["analysis_config"].startswith(f"s3://{BUCKET}/image-classifier/clarify/cl")
    [out] = job["ProcessingOutputConfig"]["Outputs"]
    assert out["S3Output"]["S3Uri"] == f"s3://{BUCKET}/image-classifier/clarify/cl"
    put = sm.sent("PutObject")
    assert put["Bucket"] == BUCKET and put["Key"].endswith("analysis_config.json")


def test_the_analysis_config_reads_serves_own_jsonlines_answer(trained):
    """The configuration the script sends, checked by the SDK's own schema, applied to a real answer
    of the handler: Clarify's JMESPath finds the probability vector, in the order of label_headers."""
    import io

    from PIL import Image
    from sagemaker import clarify
    from sagemaker.clarify import ANALYSIS_CONFIG_SCHEMA_V1_0, _AnalysisConfigGenerator

    from image_classifier.serving import inference
    from launch import clarify as script
    args = script.parse_args(["--model-name", "m", "--images", f"s3://{BUCKET}/i/", "--role", ROLE,
                              "--bucket", BUCKET, "--region", "eu-west-1"])
    classes = json.loads((trained / "model" / "model.json").read_text())["class_names"]
    data, model_config, scores, shap = script.configs(args, classes, f"s3://{BUCKET}/out")
    config = _AnalysisConfigGenerator.explainability(data, model_config, scores, shap)
    ANALYSIS_CONFIG_SCHEMA_V1_0.validate(config)
    assert config["dataset_type"] == "application/x-image"
    assert config["methods"]["shap"]["image_config"]["model_type"] == "IMAGE_CLASSIFICATION"
    predictor = config["predictor"]
    assert (predictor["content_type"], predictor["accept_type"]) == ("image/jpeg", "application/jsonlines")
    assert predictor["label_headers"] == classes and isinstance(shap, clarify.SHAPConfig)
    # What the endpoint answers Clarify: one image/jpeg, Accept application/jsonlines.
    model = inference.model_fn(str(trained / "model"))
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, "JPEG")
    batch = inference.input_fn(buf.getvalue(), predictor["content_type"], model=model)
    body, content_type = inference.output_fn(inference.predict_fn(batch, model), predictor["accept_type"], model=model)
    [line] = body.splitlines()
    found = jmespath.search(predictor["probability"], json.loads(line))
    assert content_type == "application/jsonlines" and len(found) == len(classes)
    assert found == pytest.approx(list(json.loads(line)["probabilities"].values()), abs=1e-6)
    assert abs(sum(found) - 1) < 1e-4
