"""SageMaker Debugger's six built-in model rules, run anywhere: smdebug `Rule` subclasses with
SageMaker's documented default parameters, invoked with smdebug's `invoke_rule` over a trial (a
local job's debug folder, or a cloud job's debug output that launch/report.py downloaded).

SageMaker's own rule containers are not public. The docs give each rule's purpose, parameters and
defaults, not its code; where they leave a choice open, the rule's docstring says what we chose.
Each rule records every violation (step and reason) instead of stopping at the first, so the
report can say where and how often.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

os.environ.setdefault("SMDEBUG_LOG_LEVEL", "error")  # read at import: smdebug logs every rule step at INFO

import numpy as np
from smdebug import modes
from smdebug.exceptions import RuleEvaluationConditionMet, TensorUnavailableForStep
from smdebug.rules.rule import Rule
from smdebug.rules.rule_invoker import invoke_rule

ISSUES, NO_ISSUES, NOT_EVALUATED = "IssuesFound", "NoIssuesFound", "NotEvaluated"  # SageMaker's words, and ours


class RecordingRule(Rule):
    """A rule with documented defaults that keeps what it found. Subclasses implement check(step),
    returning a reason when the step violates the rule; `datapoints` counts its checks (steps, or validation passes)."""

    DEFAULTS: dict = {}
    RECOMMENDATION = ""

    def __init__(self, base_trial, **parameters):
        super().__init__(base_trial, action_str="")  # no actions (StopTraining, email) locally
        unknown = set(parameters) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(f"{self.rule_name}: unknown parameter(s) {sorted(unknown)}")
        self.parameters = {**self.DEFAULTS, **parameters}
        self.violations: list[tuple[int, str]] = []
        self.datapoints = 0
        self.not_evaluated = ""  # why the rule had nothing to judge
        self.pass_losses: list[float] = []
        self.last_step = max(base_trial.steps(), default=-1)

    def invoke_at_step(self, step):
        reason = self.check(step)
        if reason:
            self.violations.append((step, reason))
        return bool(reason)

    def check(self, step: int) -> str | None:
        raise NotImplementedError

    # --- what the trial holds ------------------------------------------------------------------
    def mode(self, step: int):
        return self.base_trial.mode(step)

    def value(self, name: str, step: int):
        """The tensor's value at this global step, or None when it was not saved there."""
        try:
            return self.base_trial.tensor(name).value(step)
        except TensorUnavailableForStep:
            return None

    def loss_names(self, regex: str | None = None) -> list[str]:
        if regex:
            return self.base_trial.tensor_names(regex=regex)
        return self.base_trial.tensor_names(collection="losses")

    def loss(self, step: int, regex: str | None = None) -> float | None:
        """The (first) loss saved at this step."""
        for name in self.loss_names(regex):
            value = self.value(name, step)
            if value is not None:
                return float(np.mean(value))
        return None

    def validation_pass(self, step: int, loss: float | None) -> float | None:
        """Fed every step: the mean loss of a validation pass once it is over (at the first step
        of another mode, or at the trial's last step). A pass's batches are different images
        (in class order, unshuffled), so only the whole pass says how the model does."""
        if self.mode(step) == modes.EVAL and loss is not None:
            self.pass_losses.append(loss)
        if self.pass_losses and (self.mode(step) != modes.EVAL or step == self.last_step):
            mean, self.pass_losses = float(np.mean(self.pass_losses)), []
            return mean
        return None


class VanishingGradient(RecordingRule):
    """Fires when the mean absolute value of a gradient falls below `threshold`."""

    DEFAULTS = {"threshold": 1e-7}
    RECOMMENDATION = ("Gradients this small stop learning. With weights=none, use the ImageNet weights; otherwise "
                      "raise lr, or train fewer layers (trainable=last-stage or head).")

    def check(self, step):
        names = self.base_trial.tensor_names(collection="gradients")
        if not names:
            self.not_evaluated = "the trial has no gradients"
            return None
        found = {n: v for n in names if (v := self.value(n, step)) is not None}
        if not found:
            return None
        self.datapoints += 1
        means = {n: float(np.abs(v).mean()) for n, v in found.items()}
        small = {n: m for n, m in means.items() if m < self.parameters["threshold"]}
        if small:
            name, value = min(small.items(), key=lambda item: item[1])
            return f"mean |gradient| of {name} is {value:.2e} (threshold {self.parameters['threshold']:g})"
        return None


