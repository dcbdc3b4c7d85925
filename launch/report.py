"""One HTML report for a training job: loss curves, Debugger rule results with recommendations,
and a profiler summary with verdicts. Prints the key findings and where the report is.

    python -m launch.report local-jobs/NAME     # a local job's folder (its /opt/ml tree)
    python -m launch.report NAME                # a SageMaker training job: first downloads its
                                                # Debugger output, output.tar.gz and ProfilerReport

The rules are the local ones (launch/debugger_rules.py) over the job's smdebug tensors, which a
local job saves with the `debug-dir` hyperparameter and a cloud job with SageMaker Debugger. For a
cloud job the report also lists SageMaker's own rule statuses.
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import html
import json
import sys
import tarfile
from pathlib import Path

from launch import aws, jobs, profile_summary, settings as settings_mod

STATUS_CLASS = {"IssuesFound": "issue", "NoIssuesFound": "ok", "NotEvaluated": "none", "Error": "issue"}


@dataclasses.dataclass
class JobFiles:
    """What the report reads, wherever the job ran."""
    name: str
    status: str
    source: str  # where it came from, for the reader
    hyperparameters: dict
    failure: str | None = None
    debug: Path | None = None  # the smdebug trial
    profile: Path | None = None  # steps.jsonl, system.jsonl (trace.json)
    metrics: dict | None = None
    evaluation: Path | None = None  # output/data/evaluation: the gallery's pictures
    audit: Path | None = None  # output/data/audit.tsv
    sagemaker_rules: list = dataclasses.field(default_factory=list)  # (rule, status, detail)
    links: list = dataclasses.field(default_factory=list)  # (label, path or URI)


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _from_output_data(files: JobFiles, data: Path) -> JobFiles:
    """Fill in what the job left in /opt/ml/output/data (output.tar.gz in SageMaker)."""
    files.profile = files.profile or _existing(data / "profile")
    files.metrics = files.metrics or _read_json(data / "metrics.json")
    files.evaluation = files.evaluation or _existing(data / "evaluation")
    files.audit = files.audit or _existing(data / "audit.tsv")
    debug_dir = files.hyperparameters.get("debug-dir", "")
    if not files.debug and debug_dir.startswith("data/"):  # the image's own hook wrote into output/data
        files.debug = _existing(data / debug_dir[len("data/"):])
    if files.profile and (files.profile / "trace.json").exists():
        files.links.append(("torch.profiler trace (chrome://tracing, ui.perfetto.dev)",
                            str(files.profile / "trace.json")))
    return files


def local_job(folder: Path) -> JobFiles:
    folder = Path(folder).resolve()
    hp = _read_json(folder / "input" / "config" / "hyperparameters.json") or {}
    failure = (folder / "output" / "failure").read_text().strip() if (folder / "output" / "failure").exists() else None
    status = "Failed" if failure else "Completed" if (folder / "model" / "model.json").exists() else "Incomplete"
    files = JobFiles(folder.name, status, f"local job folder {folder}", hp, failure)
    debug_dir = hp.get("debug-dir", "")
    if debug_dir and not debug_dir.startswith("data/"):
        files.debug = _existing(Path(debug_dir) if Path(debug_dir).is_absolute() else folder / "output" / debug_dir)
    if (folder / "job.log").exists():
        files.links.append(("job log", str(folder / "job.log")))
    return _from_output_data(files, folder / "output" / "data")


def _download(s3, uri: str, dest: Path) -> int:
    """Every object under the S3 prefix URI into DEST (same relative paths); how many."""
    bucket, prefix = aws.split_uri(uri)
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            target = dest / obj["Key"][len(prefix) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
            count += 1
    return count


def cloud_job(session, name: str, downloads: Path) -> JobFiles:
    described = session.sagemaker_client.describe_training_job(TrainingJobName=name)
    s3 = session.s3_client
    hp = {k: v for k, v in described.get("HyperParameters", {}).items() if not k.startswith(("sagemaker_", "_"))}
    files = JobFiles(name, described["TrainingJobStatus"], f"SageMaker training job {name} ({downloads})", hp,
                     described.get("FailureReason"), sagemaker_rules=jobs.rule_statuses(described))
    job_prefix = f"{described['OutputDataConfig']['S3OutputPath'].rstrip('/')}/{name}"
    output_data = downloads / "output-data"
    if _download(s3, f"{job_prefix}/output", downloads / "output"):
        archive = downloads / "output" / "output.tar.gz"
        if archive.exists():
            with tarfile.open(archive) as tar:
                tar.extractall(output_data, filter="data")
    hook = described.get("DebugHookConfig")
    if hook and _download(s3, f"{hook['S3OutputPath'].rstrip('/')}/{name}/debug-output", downloads / "debug-output"):
        files.debug = downloads / "debug-output"
    if _download(s3, f"{job_prefix}/rule-output", downloads / "rule-output"):
        for report in sorted((downloads / "rule-output").rglob("profiler-report.html")):
            files.links.append(("SageMaker ProfilerReport", str(report)))
    return _from_output_data(files, output_data)


# --- the report --------------------------------------------------------------------------------
def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: list[str], rows: list[list[str]], raw: tuple = ()) -> str:
    """A table; cells are escaped except the columns named in raw (already HTML)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if h in raw else html.escape(str(c))}</td>" for h, c in zip(header, row))
                   + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _badge(status: str) -> str:
    return f'<span class="badge {STATUS_CLASS.get(status, "none")}">{html.escape(status)}</span>'


