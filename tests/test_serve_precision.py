"""Serving precision: what SERVE_PRECISION and the hardware choose, the agreement guard, and the
reduced-precision network against fp32."""
import pytest
import torch

from image_classifier import models, precision
from image_classifier.precision import PrecisionError
from image_classifier.serving.environment import PRECISION as SETTING

CPU = torch.device("cpu")


def manifest(agreement=None, images=250, autocast=None):
    serving = {} if agreement is None else {"cpu-bf16": {"images": images, "top1_agreement": agreement}}
    if autocast is not None:
        serving["cpu-bf16-autocast"] = {"images": images, "top1_agreement": autocast}
    return {"metrics": {"serving": serving}}


def test_auto_takes_the_fastest_mode_that_agrees(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.choose("auto", CPU, manifest(0.992, autocast=0.996), SETTING)[0] == "bf16-autocast"
    assert precision.choose("auto", CPU, manifest(0.996, autocast=1.0), SETTING)[0] == "bf16"
    name, why = precision.choose("auto", CPU, manifest(0.992, autocast=0.99), SETTING)
    assert name == "fp32" and why == ("auto: top-1 agreement with fp32 under 99.5% (bf16 99.20% of 250, "
                                      "bf16-autocast 99.00% of 250 images)")


def test_fp16_needs_a_gpu():
    with pytest.raises(PrecisionError, match="SERVE_PRECISION=fp16 needs a GPU"):
        precision.choose("fp16", CPU, manifest(1.0), SETTING)


@pytest.mark.parametrize("has_bf16, measured, expected, why", [
    (True, 1.0, "bf16", "auto: bf16 agreed with fp32 on 100.00% of 250 images when trained"),
    (True, 0.996, "bf16", "agreed with fp32 on 99.60%"),
    (True, 0.99, "fp32", "auto: top-1 agreement with fp32 under 99.5% (bf16 99.00% of 250 images)"),
    (True, None, "fp32", "auto: model.json has no cpu-bf16 agreement measurement"),
    (False, 1.0, "fp32", "auto: this CPU has no bf16 instructions"),
])
def test_auto_serves_bf16_only_where_the_cpu_has_it_and_training_measured_agreement(monkeypatch, has_bf16, measured,
                                                                                    expected, why):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has_bf16)
    name, reason = precision.choose("auto", CPU, manifest(measured), SETTING)
    assert name == expected and why in reason


def test_an_explicit_precision_is_obeyed_even_without_a_measurement():
    assert precision.choose("bf16", CPU, manifest(None), SETTING) == ("bf16", "SERVE_PRECISION=bf16")
    assert precision.choose("fp32", CPU, manifest(1.0), SETTING) == ("fp32", "SERVE_PRECISION=fp32")


def test_the_bf16_graph_is_close_to_fp32_and_leaves_the_network_alone():
    torch.manual_seed(0)
    network = models.build_for_inference("resnet18", 5).eval()
    network = models.to_device(network, CPU)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    for mode in ("bf16", "bf16-autocast"):
        served = precision.prepare(network, mode, CPU, 64)
        assert isinstance(served.network, torch.jit.ScriptModule) and served.dtype == torch.bfloat16
        assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())  # still fp32, untouched
        with torch.inference_mode():
            p32, p16 = torch.softmax(network(x), 1), torch.softmax(served(x), 1)
            assert served(x[:1]).dtype == torch.float32  # any batch size, fp32 out
        assert (p32 - p16).abs().max() < 0.05, mode
    fp32 = precision.prepare(network, "fp32", CPU, 64)
    with torch.inference_mode():
        assert torch.equal(fp32(x), network(x))


def test_check_counts_agreement_and_accuracy():
    class Flip(torch.nn.Module):  # "served": swaps the two classes of the first image only
        def forward(self, x):
            out = reference(x)
            out[0] = out[0].flip(0)
            return out

    def reference(x):
        return torch.stack([x[:, 0, 0, 0], -x[:, 0, 0, 0]], 1)

    images = torch.tensor([1.0, 2.0, -1.0, -2.0]).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()
    labels = torch.tensor([0, 0, 1, 0])
    found = precision.check(reference, {"flip": Flip(), "same": reference}, [(images, labels, 0), (None, None, 2)], CPU)
    result = found["flip"]
    assert result["images"] == 4 and result["top1_agreement"] == 0.75
    assert result["accuracy_fp32"] == 0.75 and result["accuracy"] == 0.5
    assert 0.5 < result["max_probability_difference"] <= 1
    assert found["same"] == {"images": 4, "top1_agreement": 1.0, "max_probability_difference": 0.0,
                             "accuracy_fp32": 0.75, "accuracy": 0.75}


def test_the_compiled_graph_agrees_and_is_ready_for_the_handlers_calls():
    """torch.compile in bf16: close to fp32, and compiled for what predict_many sends (an inference
    tensor under inference_mode), so that no worker compiles again at its first request."""
    torch.manual_seed(0)
    network = models.to_device(models.build_for_inference("resnet18", 5).eval(), CPU)
    served = precision.prepare(network, "bf16", CPU, 32, "compiled")
    compiled_before = torch_dynamo_graphs()
    with torch.inference_mode():
        x = torch.randn(1, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        p16, p32 = torch.softmax(served(x), 1), torch.softmax(network(x), 1)
    assert torch_dynamo_graphs() == compiled_before  # no recompilation
    assert (p16 - p32).abs().max() < 0.05 and p16.dtype == torch.float32


def torch_dynamo_graphs() -> int:
    import torch._dynamo
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_one_vocabulary_of_precisions():
    """SERVE_PRECISION's choices are precision.py's serving modes; the training hyperparameter's
    are the same words (training has no bf16-autocast: autocast is how it trains in bf16)."""
    from image_classifier import hyperparameters
    from image_classifier.serving import environment
    assert environment.PRECISIONS == ("auto", "fp32", *precision.DTYPES)
    assert hyperparameters.BY_NAME["precision"].choices == ("auto", "fp32", "bf16", "fp16")
    assert set(hyperparameters.BY_NAME["precision"].choices) < set(environment.PRECISIONS)