class ExplodingTensor(RecordingRule):
    """Fires when a saved tensor holds NaN (or, unless only_nan, an infinity). Default: every tensor."""

    DEFAULTS = {"collection_names": None, "tensor_regex": None, "only_nan": False}
    _tensors = None
    RECOMMENDATION = ("Values overflowed: lower lr (a tenth), add warmup-epochs, or use adamw; check the images "
                      "decode (skipped_files.tsv).")

    def tensors(self) -> list[str]:
        """The tensors to check; looked up once (the trial is complete when rules run here)."""
        if self._tensors is None:
            self._tensors = self._select()
        return self._tensors

    def _select(self) -> list[str]:
        p = self.parameters
        if not p["collection_names"] and not p["tensor_regex"]:
            return self.base_trial.tensor_names()
        names = set()
        for collection in (p["collection_names"] or "").split(","):
            if collection.strip():
                names.update(self.base_trial.tensor_names(collection=collection.strip()))
        if p["tensor_regex"]:
            names.update(self.base_trial.tensor_names(regex=p["tensor_regex"]))
        return sorted(names)

    def check(self, step):
        judged = False
        for name in self.tensors():
            value = self.value(name, step)
            if value is None:
                continue
            judged = True
            if np.isnan(value).any():
                self.datapoints += 1
                return f"{name} holds NaN"
            if not self.parameters["only_nan"] and np.isinf(value).any():
                self.datapoints += 1
                return f"{name} holds an infinite value"
        self.datapoints += judged
        return None


class Overfit(RecordingRule):
    """Fires when (mean validation loss - mean training loss) / mean training loss exceeds
    `ratio_threshold` for `patience` validation passes in a row.

    Our choice: the means are those of a whole validation pass and of the training steps before
    it (that epoch's), so one batch does not decide."""

    DEFAULTS = {"tensor_regex": None, "start_step": 0, "patience": 1, "ratio_threshold": 0.1}
    RECOMMENDATION = ("Validation loss is well above training loss: regularize (weight-decay, label-smoothing), "
                      "train fewer layers, add data, or stop earlier (early-stopping-patience).")

    def __init__(self, base_trial, **parameters):
        super().__init__(base_trial, **parameters)
        self.train, self.exceeded = [], 0

    def check(self, step):
        if step < self.parameters["start_step"]:
            return None
        loss = self.loss(step, self.parameters["tensor_regex"])
        valid = self.validation_pass(step, loss)
        train = float(np.mean(self.train)) if self.train else None
        if valid is not None:
            self.train = []  # the next epoch's training steps start a new mean
        if self.mode(step) == modes.TRAIN and loss is not None:
            self.train.append(loss)
        if valid is None or train is None:
            return None
        self.datapoints += 1
        ratio = (valid - train) / train if train > 0 else 0.0
        self.exceeded = self.exceeded + 1 if ratio > self.parameters["ratio_threshold"] else 0
        if self.exceeded >= self.parameters["patience"]:
            return f"validation loss {valid:.4f} is {100 * ratio:.0f}% above training loss {train:.4f}"
        return None


class Overtraining(RecordingRule):
    """Fires when the training loss has not improved by `delta` for `patience_train` saved training
    steps, or the validation loss for `patience_validation` validation passes.

    Our choice: a validation pass is judged by its mean loss and counts as one step of
    patience_validation."""

    DEFAULTS = {"patience_train": 5, "patience_validation": 10, "delta": 0.01}
    RECOMMENDATION = ("The model stopped improving: fewer epochs, or early-stopping-patience so the job ends "
                      "when validation accuracy stalls.")

    def __init__(self, base_trial, **parameters):
        super().__init__(base_trial, **parameters)
        self.best = {"train": np.inf, "valid": np.inf}
        self.stale = {"train": 0, "valid": 0}

    def judge(self, which: str, loss: float) -> str | None:
        self.datapoints += 1
        if loss < self.best[which] - self.parameters["delta"]:
            self.best[which], self.stale[which] = loss, 0
            return None
        self.stale[which] += 1
        patience = self.parameters[f"patience_{'train' if which == 'train' else 'validation'}"]
        if self.stale[which] >= patience:
            unit = "saved training steps" if which == "train" else "validation passes"
            return (f"{'training' if which == 'train' else 'validation'} loss has not improved by "
                    f"{self.parameters['delta']:g} for {self.stale[which]} {unit} (best {self.best[which]:.4f})")
        return None

    def check(self, step):
        loss, reasons = self.loss(step), []
        valid = self.validation_pass(step, loss)
        if valid is not None:
            reasons.append(self.judge("valid", valid))
        if loss is not None and self.mode(step) == modes.TRAIN:
            reasons.append(self.judge("train", loss))
        return "; ".join(r for r in reasons if r) or None