def _params(parameters: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in parameters.items() if v is not None)


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def findings(files: JobFiles, rules: list, verdicts: list) -> list[str]:
    found = []
    if files.failure:
        found.append(f"the job failed: {files.failure}")
    m = files.metrics or {}
    if m.get("valid_accuracy") is not None:
        test = (m.get("evaluation") or {}).get("test")
        found.append(f"best valid accuracy {m['valid_accuracy']:.4f} (epoch {m.get('best_epoch')} of "
                     f"{m.get('epochs_run')})" + (
                         f"; test accuracy {test['top1_accuracy']:.4f} (95% interval "
                         f"{test['top1_accuracy_ci95'][0]:.4f} to {test['top1_accuracy_ci95'][1]:.4f}, "
                         f"{test['images']} images), top-5 "
                         f"{test['top5_accuracy']:.4f}, calibration error {test['expected_calibration_error']:.3f}"
                         if test else f"; test accuracy {m['test_accuracy']:.4f}" if m.get("test_accuracy") is not None
                         else ""))
    across = {k: v for k, v in ((m.get("audit") or {}).get("duplicate_pairs_by_splits") or {}).items()
              if k.split("-")[0] != k.split("-")[1]}
    if across:
        found.append("data audit: duplicate images across splits (" + ", ".join(f"{k}: {v}" for k, v in across.items())
                     + "): held-out figures are inflated by them; see the audit section")
    for r in rules:
        if r.status == "IssuesFound":
            found.append(f"{r.rule}: {r.detail} ({r.violations} of {r.datapoints} checks). {r.recommendation}")
    for rule, status, detail in files.sagemaker_rules:
        if status == "IssuesFound":
            found.append(f"SageMaker's {rule}: {status}" + (f" ({detail})" if detail else ""))
    for v in verdicts:
        if v.status == "IssuesFound":
            found.append(f"{v.rule}: {v.detail}. {v.recommendation}")
    if rules and not any(r.status == "IssuesFound" for r in rules):
        quiet = sum(r.status == "NoIssuesFound" for r in rules)
        found.append(f"Debugger rules: no issues ({quiet} of {len(rules)} rules had data to check)")
    if not files.debug:
        found.append("no Debugger tensors: set the debug-dir hyperparameter (or run with Debugger on) for loss "
                     "curves and rules")
    return found


def _jpeg(path: Path | None, alt: str) -> str:
    if path is None or not path.exists():
        return f'<span class="meta">({html.escape(alt)}: no picture)</span>'
    return (f'<img class="tile" src="data:image/jpeg;base64,{base64.b64encode(path.read_bytes()).decode()}" '
            f'alt="{html.escape(alt)}">')


def evaluation_section(files: JobFiles) -> str:
    """The test channel's evaluation (else valid's): headline figures, the confusion matrix, per-class
    bars, the reliability diagram and the most confident mistakes with their Grad-CAM overlays."""
    from launch import report_plots
    found = (files.metrics or {}).get("evaluation") or {}
    name = "test" if "test" in found else "valid" if "valid" in found else None
    if name is None:
        return '<section id="evaluation"><h2>Evaluation</h2><p>No evaluation in metrics.json.</p></section>'
    e = found[name]
    low, high = e["top1_accuracy_ci95"]
    rows = [[channel, str(v["images"]), f"{v['top1_accuracy']:.4f}",
             f"{v['top1_accuracy_ci95'][0]:.4f} to {v['top1_accuracy_ci95'][1]:.4f}",
             f"{v['top5_accuracy']:.4f}" + ("" if v["top_k"] == 5 else f" (top-{v['top_k']})"), f"{v['macro_f1']:.4f}",
             f"{v['expected_calibration_error']:.4f}"] for channel, v in found.items()]
    tiles = []
    for m in e["confident_mistakes"]:
        where = files.evaluation
        tiles.append('<figure class="mistake">'
                     + _jpeg(where / m["thumbnail"] if where and m.get("thumbnail") else None, f"mistake {m['file']}")
                     + _jpeg(where / m["overlay"] if where and m.get("overlay") else None, f"Grad-CAM {m['file']}")
                     + f"<figcaption>{html.escape(m['file'])}<br>true <b>{html.escape(m['true'])}</b>, predicted "
                     f"<b>{html.escape(m['predicted'])}</b> ({m['probability']:.2f})</figcaption></figure>")
    return (f'<section id="evaluation"><h2>Evaluation</h2><p>The saved model on every image of each held-out '
            f"channel. {name}: top-1 accuracy {e['top1_accuracy']:.4f}, 95% interval {low:.4f} to {high:.4f} "
            f"(Wilson) over {e['images']} images.</p>"
            + _table(["channel", "images", "top-1", "top-1 95% interval", "top-5", "macro F1", "calibration error"],
                     rows)
            + _img(report_plots.confusion_matrix(e), f"confusion matrix ({name})")
            + _img(report_plots.per_class(e), f"per-class precision, recall and F1 ({name})")
            + _img(report_plots.reliability(e), f"reliability diagram ({name})")
            + f"<h3>Most confident mistakes ({name})</h3><p>Each photo as the model saw it, and where it looked "
            "for the class it chose (Grad-CAM, red).</p>"
            + ('<div class="gallery">' + "".join(tiles) + "</div>" if tiles else "<p>None.</p>") + "</section>")


