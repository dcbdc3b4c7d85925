"""launch/batch_transform.py and launch/cleanup.py against a stubbed SageMaker client."""
import pytest

from sagemaker_stub import BUCKET, IMAGE, NOW, arn

OURS = [{"Key": "created-by", "Value": "image-classifier-launch"}]


def listed(*sizes_mb: float) -> dict:
    return {"KeyCount": len(sizes_mb), "Contents": [{"Key": f"images/{i}.jpg", "Size": int(mb * 1024 * 1024)}
                                                    for i, mb in enumerate(sizes_mb)]}


def test_batch_transform_from_model_data(sm):
    sm.respond_s3("list_objects_v2", listed(0.2, 5.9))
    sm.respond("create_model", {"ModelArn": arn("model", "bt")})
    sm.respond("create_transform_job", {"TransformJobArn": arn("transform-job", "bt")})
    assert sm.run("batch_transform", "--model-data", f"s3://{BUCKET}/m/model.tar.gz", "--input",
               f"s3://{BUCKET}/images/", "--job-name", "bt", "--no-wait") == 0
    sm.done()
    assert sm.sent("CreateModel")["PrimaryContainer"]["Image"] == IMAGE
    job = sm.sent("CreateTransformJob")
    assert job["ModelName"] == "bt" and job["BatchStrategy"] == "SingleRecord"
    source = job["TransformInput"]["DataSource"]["S3DataSource"]
    assert (source["S3DataType"], source["S3Uri"]) == ("S3Prefix", f"s3://{BUCKET}/images/")
    assert job["TransformInput"]["ContentType"] == "application/x-image"
    assert job["TransformInput"]["SplitType"] == "None"
    assert job["TransformOutput"] == {"S3OutputPath": f"s3://{BUCKET}/image-classifier/transform/bt",
                                      "Accept": "application/jsonlines"}
    assert job["Environment"]["SERVE_PROBABILITIES"] == "true"  # each line has the full vector
    assert job["MaxPayloadInMB"] == 6 and job["MaxConcurrentTransforms"] == 4


def test_batch_transform_takes_a_payload_up_to_sagemakers_caps(sm):
    sm.respond_s3("list_objects_v2", listed(0.2, 60))
    sm.respond("create_transform_job", {"TransformJobArn": arn("transform-job", "bt")})
    assert sm.run("batch_transform", "--model-name", "m", "--input", f"s3://{BUCKET}/images/", "--job-name", "bt",
                  "--max-payload-mb", "64", "--no-wait") == 0
    sm.done()
    job = sm.sent("CreateTransformJob")
    assert (job["MaxPayloadInMB"], job["MaxConcurrentTransforms"]) == (64, 1)  # 64 x 1 <= 100 MB


def test_an_image_over_the_payload_is_refused_before_the_job_starts(sm):
    sm.respond_s3("list_objects_v2", listed(0.2, 7.5, 1))
    with pytest.raises(SystemExit, match=r"1 input file\(s\) exceed --max-payload-mb 6 .*images/1.jpg \(7.5 MB\)"):
        sm.run("batch_transform", "--model-name", "m", "--input", f"s3://{BUCKET}/images/", "--no-wait")
    assert sm.operations() == ["ListObjectsV2"]


def test_an_input_the_launcher_may_not_list_is_not_checked_but_said(sm, capsys):
    sm.s3_stubber.add_client_error("list_objects_v2", "AccessDenied", http_status_code=403)
    sm.respond("create_transform_job", {"TransformJobArn": arn("transform-job", "bt")})
    assert sm.run("batch_transform", "--model-name", "m", "--input", "s3://other-bucket/images/", "--job-name", "bt",
                  "--no-wait") == 0
    assert "note: cannot list s3://other-bucket/images/ (AccessDenied): image sizes not checked" in \
        capsys.readouterr().err


@pytest.mark.parametrize("args, message", [(["--max-payload-mb", "101"], "SageMaker takes 1 to 100"),
                                           (["--max-payload-mb", "30", "--max-concurrent-transforms", "4"],
                                            "4 x --max-payload-mb 30 = 120 MB")])
def test_payloads_past_sagemakers_caps_are_refused_before_any_request(sm, args, message):
    with pytest.raises(SystemExit, match=message):
        sm.run("batch_transform", "--model-name", "m", "--input", f"s3://{BUCKET}/images/", *args)
    assert sm.operations() == []


def test_cleanup_deletes_only_tagged_resources(sm, capsys):
    sm.respond("list_endpoints", {"Endpoints": [
        {"EndpointName": "image-classifier-a", "EndpointArn": arn("endpoint", "image-classifier-a"),
         "CreationTime": NOW, "LastModifiedTime": NOW, "EndpointStatus": "InService"},
        {"EndpointName": "image-classifier-theirs", "EndpointArn": arn("endpoint", "image-classifier-theirs"),
         "CreationTime": NOW, "LastModifiedTime": NOW, "EndpointStatus": "InService"}]})
    sm.respond("list_tags", {"Tags": OURS})
    sm.respond("list_tags", {"Tags": [{"Key": "team", "Value": "other"}]})
    sm.respond("list_endpoint_configs", {"EndpointConfigs": [
        {"EndpointConfigName": "image-classifier-a", "EndpointConfigArn": arn("endpoint-config", "image-classifier-a"),
         "CreationTime": NOW}]})
    sm.respond("list_tags", {"Tags": OURS})
    sm.respond("list_models", {"Models": [
        {"ModelName": "image-classifier-a", "ModelArn": arn("model", "image-classifier-a"), "CreationTime": NOW}]})
    sm.respond("list_tags", {"Tags": OURS})
    sm.respond("delete_endpoint")
    sm.respond("delete_endpoint_config")
    sm.respond("delete_model")
    assert sm.run("cleanup") == 0
    sm.done()
    assert sm.sent("DeleteEndpoint") == {"EndpointName": "image-classifier-a"}
    assert sm.sent("ListEndpoints")["NameContains"] == "image-classifier"
    assert "image-classifier-theirs" not in capsys.readouterr().out


def test_cleanup_one_endpoint_dry_run_deletes_nothing(sm, capsys):
    sm.respond("describe_endpoint", {"EndpointName": "e", "EndpointArn": arn("endpoint", "e"),
                                     "EndpointConfigName": "e-config", "EndpointStatus": "InService",
                                     "CreationTime": NOW, "LastModifiedTime": NOW})
    sm.respond("describe_endpoint_config", {"EndpointConfigName": "e-config",
                                            "EndpointConfigArn": arn("endpoint-config", "e-config"),
                                            "CreationTime": NOW, "ProductionVariants": [
                                                {"VariantName": "AllTraffic", "ModelName": "e-model"}]})
    assert sm.run("cleanup", "--endpoint", "e", "--dry-run") == 0
    sm.done()
    assert not [op for op in sm.operations() if op.startswith("Delete")]
    out = capsys.readouterr().out
    assert "would delete endpoint e" in out and "would delete model e-model" in out