class PoorWeightInitialization(RecordingRule):
    """In the first `steps` training steps, fires when:
    - the variance of the ReLU inputs (activation_inputs_regex) differs across layers by more than
      `threshold` times (only when the trial holds them: SageMaker's config saves them, our local
      hook does not: 0.35 GB a saved step for ResNet50 at batch 32);
    - the spread of the gradients (95th minus 5th percentile, all gradients of the step) is below
      `distribution_range`;
    - the loss does not decrease for `patience` saved steps in a row."""

    DEFAULTS = {"activation_inputs_regex": ".*relu_input|.*ReLU_input", "threshold": 10.0,
                "distribution_range": 0.001, "patience": 5, "steps": 10}
    RECOMMENDATION = ("The network starts badly: use the ImageNet weights (weights=imagenet); with weights=none, "
                      "keep the default (Kaiming) initialization and a warm-up (warmup-epochs).")

    def __init__(self, base_trial, **parameters):
        super().__init__(base_trial, **parameters)
        self.previous_loss, self.not_decreasing = None, 0

    def check(self, step):
        if self.mode(step) != modes.TRAIN or self.base_trial.mode_step(step) >= self.parameters["steps"]:
            return None
        reasons, judged = [], False
        activations = {n: v for n in self.base_trial.tensor_names(regex=self.parameters["activation_inputs_regex"])
                       if (v := self.value(n, step)) is not None}
        variances = [float(np.var(v, dtype=np.float64)) for v in activations.values() if np.size(v) > 1]
        if len(variances) >= 2:
            judged = True
            ratio = max(variances) / max(min(variances), 1e-30)
            if ratio > self.parameters["threshold"]:
                reasons.append(f"ReLU input variance differs {ratio:.0f}x across {len(variances)} layers")
        gradients = [v.ravel() for n in self.base_trial.tensor_names(collection="gradients")
                     if (v := self.value(n, step)) is not None]
        if gradients:
            judged = True
            low, high = np.percentile(np.concatenate(gradients), [5, 95])
            if high - low < self.parameters["distribution_range"]:
                reasons.append(f"gradients span only {high - low:.2e} between their 5th and 95th percentiles")
        loss = self.loss(step)
        if loss is not None:
            judged = True
            if self.previous_loss is not None:
                self.not_decreasing = self.not_decreasing + 1 if loss >= self.previous_loss else 0
                if self.not_decreasing >= self.parameters["patience"]:
                    reasons.append(f"loss has not decreased for {self.not_decreasing} saved steps")
            self.previous_loss = loss
        self.datapoints += judged
        return "; ".join(reasons) or None


