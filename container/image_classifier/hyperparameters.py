"""Every training hyperparameter: name, type, default and help, in one place.

The image's `train` parses them, the launch side sends them (SageMaker passes every value as a
string) and the tuner's search space names them. Imports nothing heavy.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable

from .errors import TrainingError

# The original names, aliases of timm's identical models (models.ALIASES); any other timm name works too.
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_lite0", "efficientnet_lite1",
             "efficientnet_lite2")
TRAINABLE = ("all", "last-stage", "head")
AUGMENTS = ("none", "trivialaugment", "randaugment")  # preprocessing.train_transform
OPTIMIZERS = ("adamw", "sgd", "adam")
WEIGHTS = ("imagenet", "none")


YES = ("true", "1", "yes")  # how a hyperparameter, an environment variable or an option says yes (any case)
NO = ("false", "0", "no")


def truthy(text: str) -> bool:
    """Lenient: anything but a yes is a no (environment variables, request options)."""
    return str(text).strip().lower() in YES


AUTO = "auto"
MIX_MIN_IMAGES = 20_000  # BiT (Kolesnikov et al., 2020): no mixup for transfer sets under 20k images
MIX_DEFAULTS = {"mixup": 0.2, "cutmix": 1.0}  # torchvision's classification recipe, with MIX_MIN_IMAGES or more


def _alpha(text: str) -> float | str:
    """'auto' or a Beta distribution's alpha, >= 0 (0: off)."""
    value = str(text).strip().lower()
    if value == AUTO:
        return AUTO
    alpha = float(value)
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"not an alpha >= 0: {text!r}")
    return alpha


def _bool(text: str) -> bool:
    """Strict: a hyperparameter that is neither yes nor no fails the job."""
    value = str(text).strip().lower()
    if value in YES + NO:
        return value in YES
    raise ValueError(f"not a boolean: {text!r}")


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
    name: str  # as SageMaker sends it, e.g. "batch-size"
    type: Callable[[str], Any]
    default: Any
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")

    def parse(self, raw: Any) -> Any:
        try:
            value = self.type(raw if not isinstance(raw, str) else raw.strip())
        except (TypeError, ValueError):
            raise TrainingError(
                f"hyperparameter '{self.name}' must be {self.type.__name__.lstrip('_')}, got {raw!r}"
            ) from None
        if isinstance(value, float) and not math.isfinite(value):  # float() takes "nan" and "inf"
            raise TrainingError(f"hyperparameter '{self.name}' must be a finite number, got {raw!r}")
        if self.choices is not None and value not in self.choices:
            raise TrainingError(
                f"hyperparameter '{self.name}' must be one of {', '.join(map(str, self.choices))}; got {raw!r}"
            )
        if self.minimum is not None and value < self.minimum:
            raise TrainingError(f"hyperparameter '{self.name}' must be >= {self.minimum}, got {raw!r}")
        if self.maximum is not None and value > self.maximum:
            raise TrainingError(f"hyperparameter '{self.name}' must be <= {self.maximum}, got {raw!r}")
        return value


HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    Hyperparameter("backbone", str, "resnet50",
                   "ImageNet model to fine-tune: any name timm can create, 'arch' or 'arch.tag' (e.g. "
                   "convnext_nano.in12k_ft_in1k; python launch/backbones.py lists them), or one of "
                   f"{', '.join(BACKBONES)} (timm's identical models; efficientnet_lite0/1/2 have their "
                   "weights bundled in the image)."),
    Hyperparameter("weights", str, "imagenet",
                   "Initial backbone weights: 'imagenet' (the 'pretrained' channel's state_dict file or timm "
                   "local-dir folder if given, else the weights bundled in the image, else a download: "
                   "torchvision's for the ResNet names, the Hugging Face Hub for the others, HF_HUB_OFFLINE "
                   "honoured) or 'none' (random init).", WEIGHTS),
    Hyperparameter("trainable", str, "head",
                   "Which part is trained, the rest frozen: 'all' (whole network), 'last-stage' "
                   "(last stage + head) or 'head' (new classifier only).", TRAINABLE),
    Hyperparameter("epochs", int, 10, "Number of passes over the training set.", minimum=1),
    Hyperparameter("batch-size", int, 32,
                   "Images per training step, over all GPUs and hosts of the job (the global batch): each of N "
                   "processes takes batch-size/N, so a value tuned on one device means the same on many.",
                   minimum=1),
    Hyperparameter("lr", float, 1e-3, "Peak learning rate for the global batch (cosine decay after warm-up).",
                   minimum=0.0),
    Hyperparameter("weight-decay", float, 1e-4, "Weight decay (decoupled for adamw).", minimum=0.0),
    Hyperparameter("optimizer", str, "adamw", "Optimizer.", OPTIMIZERS),
    Hyperparameter("momentum", float, 0.9, "Momentum for sgd.", minimum=0.0, maximum=1.0),
    Hyperparameter("warmup-epochs", float, 0.0, "Linear learning-rate warm-up, in epochs.", minimum=0.0),
    Hyperparameter("image-size", int, 0,
                   "Side of the square crop fed to the network; 0: the backbone's own input size (timm's "
                   "pretrained configuration: 224 for the ResNets and efficientnet_lite0, 240 and 260 for "
                   "efficientnet_lite1 and 2), else 32 or more.", minimum=0),
    Hyperparameter("label-smoothing", float, 0.0, "Label smoothing of the cross-entropy loss.",
                   minimum=0.0, maximum=0.99),
    Hyperparameter("augment", str, "none",
                   "Training augmentation after the random crop and flip: 'trivialaugment' (TrivialAugmentWide), "
                   "'randaugment' (2 ops, magnitude 9) or 'none'. With cached features it shapes the cached "
                   "views (feature-views of them).", AUGMENTS),
    Hyperparameter("random-erasing", float, 0.0,
                   "Probability of erasing a random rectangle of each training image (after normalisation; "
                   "0: never).", minimum=0.0, maximum=1.0),
    Hyperparameter("layer-decay", float, 1.0,
                   "Layer-wise learning-rate decay with trainable=last-stage or all: each earlier layer group "
                   "(timm's group_matcher: stem, each block, the head) learns at this factor times the next "
                   "one's rate, and norms and biases get no weight decay; 1: one rate for all.",
                   minimum=0.01, maximum=1.0),
    Hyperparameter("mixup", _alpha, AUTO,
                   "Mixup's alpha (a Beta(alpha, alpha) blend of each training batch with itself rolled by one, "
                   "labels blended alike); 0: off; 'auto': "
                   f"{MIX_DEFAULTS['mixup']:g} with {MIX_MIN_IMAGES} training images or more, else off (BiT's "
                   "rule for small transfer sets). Mixing needs images: with cached features 'auto' is off and "
                   "a number is refused."),
    Hyperparameter("cutmix", _alpha, AUTO,
                   "CutMix's alpha (a box of another image of the batch pasted in, labels blended by its area); "
                   f"0: off; 'auto': {MIX_DEFAULTS['cutmix']:g} with {MIX_MIN_IMAGES} training images or more, else "
                   "off. With both on, each batch gets one of the two at random."),
    Hyperparameter("ema-decay", float, 0.0,
                   "Exponential moving average of the trained weights (timm's ModelEmaV3, with its warm-up: "
                   "the decay grows with the steps up to this value, e.g. 0.999); each epoch validates both "
                   "and keeps the EMA weights where they score better; 0: off.", minimum=0.0, maximum=0.99999),
    Hyperparameter("seed", int, 42, "Seed for weights of the new head, shuffling and the split.",
                   minimum=0, maximum=2**32 - 1),  # the shuffle's seed * 100_003 + epoch fits torch's 64 bits
    Hyperparameter("num-workers", int, -1,
                   "DataLoader worker processes; -1 means one per CPU core, 0 loads in the main process.",
                   minimum=-1),
    Hyperparameter("early-stopping-patience", int, 0,
                   "Stop after this many epochs without a better valid accuracy; 0 never stops early.",
                   minimum=0),
    Hyperparameter("valid-fraction", float, 0.2,
                   "Share of each class held out for validation when there is no 'valid' channel.",
                   minimum=0.01, maximum=0.5),
    Hyperparameter("checkpoint-per-job", _bool, False,
                   "Keep checkpoints in a folder named after the training job ($TRAINING_JOB_NAME) inside "
                   "/opt/ml/checkpoints, so that the trials of a tuning job that share a checkpoint S3 URI "
                   "each resume from their own (launch.tune sets it)."),
    Hyperparameter("checkpoint-minutes", float, 10.0,
                   "Also checkpoint inside an epoch once this many minutes have passed since the last "
                   "checkpoint, so that an end without SIGTERM (a lost spot instance, a crash) loses at most "
                   "that much training; 0: only at the end of each epoch and on SIGTERM.", minimum=0.0),
    Hyperparameter("trial-lifetime-hours", float, 0.0,
                   "With checkpoint-per-job: hours within which a tuning trial can still be resumed (the tuning "
                   "job's MaxWaitTimeInSeconds; launch.tune sets it). A trial removes other trials' checkpoint "
                   "folders last saved longer ago than this, so that later trials do not download them; 0 removes "
                   "none. Every trial removes its own folder when it completes or fails.", minimum=0.0),
    Hyperparameter("log-interval", int, 0,
                   "Print progress every N training steps; 0 prints once per epoch.", minimum=0),
    Hyperparameter("debug-dir", str, "",
                   "Save SageMaker Debugger tensors (losses, weights, biases, gradients) to this folder, "
                   "relative to /opt/ml/output, without SageMaker Debugger; empty: only when SageMaker's "
                   "Debugger is on."),
    Hyperparameter("debug-interval", int, 50, "Steps between the tensors the debug-dir hook saves.", minimum=1),
    Hyperparameter("precision", str, "auto",
                   "Training arithmetic: 'auto' (bf16 autocast on CPUs with bf16 instructions and on GPUs that "
                   "support it, fp16 on older GPUs, else fp32), 'fp32', 'bf16' or 'fp16' (GPU only). "
                   "Evaluation is fp32.", ("auto", "fp32", "bf16", "fp16")),
    Hyperparameter("cache-features", _bool, True,
                   "With trainable=head, compute the frozen backbone's features once and train the head on "
                   "them: only the first feature-views epochs decode images and run the backbone."),
    Hyperparameter("feature-views", int, 1,
                   "Augmented views (random crop + flip) cached per training image when caching features; "
                   "epoch e trains on view e mod feature-views.", minimum=1),
    Hyperparameter("feature-cache-dir", str, "",
                   "Folder that keeps cached features across jobs (local tuning trials share one): relative "
                   "to /opt/ml/output, or absolute inside /opt/ml (or $FEATURE_CACHE_ROOT); "
                   "empty: in memory, for this job only."),
    Hyperparameter("audit", str, "full",
                   "Data audit before training (warnings, never a failure): 'full' (exact duplicates, and "
                   "near-duplicates from the frozen backbone's cached features where trainable=head with "
                   "cache-features; class counts; images under the crop), 'exact' (no near-duplicates), 'off'.",
                   ("full", "exact", "off")),
    Hyperparameter("distributed-timeout", int, 600,
                   "Seconds a process of a multi-device or multi-host job waits for the others at a collective "
                   "before it fails the job (a process that dies on a live host ends the others at once).", minimum=10),
    Hyperparameter("host-wait-seconds", int, 900,
                   "Seconds a multi-host job retries resolving the leader's host name before it fails: SageMaker's "
                   "host names may not resolve at once (both AWS training toolkits wait up to 15 minutes).",
                   minimum=0),
    Hyperparameter("profile-steps", int, 0,
                   "Record a torch.profiler trace of this many training steps (output profile/trace.json); 0: none.",
                   minimum=0),
)

