"""The local pipeline end to end: local tune -> best job -> local endpoint -> the AWS CLI."""
import json
import tarfile
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from conftest import ROOT
from image_classifier.image_folder import class_name
from launch_helpers import cli, launch, local_endpoint, runtime

pytestmark = pytest.mark.slow

CONFIG = """
prefix = "ic-test"
max_jobs = 3
max_parallel_jobs = 2
[hyperparameters]
backbone = "efficientnet_lite0"
image-size = 64
[search_space]
lr = { min = 0.003, max = 0.05, scaling = "Logarithmic" }
batch-size = { values = [8, 16] }
epochs = { min = 1, max = 3, type = "integer" }
"""


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_data):
    work = tmp_path_factory.mktemp("local-tune")
    (work / "config.toml").write_text(CONFIG)
    data = tiny_data["train"].parent
    result = launch("tune", "--local", "--data", str(data), "--local-dir", str(work / "jobs"),
                    "--results", str(work / "results"), cwd=work, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return work, result.stdout


def test_local_tuner_runs_trials_and_reports(tuned):
    work, out = tuned
    assert "local tuning ic-test-hpo-" in out and "3 trials, 2 at a time" in out
    assert out.count("] started: ") == 3
    assert "best training job: ic-test-hpo-" in out
    results = next((work / "results").iterdir())
    rows = (results / "analytics.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("TrainingJobName,TrainingJobStatus,FinalObjectiveValue")
    assert (results / "objective.png").stat().st_size > 10_000
    best = Path((results / "best_job.txt").read_text().strip())
    assert (best / "model" / "model.json").exists()
    # trainable=head: the trials share one feature cache; the third starts after one has filled it
    [root] = (work / "jobs").iterdir()
    # training view 0, and the evaluation view of the validation and (for the data audit) training images
    assert len(list((root / "feature-cache").glob("*.pt"))) == 3
    third = (root / f"{root.name}-003" / "job.log").read_text()
    assert "train features (augmented view 0): from" in third, third[-3000:]
    assert "valid features (evaluation transform): from" in third and "through the backbone" not in third
    assert "train features (evaluation transform): from" in third  # the audit's, from the cache too


def test_deploy_local_and_invoke_with_the_aws_cli(tuned, tiny_data):
    work, _ = tuned
    results = next((work / "results").iterdir())
    image = sorted(tiny_data["test"].rglob("*.jpg"))[0]
    labels = {class_name(p.name) for p in tiny_data["test"].iterdir()}
    with local_endpoint(work, "deploy", "--tuning-results", str(results), "--endpoint-name", "dogs") as port:
        invoke = cli(port, "dogs", image)
        assert invoke.returncode == 0, invoke.stderr
        assert json.loads(invoke.stdout)["predictions"][0]["label"] in labels
        assert '"InvokedProductionVariant": "AllTraffic"' in invoke.stderr
        assert '"ContentType": "application/json"' in invoke.stderr

        bad = cli(port, "dogs", ROOT / "README.md", CONTENT_TYPE="text/plain")
        assert bad.returncode != 0 and "ModelError" in bad.stderr and "(415)" in bad.stderr
        unknown = cli(port, "cats", image)
        assert unknown.returncode != 0 and "Endpoint cats not found" in unknown.stderr

        response = runtime(port).invoke_endpoint(EndpointName="dogs", Body=image.read_bytes(),
                                                 ContentType="image/jpeg", CustomAttributes="top_k=1")
        assert len(json.loads(response["Body"].read())["predictions"][0]["top_k"]) == 1
        with pytest.raises(ClientError, match="not a multi-model endpoint"):
            runtime(port).invoke_endpoint(EndpointName="dogs", Body=image.read_bytes(), ContentType="image/jpeg",
                                          TargetModel="dogs.tar.gz")


def test_local_multi_model_endpoint_loads_each_target_model(tuned, tiny_data, tmp_path):
    work, _ = tuned
    jobs = sorted(p.parent.parent for p in (work / "jobs").glob("*/*/model/model.json"))
    packed = tmp_path / "model.tar.gz"  # a second model as SageMaker stores it
    with tarfile.open(packed, "w:gz") as tar:
        tar.add(jobs[1] / "model", arcname=".")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((jobs[0] / "model" / "model.json").read_text())
    (broken / "model.pt").write_bytes(b"not weights")
    image = sorted(tiny_data["test"].rglob("*.jpg"))[0]
    labels = {class_name(p.name) for p in tiny_data["test"].iterdir()}
    with local_endpoint(work, "multi_model", "--endpoint-name", "zoo", "--model", f"first={jobs[0]}",
                        "--model", f"second={packed}", "--model", f"broken={broken}") as port:
        for target in ("first.tar.gz", "second.tar.gz", "first"):
            invoke = cli(port, "zoo", image, TARGET_MODEL=target)
            assert invoke.returncode == 0, invoke.stderr
            assert json.loads(invoke.stdout)["predictions"][0]["label"] in labels
        client = runtime(port)
        with pytest.raises(ClientError, match="TargetModel is required"):
            client.invoke_endpoint(EndpointName="zoo", Body=image.read_bytes(), ContentType="image/jpeg")
        with pytest.raises(ClientError, match="Failed to download model data for TargetModel third.tar.gz"):
            client.invoke_endpoint(EndpointName="zoo", Body=image.read_bytes(), ContentType="image/jpeg",
                                   TargetModel="third.tar.gz")
        with pytest.raises(ClientError, match="ModelError.*'m[0-9a-f]+' failed to load: model.pt cannot be read"):
            client.invoke_endpoint(EndpointName="zoo", Body=image.read_bytes(), ContentType="image/jpeg",
                                   TargetModel="broken.tar.gz")
        again = client.invoke_endpoint(EndpointName="zoo", Body=image.read_bytes(), ContentType="image/jpeg",
                                       TargetModel="second.tar.gz")  # the others keep working
        assert json.loads(again["Body"].read())["predictions"][0]["label"] in labels


def test_train_local_runs_the_image_train_and_reports_a_failure(tmp_path, tiny_data):
    (tmp_path / "config.toml").write_text(CONFIG)
    data = tiny_data["train"].parent
    fast = ["--hp", "epochs=1", "--hp", "batch-size=8"]
    ok = launch("train", "--local", "--data", str(data), "--local-dir", str(tmp_path / "jobs"), "--job-name", "one",
                *fast, cwd=tmp_path, timeout=600)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert f"local training job one in {tmp_path / 'jobs' / 'one'} (native)" in ok.stdout
    assert "valid_acc=" in ok.stdout and f"model: {tmp_path / 'jobs' / 'one' / 'model'}" in ok.stdout
    assert (tmp_path / "jobs" / "one" / "model" / "model.json").exists()
    # Debugger is on by default: the image's own hook saved tensors and the local rules judged them
    assert (tmp_path / "jobs" / "one" / "output" / "data" / "debug" / "index").is_dir()
    for rule in ("VanishingGradient", "ExplodingTensor", "Overfit", "Overtraining", "PoorWeightInitialization",
                 "LossNotDecreasing"):
        assert f"rule {rule}: " in ok.stdout, ok.stdout[-3000:]
    assert f"report: python -m launch.report {tmp_path / 'jobs' / 'one'}" in ok.stdout

    bad = launch("train", "--local", "--data", str(data), "--local-dir", str(tmp_path / "jobs"), "--job-name", "two",
                 "--channels", "valid", *fast, cwd=tmp_path, timeout=600)  # no train channel
    assert bad.returncode == 1
    assert "job two failed (exit 1): no 'train' channel: give one with class folders of images" in bad.stdout


def test_train_local_on_two_hosts(tmp_path, tiny_data):
    """--hosts 2: two /opt/ml trees and two `train` processes, one job; the leader keeps the model."""
    (tmp_path / "config.toml").write_text(CONFIG)
    jobs = tmp_path / "jobs"
    result = launch("train", "--local", "--hosts", "2", "--data", str(tiny_data["train"].parent), "--local-dir",
                    str(jobs), "--job-name", "pair", "--no-debugger", "--hp", "epochs=1", "--hp", "batch-size=8",
                    cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"local training job pair in {jobs / 'pair' / 'algo-1'} (the leader;" in result.stdout
    assert "(native, 2 hosts)" in result.stdout and result.stdout.count("valid_acc=") == 2  # epoch + selected
    assert (jobs / "pair" / "algo-1" / "model" / "model.json").exists()
    assert not list((jobs / "pair" / "algo-2" / "model").iterdir())
    assert "rank 1 of 2 (host algo-2" in (jobs / "pair" / "algo-2" / "job.log").read_text()

    odd = launch("train", "--local", "--hosts", "2", "--data", str(tiny_data["train"].parent), "--local-dir",
                 str(jobs), "--job-name", "odd", "--no-debugger", "--hp", "epochs=1", "--hp", "batch-size=7",
                 cwd=tmp_path, timeout=600)
    assert odd.returncode == 1
    assert "job odd failed (exit 1): batch-size 7 is the global batch" in odd.stdout
