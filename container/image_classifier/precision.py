"""Arithmetic below fp32, for training and for serving, and how far it may be trusted.

Training (`resolve`): the `precision` hyperparameter picks an autocast dtype. `auto` takes bf16 on
CPUs with bf16 instructions (avx512_bf16, AMX) and on CUDA GPUs that support it, fp16 (with a
gradient scaler) on older GPUs, fp32 elsewhere. Evaluation stays fp32, so the accuracies reported
are what an fp32 server gives.

Serving (`choose`, `prepare`): SERVE_PRECISION (serving/environment.py) picks a mode. On a CPU a
reduced precision runs a frozen TorchScript graph, channels_last, traced once at load (before MMS
forks its workers): `bf16` with bf16 weights (fastest), `bf16-autocast` with fp32 weights (batch
norm folded in fp32) under bf16 autocast (closer to fp32); `fp32` runs eager, as trained.
SERVE_GRAPH=compiled runs them through torch.compile with inductor's freezing instead (faster
answers, a much slower start: docs/PERFORMANCE.md has the figures). On a GPU, bf16/fp16 weights
with cuDNN autotuning. TorchScript is frozen upstream: this module is the one place that uses it.

The guard (`check`): `train` measures, on its test (else valid) images, how often each serving
mode agrees with fp32 on top-1, and writes it to model.json (`metrics.serving`). auto serves the
fastest mode this hardware has whose agreement is at least AGREEMENT; without a measurement, or
below it, fp32, and says why. An explicit SERVE_PRECISION is obeyed.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import TrainingError

log = logging.getLogger(__name__)

CPU_MODES = ("bf16", "bf16-autocast")  # serving's reduced precisions on a CPU, fastest first
AGREEMENT = 0.995  # least top-1 agreement with fp32 for auto to serve a reduced precision
DTYPES = {"bf16": torch.bfloat16, "bf16-autocast": torch.bfloat16, "fp16": torch.float16}  # serving's modes
# below fp32 (serving/environment.PRECISIONS names them for SERVE_PRECISION; a test keeps the two the same)


class PrecisionError(TrainingError, ValueError):
    """A precision this hardware cannot run: a training job fails with it (a TrainingError), a
    model's load in `serve` too."""


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _needs_gpu(wanted: str, device: torch.device, setting: str) -> None:
    if wanted == "fp16" and device.type != "cuda":
        raise PrecisionError(f"{setting}=fp16 needs a GPU; on a CPU use bf16 or auto")


# --- training -----------------------------------------------------------------------------------
def resolve(precision: str, device: torch.device) -> torch.dtype | None:
    """The training autocast dtype for the `precision` hyperparameter, or None for fp32."""
    _needs_gpu(precision, device, "precision")
    if precision == "fp32":
        return None
    if precision == "auto":
        modes = hardware_modes(device)
        return DTYPES[modes[0]] if modes else None
    return DTYPES[precision]


def autocast(dtype: torch.dtype | None, device: torch.device):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


# --- serving ------------------------------------------------------------------------------------
def hardware_modes(device: torch.device) -> tuple[str, ...]:
    """The reduced-precision modes auto may pick on this hardware, fastest first."""
    if device.type == "cuda":
        return ("bf16",) if torch.cuda.is_bf16_supported() else ("fp16",)
    return CPU_MODES if cpu_has_bf16() else ()


def key(device: torch.device, name: str) -> str:
    """How model.json names a measurement: 'cpu-bf16', 'cuda-fp16'."""
    return f"{device.type}-{name}"


def choose(wanted: str, device: torch.device, manifest: dict, setting: str) -> tuple[str, str]:
    """(mode, why) for this model on this device; `setting` names the variable that asked."""
    _needs_gpu(wanted, device, setting)
    if wanted != "auto":
        return wanted, f"{setting}={wanted}"
    modes = hardware_modes(device)
    if not modes:
        return "fp32", "auto: this CPU has no bf16 instructions"
    serving = (manifest.get("metrics") or {}).get("serving", {})
    below = []
    for mode in modes:
        measured = serving.get(key(device, mode))
        if measured and measured["top1_agreement"] >= AGREEMENT:
            return mode, (f"auto: {mode} agreed with fp32 on {measured['top1_agreement']:.2%} of "
                          f"{measured['images']} images when trained")
        if measured:
            below.append(f"{mode} {measured['top1_agreement']:.2%} of {measured['images']}")
    if not below:
        return "fp32", (f"auto: model.json has no {key(device, modes[0])} agreement measurement (a model trained "
                        f"before it was measured); {setting}={modes[0]} serves it anyway")
    return "fp32", f"auto: top-1 agreement with fp32 under {AGREEMENT:.1%} ({', '.join(below)} images)"