class LossNotDecreasing(RecordingRule):
    """Every `num_steps` (or more, where the loss was not saved), compares the loss with the last
    check. Fires when it fell by less than `diff_percent`, or is more than
    `increase_threshold_percent` above the lowest checked loss (a rise it has not recovered from).

    Our choices: the loss at a check is the mean of the losses saved since the previous check (the
    single saved value when tensors are saved every num_steps steps or less often, as with
    SageMaker's 500), so that batch-to-batch noise in densely saved losses does not decide.
    `mode` defaults to TRAIN, not GLOBAL: our jobs save validation losses too, and comparing a
    validation batch with a training batch says nothing about progress."""

    DEFAULTS = {"tensor_regex": None, "use_losses_collection": True, "num_steps": 10, "diff_percent": 0.1,
                "increase_threshold_percent": 5.0, "mode": "TRAIN"}
    RECOMMENDATION = ("The loss is flat or rising: try another lr (10x up if flat, down if rising), check the "
                      "labels (class folders), or train more layers.")

    def __init__(self, base_trial, **parameters):
        super().__init__(base_trial, **parameters)
        self.last: tuple[int, float] | None = None
        self.lowest = np.inf
        self.window: list[float] = []

    def check(self, step):
        p = self.parameters
        if p["mode"] != "GLOBAL" and self.mode(step) != getattr(modes, p["mode"]):
            return None
        loss = self.loss(step, p["tensor_regex"] if not p["use_losses_collection"] else None)
        if loss is None:
            return None
        self.window.append(loss)
        if self.last is None:
            self.last, self.lowest, self.window = (step, loss), loss, []
            return None
        last_step, last_loss = self.last
        if step - last_step < p["num_steps"]:
            return None
        loss, self.window = float(np.mean(self.window)), []
        self.datapoints += 1
        self.last, self.lowest = (step, loss), min(self.lowest, loss)
        fell = 100 * (last_loss - loss) / last_loss if last_loss > 0 else 0.0
        if fell < p["diff_percent"]:
            change = f"fell only {fell:.2f}%" if fell >= 0 else f"rose {-fell:.1f}%"
            return f"loss {change} in {step - last_step} steps ({last_loss:.4f} -> {loss:.4f})"
        if loss > self.lowest * (1 + p["increase_threshold_percent"] / 100):
            return f"loss {loss:.4f} is {100 * (loss / self.lowest - 1):.0f}% above its lowest checked value"
        return None


RULES = (VanishingGradient, ExplodingTensor, Overfit, Overtraining, PoorWeightInitialization, LossNotDecreasing)


@dataclasses.dataclass
class RuleResult:
    rule: str
    status: str  # IssuesFound, NoIssuesFound or NotEvaluated
    detail: str
    violations: int
    datapoints: int
    first_step: int | None
    parameters: dict
    recommendation: str


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def rule_config_name(rule_class) -> str:
    """The rule_configs function of the same SageMaker rule (launch/jobs.py attaches those)."""
    return _snake(rule_class.__name__)


def run(rule: RecordingRule, steps: list[int]) -> RuleResult:
    """invoke_rule at every saved step; a violation is recorded by the rule and evaluation goes on."""
    for step in steps:
        try:
            invoke_rule(rule, start_step=step, end_step=step + 1, raise_eval_cond=True)
        except RuleEvaluationConditionMet:
            pass
    if rule.violations:
        first_step, first = rule.violations[0]
        status, detail = ISSUES, f"step {first_step}: {first}"
    elif rule.datapoints:
        first_step, status, detail = None, NO_ISSUES, f"{rule.datapoints} check(s), no issue"
    else:
        first_step, status = None, NOT_EVALUATED
        detail = rule.not_evaluated or "no saved step held what this rule reads"
    return RuleResult(rule.rule_name, status, detail, len(rule.violations), rule.datapoints, first_step,
                      rule.parameters, rule.RECOMMENDATION)


def trial(path: Path | str):
    """The smdebug trial in PATH (a local job's debug folder or a downloaded debug-output)."""
    from smdebug.trials import create_trial
    return create_trial(str(path))


def evaluate(base_trial, rules=RULES) -> list[RuleResult]:
    """Every rule over the trial (or the trial in a folder)."""
    if isinstance(base_trial, (str, Path)):
        base_trial = trial(base_trial)
    steps = base_trial.steps()
    with np.errstate(all="ignore"):  # exploded tensors overflow in the statistics; the rules say so
        return [run(rule_class(base_trial), steps) for rule_class in rules]


def losses(base_trial) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """{loss name: {"TRAIN"/"EVAL": (global steps, values)}} of the saved losses."""
    found = {}
    for name in base_trial.tensor_names(collection="losses"):
        tensor, series = base_trial.tensor(name), {}
        for mode in (modes.TRAIN, modes.EVAL):
            steps = [base_trial.global_step(mode, s) for s in tensor.steps(mode=mode)]
            values = [float(np.mean(tensor.value(s))) for s in steps]
            if steps:
                series[mode.name] = (steps, values)
        found[name] = series
    return found
