"""precision.py: which training arithmetic a device gets, and what goes with it."""
import pytest
import torch

from image_classifier import precision
from image_classifier.errors import TrainingError

CPU = torch.device("cpu")


@pytest.mark.parametrize("has_bf16, expected", [(True, torch.bfloat16), (False, None)])
def test_auto_on_a_cpu_takes_bf16_only_where_the_cpu_has_it(monkeypatch, has_bf16, expected):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has_bf16)
    assert precision.resolve("auto", CPU) is expected


def test_explicit_choices_and_the_gpu_only_fp16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.resolve("fp32", CPU) is None
    assert precision.resolve("bf16", CPU) is torch.bfloat16  # obeyed even without the instructions
    with pytest.raises(TrainingError, match="precision=fp16 needs a GPU; on a CPU use bf16 or auto"):
        precision.resolve("fp16", CPU)


def test_auto_on_a_gpu_prefers_bf16_where_supported(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert precision.resolve("auto", cuda) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert precision.resolve("auto", cuda) is torch.float16
    assert precision.resolve("fp16", cuda) is torch.float16


def test_only_fp16_scales_the_loss_and_names_are_what_the_log_prints():
    assert precision.grad_scaler(torch.float16, CPU).is_enabled()
    assert not precision.grad_scaler(torch.bfloat16, CPU).is_enabled()
    assert not precision.grad_scaler(None, CPU).is_enabled()
    assert [precision.name(d) for d in (None, torch.bfloat16, torch.float16)] == ["fp32", "bf16", "fp16"]


def test_autocast_runs_a_matmul_in_the_chosen_dtype():
    a = torch.randn(4, 4)
    with precision.autocast(torch.bfloat16, CPU):
        assert (a @ a).dtype == torch.bfloat16
    with precision.autocast(None, CPU):
        assert (a @ a).dtype == torch.float32


def test_cpu_has_bf16_reads_the_cpu_flags(monkeypatch, tmp_path):
    flags = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision, "Path", lambda _: flags)
    for text, expected in (("flags : avx512f avx512_bf16", True), ("flags : amx_bf16 amx_tile", True),
                           ("flags : avx2 fma", False)):
        flags.write_text(text)
        assert precision.cpu_has_bf16() is expected
    flags.unlink()
    assert precision.cpu_has_bf16() is False  # no /proc/cpuinfo: no bf16
