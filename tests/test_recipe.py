"""The fine-tuning recipe's mixup/cutmix (training/mixing.py) and average of the weights
(training/ema.py): when each is on, what a batch becomes, which weights an epoch keeps."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from image_classifier import hyperparameters
from image_classifier.errors import TrainingError
from image_classifier.training import checkpoint, ema, epochs, mixing
from image_classifier.training.state import Progress


@pytest.mark.parametrize("raw, value", [("auto", "auto"), (" AUTO ", "auto"), ("0", 0.0), ("0.2", 0.2)])
def test_mixing_alphas_parse(raw, value):
    assert hyperparameters.parse({"mixup": raw, "cutmix": raw}).mixup == value


@pytest.mark.parametrize("raw", ["-0.1", "nan", "inf", "some"])
def test_a_bad_alpha_is_refused(raw):
    with pytest.raises(TrainingError, match="hyperparameter 'cutmix'"):
        hyperparameters.parse({"cutmix": raw})


def test_auto_mixes_only_from_bits_threshold_and_numbers_always(caplog):
    caplog.set_level("INFO")
    below, at = hyperparameters.MIX_MIN_IMAGES - 1, hyperparameters.MIX_MIN_IMAGES
    assert mixing.alphas("auto", "auto", below, False) == {"mixup": 0.0, "cutmix": 0.0}
    assert "mixup and cutmix off (auto: 19999 training images, < 20000)" in caplog.text
    assert mixing.alphas("auto", "auto", at, False) == hyperparameters.MIX_DEFAULTS
    assert mixing.alphas(0.4, "auto", below, False) == {"mixup": 0.4, "cutmix": 0.0}
    assert mixing.alphas(0.0, "auto", at, False) == {"mixup": 0.0, "cutmix": 1.0}
    assert mixing.create({"mixup": 0.0, "cutmix": 0.0}, 3) is None


def test_cached_features_turn_auto_off_and_refuse_a_number():
    assert mixing.alphas("auto", "auto", 10**6, True) == {"mixup": 0.0, "cutmix": 0.0}
    assert mixing.alphas(0.0, "auto", 10**6, True) == {"mixup": 0.0, "cutmix": 0.0}
    with pytest.raises(TrainingError, match="cutmix=1 mixes images.*set cache-features=false to mix"):
        mixing.alphas("auto", 1.0, 10, True)


@pytest.mark.parametrize("chosen", [{"mixup": 0.4, "cutmix": 0.0}, {"mixup": 0.0, "cutmix": 1.0},
                                    {"mixup": 0.2, "cutmix": 1.0}])
@pytest.mark.parametrize("batch", [1, 3, 8])  # any size: the batch is mixed with itself rolled by one
def test_a_mixed_batch_keeps_its_shape_and_its_labels_become_probabilities(chosen, batch):
    torch.manual_seed(0)
    images, labels = torch.rand(batch, 3, 16, 16), torch.randint(0, 5, (batch,))
    mixed, targets = mixing.create(chosen, 5)(images, labels)
    assert mixed.shape == images.shape and targets.shape == (batch, 5)
    assert torch.allclose(targets.sum(1), torch.ones(batch)) and (targets >= 0).all()
    # every image's own label keeps the larger share (lambda >= 0.5 is not guaranteed; its share is > 0)
    assert (targets[torch.arange(batch), labels] > 0).all()
    loss = nn.CrossEntropyLoss(label_smoothing=0.1)(torch.randn(batch, 5), targets)
    assert torch.isfinite(loss)


def test_mixing_changes_the_pixels():
    torch.manual_seed(1)
    images, labels = torch.rand(8, 3, 16, 16), torch.arange(8) % 4
    mixed, targets = mixing.create({"mixup": 1.0, "cutmix": 0.0}, 4)(images, labels)
    assert not torch.equal(mixed, images) and not torch.equal(targets.argmax(1), targets.argmin(1))


# --- the average of the weights ------------------------------------------------------------------
def test_the_average_warms_up_from_the_trained_weights_and_lags_them_later():
    torch.manual_seed(0)
    net = nn.Linear(4, 2)
    average = ema.WeightAverage(net, decay=0.9)
    with torch.no_grad():
        net.weight.add_(1.0)
    average.update(net, step=1)  # timm's warm-up: decay 0 at the first step, a copy
    assert torch.equal(average.net.weight, net.weight)
    before = average.net.weight.clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    average.update(net, step=1000)  # decay capped at 0.9
    assert torch.allclose(average.net.weight, 0.9 * before + 0.1 * net.weight)
    restored = ema.WeightAverage(net, decay=0.9)
    restored.load_state_dict(average.state_dict())
    assert torch.equal(restored.net.weight, average.net.weight)
    assert ema.create(net, 0.0) is None


def _run(tmp_path, net, average):
    """What end_epoch reads of a run: a linear 'model' trained whole, two classes."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    return SimpleNamespace(
        hp=hyperparameters.parse({"epochs": "3", "ema-decay": "0.9"}), progress=Progress(seen=4, correct=2,
                                                                                       loss_sum=2.0),
        net=net, model=net, ema=average, criterion=nn.CrossEntropyLoss(), device=torch.device("cpu"), debug=None,
        world=epochs.SINGLE, scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        profiling=SimpleNamespace(timer=SimpleNamespace(summary=lambda: "")), checkpoint_dir=tmp_path,
        scalars=SimpleNamespace(epoch=lambda row, lr: None))


VALID = [(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 1, 0, 1]), 0)]


def _linear(right: bool) -> nn.Linear:
    net = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(2) if right else 1 - torch.eye(2))
    return net


@pytest.mark.parametrize("averaged_right", [True, False])
def test_an_epoch_keeps_the_average_only_where_it_scores_better(tmp_path, averaged_right, capsys):
    net = _linear(right=not averaged_right)
    average = ema.WeightAverage(net, decay=0.9)
    average.load_state_dict(_linear(right=averaged_right).state_dict())
    run = _run(tmp_path, net, average)
    epochs.end_epoch(run, VALID, started=0.0)
    row = run.progress.history[-1]
    assert row["kept"] == ("ema" if averaged_right else "model")
    assert (row["valid_acc"], row["ema_valid_acc"]) == ((0.0, 1.0) if averaged_right else (1.0, 0.0))
    assert run.progress.best_row()["valid_acc"] == 1.0 == run.progress.best_acc
    saved = checkpoint.load_best(tmp_path)["weight"]
    assert torch.equal(saved, torch.eye(2))  # the weights that scored 1.0, whichever they were
    assert torch.equal(net.weight, torch.eye(2) if not averaged_right else 1 - torch.eye(2))  # training goes on
    line = capsys.readouterr().out
    assert f"valid_acc={row['valid_acc']:.4f}" in line and f"ema_acc={row['ema_valid_acc']:.4f}" in line


def test_a_tie_keeps_the_trained_weights(tmp_path):
    net = _linear(right=True)
    run = _run(tmp_path, net, ema.WeightAverage(net, decay=0.9))
    epochs.end_epoch(run, VALID, started=0.0)
    assert run.progress.history[-1]["kept"] == "model"