def audit_section(files: JobFiles, shown: int = 50) -> str:
    """The data audit `train` ran before training (image_classifier/training/audit.py) and its findings."""
    import csv
    found = (files.metrics or {}).get("audit")
    if not found:
        return '<section id="audit"><h2>Data audit</h2><p>No audit in metrics.json (audit=off).</p></section>'
    near = "not checked" if found["near_duplicates"] is None else found["near_duplicates"]
    summary = [["exact duplicate pairs", found["exact_duplicates"]], ["near-duplicate pairs", near],
               ["duplicate pairs by splits", ", ".join(f"{k}: {v}" for k, v in
                                                      found["duplicate_pairs_by_splits"].items()) or "none"],
               ["classes with few training images", found["few_image_classes"]],
               ["extreme class imbalance", "yes" if found["imbalanced"] else "no"],
               ["images smaller than the crop", found["too_small_images"]]]
    rows = []
    if files.audit:
        with open(files.audit, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))[1:]
    listing = (_table(["check", "split", "file", "other split", "other file", "detail"], rows[:shown])
               + (f"<p>... and {len(rows) - shown} more in audit.tsv.</p>" if len(rows) > shown else "")
               if rows else "<p>Nothing to list.</p>")
    return ('<section id="audit"><h2>Data audit</h2><p>Checked before training; duplicates across splits '
            "inflate held-out figures.</p>" + _table(["check", "found"], [[k, str(v)] for k, v in summary])
            + listing + "</section>")


