"""Serving precision: the arithmetic the endpoint's hardware is built for, never a silent loss.

`SERVE_PRECISION` (auto, fp32, bf16, bf16-autocast, fp16; default auto; environment.py reads it)
picks it. On a CPU every mode runs a frozen TorchScript graph, channels_last, traced once at load (before MMS forks its
workers): `bf16` with bf16 weights (fastest), `bf16-autocast` with fp32 weights (batch norm
folded in fp32) under bf16 autocast (closer to fp32), `fp32` in eager mode as trained.
`SERVE_GRAPH=compiled` runs the reduced precisions through torch.compile with inductor's freezing
instead. Measured on 2 AMD EPYC cores, one image on one thread (docs/PERFORMANCE.md): compiled
ResNet50 bf16 answers in 0.77x the frozen graph's time, but compiling takes 10 s against 0.7 s,
which breaks the 5 s cold start; so frozen unless an endpoint that runs for long asks for it.
On a GPU, `bf16`/`fp16` weights with cuDNN autotuning.

The guard: `train` measures, on its test (else valid) images, how often each mode agrees with
fp32 on top-1 (`check`), and writes it to model.json (`metrics.serving`). auto takes the fastest
mode this hardware has whose agreement is at least AGREEMENT: on CPUs with bf16 instructions
(avx512_bf16, AMX) bf16, else bf16-autocast; on GPUs bf16 where supported, else fp16. Without a
measurement, or below it, auto serves fp32 and says why. An explicit SERVE_PRECISION is obeyed.
"""
from __future__ import annotations

import copy
import logging
import time
import warnings

import torch
from torch import nn

from ..precision import cpu_has_bf16
from . import environment

log = logging.getLogger(__name__)

ENV = environment.PRECISION  # named in the reasons it gives
CPU_MODES = ("bf16", "bf16-autocast")  # fastest first
AGREEMENT = 0.995  # least top-1 agreement with fp32 for auto to serve a reduced precision
DTYPES = {"bf16": torch.bfloat16, "bf16-autocast": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(ValueError):
    """SERVE_PRECISION names something this hardware cannot serve."""


def hardware_modes(device: torch.device) -> tuple[str, ...]:
    """The reduced-precision modes auto may pick on this hardware, fastest first."""
    if device.type == "cuda":
        return ("bf16",) if torch.cuda.is_bf16_supported() else ("fp16",)
    return CPU_MODES if cpu_has_bf16() else ()


def key(device: torch.device, name: str) -> str:
    """How model.json names a measurement: 'cpu-bf16', 'cuda-fp16'."""
    return f"{device.type}-{name}"


def choose(wanted: str, device: torch.device, manifest: dict) -> tuple[str, str]:
    """(precision, why) for this model on this device."""
    if wanted == "fp16" and device.type != "cuda":
        raise PrecisionError(f"{ENV}=fp16 needs a GPU; on a CPU use bf16 or auto")
    if wanted != "auto":
        return wanted, f"{ENV}={wanted}"
    modes = hardware_modes(device)
    if not modes:
        return "fp32", "auto: this CPU has no bf16 instructions"
    serving = (manifest.get("metrics") or {}).get("serving", {})
    below = []
    for name in modes:
        measured = serving.get(key(device, name))
        if measured and measured["top1_agreement"] >= AGREEMENT:
            return name, (f"auto: {name} agreed with fp32 on {measured['top1_agreement']:.2%} of "
                          f"{measured['images']} images when trained")
        if measured:
            below.append(f"{name} {measured['top1_agreement']:.2%} of {measured['images']}")
    if not below:
        return "fp32", (f"auto: model.json has no {key(device, modes[0])} agreement measurement (a model trained "
                        f"before it was measured); {ENV}={modes[0]} serves it anyway")
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
