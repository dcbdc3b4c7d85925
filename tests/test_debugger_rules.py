"""The local Debugger rules: each fires on a run broken the way it looks for, and all stay quiet
on a healthy run (tests/recorded_runs.py records them with a real smdebug hook)."""
import subprocess
import sys
from pathlib import Path

import pytest

from launch import debugger_rules, jobs
from launch.debugger_rules import RULES

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("recorded")
    result = subprocess.run([sys.executable, str(HERE / "recorded_runs.py"), str(out)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_rule_fires_on_the_run_broken_its_way(runs, rule):
    [result] = debugger_rules.evaluate(runs / debugger_rules.rule_config_name(rule), rules=(rule,))
    assert result.status == "IssuesFound", result
    assert result.violations >= 1 and result.first_step is not None
    assert result.detail.startswith(f"step {result.first_step}: ")
    assert result.recommendation


def test_every_rule_is_quiet_on_the_healthy_run(runs):
    results = debugger_rules.evaluate(runs / "healthy")
    assert [r.rule for r in results] == [r.__name__ for r in RULES]
    for result in results:
        assert result.status == "NoIssuesFound", result
        assert result.datapoints > 0, result  # it judged something: quiet, not blind


def test_the_rules_are_the_ones_sagemaker_runs_for_our_jobs(monkeypatch):
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    from sagemaker.debugger import Rule, rule_configs
    assert [debugger_rules.rule_config_name(r) for r in RULES] == list(jobs.DEBUG_RULES)
    for rule in RULES:
        config = getattr(rule_configs, debugger_rules.rule_config_name(rule))()
        assert Rule.sagemaker(config).name == rule.__name__


def test_documented_defaults_and_unknown_parameters(runs):
    trial = debugger_rules.trial(runs / "healthy")
    assert debugger_rules.VanishingGradient(trial).parameters == {"threshold": 1e-7}
    assert debugger_rules.LossNotDecreasing(trial, num_steps=20).parameters["num_steps"] == 20
    with pytest.raises(ValueError, match="unknown parameter"):
        debugger_rules.Overfit(trial, patiense=2)


def test_a_rule_with_nothing_to_judge_says_so(runs):
    trial = debugger_rules.trial(runs / "healthy")
    result = debugger_rules.run(debugger_rules.LossNotDecreasing(trial, num_steps=1000), trial.steps())
    assert result.status == "NotEvaluated" and result.datapoints == 0, result


def test_loss_series_for_the_curves(runs):
    series = debugger_rules.losses(debugger_rules.trial(runs / "healthy"))
    [(name, modes)] = series.items()
    assert name == "CrossEntropyLoss_output_0"
    train_steps, train_values = modes["TRAIN"]
    eval_steps, _ = modes["EVAL"]
    assert len(train_steps) == 30 and len(eval_steps) == 3 * 2  # 3 validation passes of 2 batches
    assert not set(train_steps) & set(eval_steps)  # global steps: one sequence across modes
    assert train_values[-1] < train_values[0]