def render(files: JobFiles, found: list[str], rules: list, losses: dict, verdicts: list, profile) -> str:
    from launch import report_plots
    parts = []
    parts.append('<section id="findings"><h2>Key findings</h2><ul>'
                 + "".join(f"<li>{html.escape(f)}</li>" for f in found) + "</ul></section>")

    m = files.metrics or {}
    summary = [["status", files.status], ["failure reason", files.failure or "none"]]
    summary += [[k.replace("_", " "), _fmt(m[k])] for k in ("best_epoch", "epochs_run", "valid_loss", "valid_accuracy",
                                                             "test_loss", "test_accuracy", "undecodable_images",
                                                             "skipped_files") if m.get(k) is not None]
    parts.append('<section id="job"><h2>Job</h2>' + _table(["", "value"], summary)
                 + "<details><summary>Hyperparameters</summary>"
                 + _table(["name", "value"], [[k, v] for k, v in sorted(files.hyperparameters.items())])
                 + "</details></section>")

    curves = []
    if losses:
        marks = {r.rule: r.first_step for r in rules if r.status == "IssuesFound" and r.first_step is not None}
        curves.append(_img(report_plots.loss_curves(losses, marks), "loss curves"))
    if m.get("history"):
        curves.append(_img(report_plots.epoch_curves(m["history"]), "loss and accuracy per epoch"))
    parts.append('<section id="curves"><h2>Loss curves</h2>'
                 + ("".join(curves) or "<p>No Debugger tensors and no metrics.json.</p>") + "</section>")

    parts.append(evaluation_section(files))
    parts.append(audit_section(files))

    rule_rows = [[r.rule, _badge(r.status), f"{r.violations} / {r.datapoints}", r.detail,
                  r.recommendation if r.status == "IssuesFound" else "", _params(r.parameters)] for r in rules]
    rules_html = (_table(["rule", "status", "violations / checks", "finding", "recommendation", "parameters"],
                         rule_rows, raw=("status",)) if rules else
                  "<p>No Debugger tensors: the rules had nothing to read.</p>")
    if files.sagemaker_rules:
        rules_html += ("<h3>SageMaker's rule jobs</h3>"
                       + _table(["rule", "status", "details"], [[r, _badge(s), d] for r, s, d in files.sagemaker_rules],
                                raw=("status",)))
    parts.append('<section id="rules"><h2>Debugger rules</h2><p>SageMaker\'s built-in rules, run here over the '
                 "job's tensors with SageMaker's default parameters (launch/debugger_rules.py).</p>"
                 + rules_html + "</section>")

    if profile:
        verdict_rows = [[v.rule, _badge(v.status), v.detail, v.recommendation if v.status == "IssuesFound" else "",
                         _params(v.parameters)] for v in verdicts]
        totals = profile.totals()
        total = sum(totals.values()) or 1.0
        seconds = profile.step_seconds()
        timing = [[p.replace("_", " "), f"{s:.1f} s", f"{100 * s / total:.0f}%"] for p, s in totals.items()]
        timing.append(["steps", str(len(seconds)), f"median {float(sorted(seconds)[len(seconds) // 2]):.3f} s"
                       if len(seconds) else ""])
        use = profile_summary.utilization(profile)
        figures = []
        if profile.system:
            figures.append(_img(report_plots.utilization(profile), "utilization over time"))
        if profile.steps and total > 0:
            figures.append(_img(report_plots.step_breakdown(profile), "step time by phase"))
        parts.append('<section id="profiler"><h2>Profiler</h2>'
                     + _table(["check", "status", "finding", "recommendation", "parameters"], verdict_rows,
                              raw=("status",))
                     + "".join(figures)
                     + _table(["phase", "time", "share"], timing)
                     + _table(["utilization during training", "%"], [[k.replace("_", " "), f"{v:.0f}"]
                                                                     for k, v in use.items()])
                     + "</section>")
    else:
        parts.append('<section id="profiler"><h2>Profiler</h2><p>No profile (output/data/profile).</p></section>')
    if files.links:
        parts.append('<section id="files"><h2>Files</h2><ul>' + "".join(
            f'<li>{html.escape(label)}: <a href="{html.escape(Path(p).as_uri() if p.startswith("/") else p)}">'
            f"{html.escape(p)}</a></li>" for label, p in files.links) + "</ul></section>")
    generated = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Training report: {html.escape(files.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; display: block; margin: 0.8em 0; }}
.gallery {{ display: flex; flex-wrap: wrap; gap: 0.8em; }}
figure.mistake {{ margin: 0; width: 330px; font-size: 0.8em; }}
img.tile {{ display: inline-block; width: 160px; margin: 0 4px 0 0; }}
.badge {{ padding: 0.1em 0.5em; border-radius: 0.8em; font-size: 0.85em; white-space: nowrap; }}
.issue {{ background: #fdd; color: #900; }} .ok {{ background: #dfd; color: #060; }}
.none {{ background: #eee; color: #555; }}
.meta {{ color: #666; }}
</style></head><body>
<h1>Training report: {html.escape(files.name)}</h1>
<p class="meta">{html.escape(files.source)}; {html.escape(files.status)}; written {generated}</p>
{"".join(parts)}
</body></html>
"""


def write(files: JobFiles, out: Path) -> tuple[Path, list[str]]:
    """The report for FILES at OUT, and its key findings."""
    from launch import debugger_rules
    rules, losses = [], {}
    if files.debug:
        trial = debugger_rules.trial(files.debug)
        rules, losses = debugger_rules.evaluate(trial), debugger_rules.losses(trial)
    profile = profile_summary.Profile.load(files.profile) if files.profile else None
    verdicts = profile_summary.verdicts(profile) if profile else []
    out.parent.mkdir(parents=True, exist_ok=True)
    found = findings(files, rules, verdicts)
    out.write_text(render(files, found, rules, losses, verdicts, profile))
    return out, found


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m launch.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", help="a local job folder, or a SageMaker training job name")
    parser.add_argument("--out", help="the HTML file (default: JOB_FOLDER/report.html; for a SageMaker job "
                        "reports/NAME/report.html)")
    parser.add_argument("--downloads", help="for a SageMaker job: where its files go (default reports/NAME)")
    settings_mod.add_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None, session=None) -> int:
    args = parse_args(argv)
    if Path(args.job).is_dir():
        files = local_job(Path(args.job))
        out = Path(args.out or Path(args.job) / "report.html")
    else:
        settings = settings_mod.load(args)
        downloads = Path(args.downloads or Path("reports") / args.job)
        print(f"downloading {args.job}'s Debugger output, output.tar.gz and rule output to {downloads} ...", flush=True)
        files = cloud_job(session or aws.session(settings), args.job, downloads)
        out = Path(args.out or downloads / "report.html")
    out, found = write(files, out)
    print(f"{files.name}: {files.status}")
    for line in found:
        print(f"  - {line}")
    print(f"report: {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