class Served(nn.Module):
    """fp32 channels_last images in, fp32 logits out, whatever arithmetic runs in between."""

    def __init__(self, network: nn.Module, dtype: torch.dtype | None, autocast: bool = False):
        super().__init__()
        self.network, self.dtype, self.autocast = network, dtype, autocast

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.dtype is None:
            return self.network(images)
        if self.autocast:
            with torch.autocast(images.device.type, dtype=self.dtype):
                return self.network(images).float()
        return self.network(images.to(self.dtype)).float()


def prepare(network: nn.Module, name: str, device: torch.device, image_size: int, how: str = "frozen") -> Served:
    """The network as it will serve: fp32 eager (as trained), or reduced-precision weights in a
    frozen or compiled graph (CPU; `how`) or with cuDNN autotuning (GPU). `network` itself is left
    as it is."""
    if name == "fp32":
        return Served(network, None).eval()
    dtype, autocast = DTYPES[name], name == "bf16-autocast"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # per input shape: the first batch of a size pays once
        return Served(copy.deepcopy(network).to(dtype).eval(), dtype).eval()
    traced = copy.deepcopy(network).eval() if autocast else copy.deepcopy(network).to(dtype).eval()
    example = torch.zeros(1, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    if how == "compiled":
        return _compiled(traced, dtype, autocast, example, name)
    served = Served(None, dtype, autocast)
    started = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice, once per load
        served.network = torch.jit.freeze(torch.jit.trace(traced, example if autocast else example.to(dtype),
                                                          check_trace=False))  # folds batch norm into the convs
        served(example)  # the profiling executor specializes on the first calls
        served(example)
    log.info("%s frozen graph ready in %.2f s", name, time.perf_counter() - started)
    return served


def _compiled(network: nn.Module, dtype: torch.dtype, autocast: bool, example: torch.Tensor, name: str) -> nn.Module:
    import torch._inductor.config as inductor
    inductor.freezing = True  # weights as constants: batch norm folded, weights prepacked for oneDNN
    started = time.perf_counter()
    served = torch.compile(Served(network, dtype, autocast).eval())
    # As predict_many calls it: an inference tensor under inference_mode (its dispatch keys are in
    # the guards: a plain tensor here cost every worker a second compilation at its first request).
    with torch.inference_mode():
        example = example.clone()
        served(example)  # compiles
        served(example)
    log.info("%s compiled graph ready in %.2f s", name, time.perf_counter() - started)
    return served


@torch.inference_mode()
def check(network: nn.Module, served: dict[str, nn.Module], batches, device: torch.device) -> dict[str, dict]:
    """How each of `served` (name -> module) agrees with fp32 `network` over (images, labels,
    n_failed) batches: one pass, each batch decoded once and run in fp32 once."""
    counts = {name: {"agree": 0, "correct": 0, "largest": 0.0} for name in served}
    correct32 = images = 0
    for inputs, labels, _ in batches:
        if inputs is None:
            continue
        inputs = inputs.to(device, memory_format=torch.channels_last)
        p32 = torch.softmax(network(inputs).float(), 1).cpu()
        correct32 += (p32.argmax(1) == labels).sum().item()
        images += len(labels)
        for name, module in served.items():
            p, c = torch.softmax(module(inputs).float(), 1).cpu(), counts[name]
            c["agree"] += (p32.argmax(1) == p.argmax(1)).sum().item()
            c["correct"] += (p.argmax(1) == labels).sum().item()
            c["largest"] = max(c["largest"], (p32 - p).abs().max().item())
    n = max(images, 1)
    return {name: {"images": images, "top1_agreement": c["agree"] / n,
                   "max_probability_difference": round(c["largest"], 6), "accuracy_fp32": correct32 / n,
                   "accuracy": c["correct"] / n} for name, c in counts.items()}