BY_NAME = {hp.name: hp for hp in HYPERPARAMETERS}
_TYPES = {_bool: bool, _alpha: float | str}  # a parser's value type, where the parser is not the type itself

# The typed, frozen value `train` runs with: one field per row of HYPERPARAMETERS (named by its
# attr, with its default), generated from the table, so there is no second definition to keep.
Hyperparameters = dataclasses.make_dataclass(
    "Hyperparameters", [(hp.attr, _TYPES.get(hp.type, hp.type), dataclasses.field(default=hp.default))
                        for hp in HYPERPARAMETERS], frozen=True)
Hyperparameters.__module__ = __name__  # pickles and prints as this module's
Hyperparameters.__doc__ = "Every training hyperparameter, parsed and checked (hyperparameters.parse)."

# Keys that SageMaker and its SDK add to hyperparameters.json; they are not ours to parse.
_RESERVED_PREFIXES = ("sagemaker_", "_")


def defaults() -> dict[str, Any]:
    return {hp.name: hp.default for hp in HYPERPARAMETERS}


def parse(raw: dict[str, Any]) -> Hyperparameters:
    """Parse hyperparameters as SageMaker sends them (all strings) into typed values.

    Unknown names fail the job: a misspelt 'learning-rate' silently ignored would waste a run.
    """
    unknown = sorted(k for k in raw if k not in BY_NAME and not k.startswith(_RESERVED_PREFIXES))
    if unknown:
        raise TrainingError(
            f"unknown hyperparameter(s): {', '.join(unknown)} (known: {', '.join(BY_NAME)})"
        )
    return Hyperparameters(**{BY_NAME[name].attr: BY_NAME[name].parse(value) for name, value in raw.items()
                              if name in BY_NAME})


