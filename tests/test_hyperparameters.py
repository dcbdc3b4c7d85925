import pytest

from image_classifier import hyperparameters as hps
from image_classifier.errors import TrainingError


def test_defaults_cover_every_hyperparameter_the_issue_names():
    names = set(hps.BY_NAME)
    assert {"backbone", "weights", "epochs", "batch-size", "lr", "weight-decay", "optimizer", "trainable",
            "image-size", "label-smoothing", "seed", "num-workers", "early-stopping-patience"} <= names
    ns = hps.parse({})
    assert ns.backbone == "resnet50" and ns.batch_size == 32 and ns.trainable == "head"


def test_strings_as_sagemaker_sends_them_parse_to_types():
    ns = hps.parse({"epochs": "3", "lr": "1e-4", "batch-size": "16", "backbone": "resnet18",
                    "label-smoothing": "0.1", "sagemaker_program": "x", "_tuning_objective_metric": "valid:accuracy"})
    assert (ns.epochs, ns.lr, ns.batch_size, ns.backbone, ns.label_smoothing) == (3, 1e-4, 16, "resnet18", 0.1)


@pytest.mark.parametrize("raw, message", [
    ({"epochs": "2.5"}, "hyperparameter 'epochs' must be int, got '2.5'"),
    ({"lr": "fast"}, "hyperparameter 'lr' must be float"),
    ({"trainable": "everything"}, "hyperparameter 'trainable' must be one of all, last-stage, head"),
    ({"batch-size": "0"}, "hyperparameter 'batch-size' must be >= 1"),
    ({"learning-rate": "0.1"}, "unknown hyperparameter(s): learning-rate"),
    ({"lr": "nan"}, "hyperparameter 'lr' must be a finite number, got 'nan'"),
    ({"lr": "-inf"}, "hyperparameter 'lr' must be a finite number, got '-inf'"),
    ({"warmup-epochs": "1e999"}, "hyperparameter 'warmup-epochs' must be a finite number, got '1e999'"),
    ({"weight-decay": "-0.1"}, "hyperparameter 'weight-decay' must be >= 0.0"),
    ({"debug-interval": "0"}, "hyperparameter 'debug-interval' must be >= 1"),
    ({"num-workers": "-2"}, "hyperparameter 'num-workers' must be >= -1"),
    ({"seed": "-1"}, "hyperparameter 'seed' must be >= 0"),
    ({"seed": str(2**32)}, "hyperparameter 'seed' must be <= 4294967295"),
])
def test_bad_values_fail_with_the_name_and_value(raw, message):
    with pytest.raises(TrainingError) as e:
        hps.parse(raw)
    assert message in str(e.value)


def test_to_sagemaker_round_trips_through_the_containers_parser():
    values = {"epochs": 4, "lr": 0.0003, "backbone": "efficientnet_lite0", "label-smoothing": 0.1}
    sent = hps.to_sagemaker(values)
    assert all(isinstance(v, str) for v in sent.values())
    parsed = hps.as_dict(hps.parse(sent))
    assert {k: parsed[k] for k in values} == values


def test_to_sagemaker_refuses_what_the_container_would_refuse():
    with pytest.raises(ValueError):
        hps.to_sagemaker({"epoch": 3})
    with pytest.raises(TrainingError):
        hps.to_sagemaker({"optimizer": "lion"})


def test_help_text_lists_every_hyperparameter():
    text = hps.help_text()
    assert all(hp.name in text for hp in hps.HYPERPARAMETERS)
