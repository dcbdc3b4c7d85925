"""launch/report.py on real `train` jobs: a healthy one, one that exploded, and the same healthy
job as a SageMaker job (DescribeTrainingJob and S3 stubbed, the files real). The report must
render in headless Chromium with every figure."""
import io
import shutil
import tarfile

import pytest
from botocore.response import StreamingBody

from browser import render
from conftest import FAST_HP, run_train
from launch.local import programs
from launch_helpers import launch
from sagemaker_stub import BUCKET, describe_training_job

pytestmark = pytest.mark.slow
RULES = ["VanishingGradient", "ExplodingTensor", "Overfit", "Overtraining", "PoorWeightInitialization",
         "LossNotDecreasing"]
FIGURES = ["loss curves", "loss and accuracy per epoch", "confusion matrix (test)",
           "per-class precision, recall and F1 (test)", "reliability diagram (test)", "utilization over time",
           "step time by phase"]


def job(tmp_path_factory, tiny_data, name, **hp):
    base = programs.make_tree(tmp_path_factory.mktemp(name) / name, tiny_data,
                           {**FAST_HP, "debug-dir": "data/debug", "debug-interval": 1, **hp})
    result = run_train(base)
    (base / "job.log").write_text(result.stdout + result.stderr)
    return base, result


@pytest.fixture(scope="module")
def healthy(tmp_path_factory, tiny_data):
    # One red box filed as a blue box in test: a confident mistake for the gallery, whatever the model learned.
    test = tmp_path_factory.mktemp("mislabelled") / "test"
    shutil.copytree(tiny_data["test"], test)
    red = sorted((test / "001.Red_box").iterdir())[0]
    red.rename(test / "003.Blue_box" / red.name)
    # and a training image copied into test, for the data audit to find
    shutil.copy(sorted((tiny_data["train"] / "002.Green_disc").iterdir())[0], test / "002.Green_disc" / "copy.jpg")
    base, result = job(tmp_path_factory, {**tiny_data, "test": test}, "healthy-job", **{"profile-steps": 2})
    assert result.returncode == 0, result.stderr[-3000:]
    return base


@pytest.fixture(scope="module")
def exploded(tmp_path_factory, tiny_data):
    base, result = job(tmp_path_factory, tiny_data, "exploded-job", optimizer="sgd", lr=1e30)
    assert result.returncode == 1
    return base


def check_rendered(page, tmp_path, figures=FIGURES):
    shown = render(page, screenshot=tmp_path / "report.png")
    assert shown["sections"][:2] == ["findings", "job"] and "profiler" in shown["sections"]
    figures_shown = [i for i in shown["images"] if not i["alt"].startswith(("mistake ", "Grad-CAM "))]
    assert [i["alt"] for i in figures_shown] == figures
    for image in figures_shown:  # decoded by the browser, and laid out on the page
        assert image["complete"] and image["width"] > 300 and image["height"] > 150 and image["shown"] > 300, image
    tiles = [i for i in shown["images"] if i["alt"].startswith(("mistake ", "Grad-CAM "))]
    assert all(t["complete"] and t["width"] == 160 and t["shown"] > 100 for t in tiles), tiles
    assert "evaluation" in shown["sections"]
    if "confusion matrix (test)" in figures:  # a job that got as far as its evaluation
        assert shown["mistakes"] >= 1 and len(tiles) == 2 * shown["mistakes"]  # a photo and its overlay each
        assert "true Blue_box, predicted Red_box" in shown["text"]  # the red box filed as blue
    assert (tmp_path / "report.png").stat().st_size > 10_000
    return shown


