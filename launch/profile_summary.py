"""What a job's profile says (the image's output/data/profile/: steps.jsonl, system.jsonl): where
step time went, how busy the machine was, and verdicts like those of SageMaker's ProfilerReport,
with its documented default thresholds.

SageMaker's profiler rules read its own system and framework metrics, which exist only in its
jobs; these read ours, so they run on a local job and on a cloud job's output.tar.gz alike.
SageMaker's `patience` (data points skipped before a rule starts) is replaced by skipping the
samples taken before the first training step ended: start-up, not training.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

ISSUES, NO_ISSUES, NOT_EVALUATED = "IssuesFound", "NoIssuesFound", "NotEvaluated"
PHASES = ("data_wait", "forward_backward", "optimizer")


@dataclasses.dataclass
class Verdict:
    rule: str
    status: str
    detail: str
    recommendation: str
    parameters: dict


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a job killed mid-write leaves half a line
            pass
    return rows


@dataclasses.dataclass
class Profile:
    steps: list[dict]
    system: list[dict]

    @classmethod
    def load(cls, directory: Path) -> "Profile":
        return cls(_read_jsonl(Path(directory) / "steps.jsonl"), _read_jsonl(Path(directory) / "system.jsonl"))

    def __bool__(self) -> bool:
        return bool(self.steps or self.system)

    def phase(self, name: str) -> np.ndarray:
        return np.array([s.get(name, 0.0) for s in self.steps], dtype=float)

    def step_seconds(self) -> np.ndarray:
        return sum(self.phase(p) for p in PHASES) if self.steps else np.array([])

    def totals(self) -> dict[str, float]:
        return {p: float(self.phase(p).sum()) for p in PHASES}

    def training_samples(self) -> list[dict]:
        """System samples from the end of the first training step on."""
        start = self.steps[0].get("time", 0.0) if self.steps else 0.0
        return [s for s in self.system if s.get("time", 0.0) >= start]

    @staticmethod
    def cpu_mean(sample: dict) -> float:
        cores = sample.get("cpu_percent") or [0.0]
        return float(np.mean(cores))


def _percentile(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def step_outliers(profile: Profile, stddev: float = 5, n_outliers: int = 10) -> Verdict:
    params = {"stddev": stddev, "n_outliers": n_outliers}
    seconds = profile.step_seconds()
    if len(seconds) < 3:
        return Verdict("StepOutlier", NOT_EVALUATED, "fewer than 3 timed steps", "", params)
    limit = seconds.mean() + stddev * seconds.std()
    slow = np.flatnonzero(seconds > limit)
    slowest = profile.steps[int(seconds.argmax())]["step"]
    detail = (f"{len(slow)} step(s) slower than mean + {stddev:g} std ({limit:.3f} s); median step "
              f"{np.median(seconds):.3f} s, slowest {seconds.max():.3f} s (step {slowest})")
    status = ISSUES if len(slow) > n_outliers else NO_ISSUES
    return Verdict("StepOutlier", status, detail,
                   "Some steps take far longer than the rest: look for checkpoints, evaluation or other jobs "
                   "sharing the machine at those times.", params)


def data_loader(profile: Profile, threshold: float = 50) -> Verdict:
    """Our analogue of IOBottleneck: the share of step time spent waiting for the next batch."""
    params = {"threshold": threshold}
    if not profile.steps:
        return Verdict("DataLoaderBottleneck", NOT_EVALUATED, "no timed steps", "", params)
    totals = profile.totals()
    share = 100 * totals["data_wait"] / max(sum(totals.values()), 1e-9)
    detail = f"{share:.0f}% of step time waiting for data (threshold {threshold:g}%)"
    return Verdict("DataLoaderBottleneck", ISSUES if share > threshold else NO_ISSUES, detail,
                   "Training waits for images: raise num-workers (-1 uses every core), use an instance with more "
                   "vCPUs per GPU, or store the images smaller (decoding large JPEGs dominates).", params)


def _gpu(samples: list[dict], key: str) -> np.ndarray:
    return np.array([s[key] for s in samples if key in s], dtype=float)


def cpu_bottleneck(profile: Profile, threshold: float = 50, gpu_threshold: float = 10,
                   cpu_threshold: float = 90) -> Verdict:
    params = {"threshold": threshold, "gpu_threshold": gpu_threshold, "cpu_threshold": cpu_threshold}
    samples = [s for s in profile.training_samples() if "gpu_percent" in s]
    if not samples:
        return Verdict("CPUBottleneck", NOT_EVALUATED, "no GPU utilization samples (no GPU, or no NVML)", "", params)
    bottlenecked = [s for s in samples if Profile.cpu_mean(s) > cpu_threshold and s["gpu_percent"] < gpu_threshold]
    share = 100 * len(bottlenecked) / len(samples)
    detail = f"CPU above {cpu_threshold:g}% with GPU below {gpu_threshold:g}% in {share:.0f}% of the samples"
    return Verdict("CPUBottleneck", ISSUES if share > threshold else NO_ISSUES, detail,
                   "The GPU waits for the CPU: more loader workers, an instance with more vCPUs, or lighter "
                   "augmentation.", params)


def low_gpu_utilization(profile: Profile, threshold_p95: float = 70, threshold_p5: float = 10) -> Verdict:
    params = {"threshold_p95": threshold_p95, "threshold_p5": threshold_p5}
    gpu = _gpu(profile.training_samples(), "gpu_percent")
    if not len(gpu):
        return Verdict("LowGPUUtilization", NOT_EVALUATED, "no GPU utilization samples (no GPU, or no NVML)", "",
                       params)
    p95, p5 = _percentile(gpu, 95), _percentile(gpu, 5)
    detail = f"GPU utilization p95 {p95:.0f}%, p5 {p5:.0f}%"
    if p95 < threshold_p95:
        return Verdict("LowGPUUtilization", ISSUES, detail + f": under {threshold_p95:g}% (underused)",
                       "The GPU is mostly idle: a larger batch-size, more loader workers, or a smaller instance.",
                       params)
    if p5 < threshold_p5:
        return Verdict("LowGPUUtilization", ISSUES, detail + f": drops under {threshold_p5:g}% (fluctuates)",
                       "GPU use fluctuates: the data pipeline stalls between batches; raise num-workers.", params)
    return Verdict("LowGPUUtilization", NO_ISSUES, detail, "", params)


def batch_size(profile: Profile, cpu_threshold_p95: float = 70, gpu_threshold_p95: float = 70,
               gpu_memory_threshold_p95: float = 70) -> Verdict:
    params = {"cpu_threshold_p95": cpu_threshold_p95, "gpu_threshold_p95": gpu_threshold_p95,
              "gpu_memory_threshold_p95": gpu_memory_threshold_p95}
    samples = profile.training_samples()
    gpu, memory = _gpu(samples, "gpu_percent"), _gpu(samples, "gpu_memory_percent")
    if not len(gpu) or not len(memory):
        return Verdict("BatchSize", NOT_EVALUATED, "no GPU utilization and memory samples", "", params)
    cpu = _percentile([Profile.cpu_mean(s) for s in samples], 95)
    gpu95, memory95 = _percentile(gpu, 95), _percentile(memory, 95)
    detail = f"p95: CPU {cpu:.0f}%, GPU {gpu95:.0f}%, GPU memory {memory95:.0f}%"
    low = cpu < cpu_threshold_p95 and gpu95 < gpu_threshold_p95 and memory95 < gpu_memory_threshold_p95
    return Verdict("BatchSize", ISSUES if low else NO_ISSUES, detail,
                   "CPU, GPU and GPU memory are all lightly used: double batch-size (and lr with it), or use a "
                   "smaller instance.", params)


def verdicts(profile: Profile) -> list[Verdict]:
    return [data_loader(profile), cpu_bottleneck(profile), low_gpu_utilization(profile), batch_size(profile),
            step_outliers(profile)]


def utilization(profile: Profile) -> dict[str, float]:
    """p50/p95 of CPU (mean over cores), memory and, where sampled, GPU, during training."""
    samples = profile.training_samples()
    series = {"cpu": [Profile.cpu_mean(s) for s in samples], "memory": [s.get("memory_percent", 0) for s in samples],
              "gpu": list(_gpu(samples, "gpu_percent")), "gpu_memory": list(_gpu(samples, "gpu_memory_percent"))}
    return {f"{name}_p{q}": _percentile(values, q) for name, values in series.items() if values for q in (50, 95)}