def to_sagemaker(values: dict[str, Any]) -> dict[str, str]:
    """Hyperparameters as strings, the form CreateTrainingJob takes; checks names and values."""
    out = {}
    for name, value in values.items():
        if name not in BY_NAME:
            raise ValueError(f"unknown hyperparameter {name!r}")
        BY_NAME[name].parse(str(value))  # raises on a value the container would refuse
        out[name] = json.dumps(value) if isinstance(value, bool) else str(value)
    return out


def as_dict(values: Hyperparameters) -> dict[str, Any]:
    """By SageMaker's names ("batch-size"): what the log prints and a checkpoint is checked against."""
    return {hp.name: getattr(values, hp.attr) for hp in HYPERPARAMETERS}


def help_text() -> str:
    lines = []
    for hp in HYPERPARAMETERS:
        choices = f" {{{', '.join(hp.choices)}}}" if hp.choices else ""
        lines.append(f"  {hp.name:<24} {hp.type.__name__.lstrip('_'):<5} default {hp.default!s:<9}{choices}\n"
                     f"      {hp.help}")
    return "\n".join(lines)


def markdown_table() -> str:
    """The table docs/TRAINING.md shows (a test keeps the two the same): `python -m
    image_classifier.hyperparameters` prints it."""
    rows = ["| name | type | default | meaning |", "|---|---|---|---|"]
    for hp in HYPERPARAMETERS:
        choices = f" One of: {', '.join(f'`{c}`' for c in hp.choices)}." if hp.choices else ""
        bounds = "".join(f" {word} {value:g}." for word, value in (("At least", hp.minimum), ("At most", hp.maximum))
                         if value is not None)
        rows.append(f"| `{hp.name}` | {hp.type.__name__.lstrip('_')} | `{hp.default}` | "
                    f"{hp.help.replace('|', '/')}{choices}{bounds} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