def test_report_of_a_local_job_renders_in_chromium(healthy, tmp_path):
    result = launch("report", str(healthy), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = healthy / "report.html"
    assert f"report: {out}" in result.stdout
    assert "healthy-job: Completed" in result.stdout and "best valid accuracy" in result.stdout
    shown = check_rendered(out, tmp_path)
    assert shown["title"] == "Training report: healthy-job"
    for rule in RULES + ["DataLoaderBottleneck", "LowGPUUtilization", "BatchSize", "CPUBottleneck", "StepOutlier"]:
        assert rule in shown["text"]
    assert "torch.profiler trace" in shown["text"]  # profile-steps=2 wrote trace.json
    # a key finding (generated shapes are near-duplicates of each other too: the copy is one of several)
    assert "data audit: duplicate images across splits (" in result.stdout and "train-test: " in result.stdout
    assert "audit" in shown["sections"] and "002.Green_disc/copy.jpg" in shown["text"]


def test_report_of_an_exploded_job_names_the_failure_and_the_rule(exploded, tmp_path):
    result = launch("report", str(exploded), "--out", str(tmp_path / "exploded.html"), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    findings = result.stdout
    assert "exploded-job: Failed" in findings
    assert "the job failed: loss became nan at epoch 1 step 3; lower lr (now 1e+30)" in findings
    assert "ExplodingTensor: step 2: CrossEntropyLoss_output_0 holds NaN" in findings
    assert "lower lr" in findings  # the recommendation
    # a job that failed in its first epoch has no epoch curves; the rest renders
    check_rendered(tmp_path / "exploded.html", tmp_path,
                   figures=["loss curves", "utilization over time", "step time by phase"])


def _body(data: bytes) -> StreamingBody:
    return StreamingBody(io.BytesIO(data), len(data))


def _serve_prefix(sm, prefix: str, files: dict[str, bytes]) -> None:
    """ListObjectsV2 of PREFIX, then one GetObject per file, as the report asks for them."""
    sm.respond_s3("list_objects_v2", {"Contents": [{"Key": f"{prefix}/{k}", "Size": len(v)} for k, v in files.items()],
                                    "KeyCount": len(files)}, {"Bucket": BUCKET, "Prefix": prefix + "/"})
    for key, data in files.items():
        sm.respond_s3("get_object", {"Body": _body(data), "ContentLength": len(data)},
                      {"Bucket": BUCKET, "Key": f"{prefix}/{key}"})


def test_report_of_a_sagemaker_job_downloads_what_it_needs(sm, healthy, tmp_path, capsys):
    name = "ic-job-7"
    described = describe_training_job(name, {"epochs": "2", "sagemaker_program": "x"})
    described["OutputDataConfig"] = {"S3OutputPath": f"s3://{BUCKET}/image-classifier/models"}
    described["DebugHookConfig"] = {"S3OutputPath": f"s3://{BUCKET}/image-classifier/debug"}
    described["DebugRuleEvaluationStatuses"] = [
        {"RuleConfigurationName": "LossNotDecreasing", "RuleEvaluationStatus": "IssuesFound",
         "StatusDetails": "RuleEvaluationConditionMet: at step 500"}]
    described["ProfilerRuleEvaluationStatuses"] = [
        {"RuleConfigurationName": "ProfilerReport", "RuleEvaluationStatus": "NoIssuesFound"}]
    sm.respond("describe_training_job", described)
    # output.tar.gz: what SageMaker uploads of /opt/ml/output/data (here without the debug folder:
    # with SageMaker's hook the tensors go to the debug-output prefix)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for path in (healthy / "output" / "data").rglob("*"):
            if path.is_file() and "debug" not in path.parts:
                tar.add(path, arcname=str(path.relative_to(healthy / "output" / "data")))
    _serve_prefix(sm, f"image-classifier/models/{name}/output", {"output.tar.gz": archive.getvalue()})
    trial = healthy / "output" / "data" / "debug"
    _serve_prefix(sm, f"image-classifier/debug/{name}/debug-output",
                  {str(p.relative_to(trial)): p.read_bytes() for p in sorted(trial.rglob("*")) if p.is_file()})
    _serve_prefix(sm, f"image-classifier/models/{name}/rule-output",
                  {"ProfilerReport-1/profiler-output/profiler-report.html": b"<html>SageMaker's own</html>"})

    assert sm.run("report", name, "--downloads", str(tmp_path / "dl")) == 0
    sm.done()
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'dl' / 'report.html'}" in out
    assert f"{name}: Completed" in out
    assert "SageMaker's LossNotDecreasing: IssuesFound (RuleEvaluationConditionMet: at step 500)" in out
    shown = check_rendered(tmp_path / "dl" / "report.html", tmp_path)
    assert "SageMaker's rule jobs" in shown["text"] and "ProfilerReport" in shown["text"]
    assert (tmp_path / "dl" / "rule-output" / "ProfilerReport-1" / "profiler-output" / "profiler-report.html").exists()
    assert "sagemaker_program" not in shown["text"]  # the SDK's own hyperparameters are not ours


def test_the_epoch_curves_show_the_average_of_the_weights_where_it_was_validated():
    from PIL import Image
    from launch import report_plots
    rows = [{"epoch": e, "train_loss": 1.0 / e, "valid_loss": 1.2 / e, "train_acc": 0.5 + e / 10,
             "valid_acc": 0.4 + e / 10} for e in (1, 2, 3)]
    plain = report_plots.epoch_curves(rows)
    averaged = report_plots.epoch_curves([{**r, "ema_valid_loss": 1.1 / r["epoch"],
                                           "ema_valid_acc": 0.45 + r["epoch"] / 10} for r in rows])
    assert plain[:8] == averaged[:8] == b"\x89PNG\r\n\x1a\n" and plain != averaged
    assert Image.open(io.BytesIO(plain)).size == Image.open(io.BytesIO(averaged)).size
