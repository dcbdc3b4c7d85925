"""Files written by commit 644b089 still load with today's code: a model artifact, a checkpoint and a
feature cache made by that commit's own `train.run`, kept in tests/data/formats_644b089/.

What it proves:
- the artifact (model.json + model.pt) loads through serving's `model_fn` (artifact.load) and answers
  a real photo: three probabilities summing to 1; its manifest says what was trained;
- the checkpoint is accepted by `checkpoint.load` for the same hyperparameters and class folders, and
  refused for another backbone or other classes; its model, optimizer, scheduler, scaler and progress
  load into a freshly built model and optimizer as the training job's resume does, and training goes on;
- the feature cache is a hit: the evaluation view and training view 0 come from its files without a
  single backbone forward, and they are what today's code computes for those images.

How the fixtures were made (one epoch of 644b089's `train.run`: resnet18, 3 classes of 2 imagewoof10
photos shrunk to 96 px, image-size 64, trainable=head with cached features, constant weights so that
gzip shrinks the .pt files; make.py's docstring has the details):

    git worktree add /tmp/prev644 644b089
    PYTHONPATH=/tmp/prev644/container python tests/data/formats_644b089/make.py

The .pt files are stored gzipped; the tests gunzip them into tmp_path. The feature cache's key holds
each image's size and mtime (git keeps no mtime: the copies get the one make.py set) and the
frozen weights (rebuilt here with make.py's rule, `constant_weights`).
"""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

# --- the code under test: every image_classifier import is here, to repoint after a move ----------
from image_classifier import artifact, hyperparameters, image_folder, models, precision
from image_classifier.errors import TrainingError
from image_classifier.preprocessing import Preprocessing, train_transform
from image_classifier.serving import inference
from image_classifier.training import checkpoint, features, train
from image_classifier.training.state import RunState
# ----------------------------------------------------------------------------------------------------

FIXTURES = Path(__file__).resolve().parent / "data" / "formats_644b089"
INFO = json.loads((FIXTURES / "info.json").read_text())
RAW = {  # the hyperparameters make.py gave the job, as SageMaker sends them
    "backbone": "resnet18", "weights": "none", "trainable": "head", "epochs": "1", "batch-size": "8",
    "optimizer": "adamw", "lr": "0.001", "image-size": "64", "precision": "fp32", "num-workers": "0",
    "seed": "42", "cache-features": "true", "feature-views": "1", "feature-cache-dir": "features",
    "checkpoint-minutes": "0",
}
CLASS_FOLDERS = ["001.Shih-Tzu", "002.Rhodesian_ridgeback", "003.beagle"]
CLASS_NAMES = ["Shih-Tzu", "Rhodesian_ridgeback", "beagle"]
CPU = torch.device("cpu")


def _make_py():
    """make.py itself (its top level imports only the standard library): the weights rule it wrote
    the fixtures with is the one the tests rebuild them with."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("formats_644b089_make", FIXTURES / "make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


constant_weights = _make_py().constant_weights  # conv/linear 1/fan_in, biases 0, batch norm 1, 0, 0, 1


def unpacked(name: str, tmp_path: Path) -> Path:
    """A copy of the fixture folder `name` with every .gz file gunzipped (and the .gz gone)."""
    folder = shutil.copytree(FIXTURES / name, tmp_path / name)
    for packed in sorted(folder.glob("*.gz")):
        packed.with_suffix("").write_bytes(gzip.decompress(packed.read_bytes()))
        packed.unlink()
    return folder


def load_pt(path: Path) -> dict:
    return torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)


@pytest.fixture()
def hp():
    return hyperparameters.parse(RAW)


def test_fixtures_are_what_make_py_wrote():
    assert INFO["commit"] == "644b089" and INFO["hyperparameters"] == RAW
    assert sorted(p.parent.name for p in (FIXTURES / "images").glob("*/*.jpg")) == sorted(CLASS_FOLDERS * 2)


def test_artifact_serves_a_photo(tmp_path, monkeypatch):
    model_dir = unpacked("model", tmp_path)
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.json", "model.pt"]
    monkeypatch.delenv("SERVE_PRECISION", raising=False)  # auto: the manifest's serving measurements decide
    monkeypatch.delenv("SERVE_GRAPH", raising=False)

    model = inference.model_fn(str(model_dir))  # what the endpoint runs: artifact.load, then the precision

    manifest = model.manifest
    assert manifest == json.loads((model_dir / "model.json").read_text())
    assert manifest["format_version"] == artifact.FORMAT_VERSION == 1
    assert (manifest["backbone"], manifest["num_classes"]) == ("resnet18", 3)
    assert manifest["class_names"] == model.classes == CLASS_NAMES
    assert manifest["class_folders"] == CLASS_FOLDERS
    assert model.preprocessing == Preprocessing.from_json(manifest["preprocessing"]) \
        == models.preprocessing(models.pretrained_cfg("resnet18"), 64)
    assert manifest["weights_source"] == "random initialisation (weights=none)"
    expected = hyperparameters.as_dict(hyperparameters.parse(RAW))
    assert {k: manifest["hyperparameters"][k] for k in RAW} == {k: expected[k] for k in RAW}
    assert set(manifest["hyperparameters"]) <= set(hyperparameters.BY_NAME), "a hyperparameter of 644b089 is gone"
    metrics = manifest["metrics"]
    assert (metrics["best_epoch"], metrics["epochs_run"], len(metrics["history"])) == (1, 1, 1)
    assert set(metrics["evaluation"]) == {"valid"} and metrics["evaluation"]["valid"]["images"] == 6
    assert {"images", "top1_accuracy", "top1_accuracy_ci95", "top5_accuracy"} <= set(metrics["evaluation"]["valid"])
    assert {k: v["top1_agreement"] for k, v in metrics["serving"].items()} == {"cpu-bf16": 1.0,
                                                                              "cpu-bf16-autocast": 1.0}
    # auto reads the old manifest's measurements: bf16 agreed on every image, so a bf16 CPU serves bf16
    # (a GPU has no measurement of its own in it: fp32).
    assert model.precision == ("bf16" if model.device.type == "cpu" and precision.cpu_has_bf16() else "fp32")
    saved = load_pt(model_dir / "model.pt")
    assert saved.keys() == model.eager.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.eager.state_dict().items())

    photo = sorted((FIXTURES / "images").glob("002.*/*.jpg"))[0].read_bytes()
    batch = inference.input_fn(photo, "image/jpeg", model=model)
    assert batch.images.shape == (1, 3, 64, 64)
    found = inference.predict_fn(batch, model)
    assert found.probabilities.shape == (1, 3)
    assert float(found.probabilities.sum()) == pytest.approx(1.0, abs=1e-4)
    assert bool((found.probabilities >= 0).all())
    with torch.no_grad():  # the fp32 network as trained agrees with what was served (fp32 or bf16)
        eager = torch.softmax(model.eager(models.batch_to(batch.images, model.device)).float(), 1)
    torch.testing.assert_close(found.probabilities.float(), eager, atol=0.02, rtol=0)
    body, content_type = inference.output_fn(found, "application/json", model)
    answer = json.loads(body)["predictions"][0]
    assert content_type == "application/json" and answer["label"] in CLASS_NAMES and len(answer["top_k"]) == 3


def test_checkpoint_is_accepted_and_resumes(tmp_path, hp):
    folder = unpacked("checkpoints", tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [checkpoint.BEST_FILE, checkpoint.STATE_FILE,
                                                        checkpoint.WRITTEN_FILE]
    hp_dict = hyperparameters.as_dict(hp)

    with pytest.raises(TrainingError, match="another configuration.*backbone 'resnet18' -> 'resnet34'"):
        checkpoint.load(folder, {**hp_dict, "backbone": "resnet34"}, CLASS_FOLDERS)
    with pytest.raises(TrainingError, match="other classes"):
        checkpoint.load(folder, hp_dict, CLASS_FOLDERS[:2])
    saved = checkpoint.load(folder, hp_dict, CLASS_FOLDERS)
    assert set(saved) == {"model", "optimizer", "scheduler", "scaler", "progress", "hyperparameters", "class_folders"}
    assert {k: json.loads(saved["hyperparameters"])[k] for k in RAW} == {k: hp_dict[k] for k in RAW}
    assert json.loads(saved["class_folders"]) == CLASS_FOLDERS
    assert isinstance(json.loads((folder / checkpoint.WRITTEN_FILE).read_text())["unix_seconds"], float)

    # A fresh job's objects, built as `run` builds them (train.run_state); then the job's own resume.
    model, backbone, _ = models.build(hp.backbone, hp.weights, 3)
    models.freeze(model, backbone, hp.trainable)
    models.to_device(model, CPU)
    optimizer = train.build_optimizer([p for p in model.parameters() if p.requires_grad], hp.optimizer, hp.lr,
                                      hp.momentum, hp.weight_decay)
    steps_per_epoch = 1  # six images, batch-size 8
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, train.warmup_cosine(
        hp.epochs * steps_per_epoch, int(hp.warmup_epochs * steps_per_epoch)))
    amp = precision.resolve(hp.precision, CPU)
    scaler = precision.grad_scaler(amp, CPU)
    head_net = features.Head(model, backbone.head)  # what a step runs with cached features
    state = RunState(hp=hp, model=model, net=head_net, step_net=head_net, criterion=nn.CrossEntropyLoss(),
                     optimizer=optimizer, scheduler=scheduler, scaler=scaler, amp=amp, device=CPU,
                     debug=None,  # resume does not touch Debugger's hook
                     checkpoint_dir=folder, class_folders=CLASS_FOLDERS, steps_per_epoch=steps_per_epoch)
    state.resume()
    progress = state.progress

    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved["model"].items())
    assert saved["scaler"] == scaler.state_dict() == {}  # fp32: the scaler is off, its state empty
    assert (progress.epoch, progress.batches_done, progress.best_epoch, len(progress.history)) == (1, 0, 1, 1)
    assert progress.history[0]["valid_images"] == 6
    assert scheduler.last_epoch == 1 and scheduler.get_last_lr() == [0.0]  # one step of a one-step cosine
    head = [model.fc.weight, model.fc.bias]
    assert [float(optimizer.state[p]["step"]) for p in head] == [1.0, 1.0]
    assert [optimizer.state[p]["exp_avg"].shape for p in head] == [(3, 512), (3,)]
    reference = constant_weights(models.build_for_inference("resnet18", 3)).state_dict()
    backbone_state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(v, reference[k]) for k, v in backbone_state.items()), "the frozen backbone changed"
    assert not torch.equal(model.fc.weight, reference["fc.weight"]), "the head's optimizer step is not there"

    # Training goes on from the loaded state: one more step of the head.
    before = model.fc.weight.detach().clone()
    loss = nn.functional.cross_entropy(model.fc(torch.ones(2, 512)), torch.tensor([0, 2]))
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    assert [float(optimizer.state[p]["step"]) for p in head] == [2.0, 2.0]
    # The step ran at the restored schedule's lr, 0 (the one-epoch run had finished): a fresh
    # scheduler's 1e-3 would have moved the weights.
    assert torch.equal(model.fc.weight, before) and torch.isfinite(model.fc.weight).all()

    best = checkpoint.load_best(folder)  # the best epoch is the only one: the checkpoint's weights
    fresh = models.build_for_inference("resnet18", 3)
    fresh.load_state_dict(best)
    assert all(torch.equal(best[k], v) for k, v in saved["model"].items())


def test_feature_cache_is_a_hit(tmp_path, hp, monkeypatch):
    cache_dir = unpacked("feature_cache", tmp_path)
    stored = [load_pt(path) for path in sorted(cache_dir.iterdir())]
    images = shutil.copytree(FIXTURES / "images", tmp_path / "images")
    for path in images.rglob("*.jpg"):  # the key holds each file's mtime, which git does not keep
        os.utime(path, ns=(INFO["image_mtime_ns"], INFO["image_mtime_ns"]))
    if torch.__version__ != INFO["versions"]["torch"]:  # the key holds torch's version: a new torch misses
        monkeypatch.setattr(torch, "__version__", INFO["versions"]["torch"])  # by design; the rest must hit

    channel = image_folder.scan("train", images)
    assert channel.folders == CLASS_FOLDERS and len(channel.samples) == 6
    pre = models.preprocessing(models.pretrained_cfg(hp.backbone), hp.image_size)
    amp = precision.resolve(hp.precision, CPU)
    model = models.to_device(constant_weights(models.build_for_inference(hp.backbone, 3)), CPU)
    calls = []

    def no_backbone(module, args):
        calls.append(args[0].shape)
        raise AssertionError("the backbone ran: the feature cache missed")

    hook = model.conv1.register_forward_pre_hook(no_backbone)  # the backbone's first layer
    cache_settings = dict(seed=hp.seed, batch_size=hp.batch_size, num_workers=hp.num_workers)  # as `run` gives them
    cache = features.FeatureCache(cache_dir, model, "fc", pre, amp, CPU, **cache_settings)
    evaluated = cache.eval_view(channel)
    trained = cache.train_view(channel, 0, train_transform(pre))
    assert calls == []
    assert sorted(p.name for p in cache_dir.iterdir()) == [n.removesuffix(".gz") for n in INFO["feature_cache_files"]]
    for found in (evaluated, trained):
        assert found.features.shape == (6, 512)
        assert found.labels.tolist() == [0, 0, 1, 1, 2, 2] and bool(found.ok.all())
    matches = [[torch.equal(found.features, s["features"]) for s in stored] for found in (evaluated, trained)]
    assert sorted(matches) == [[False, True], [True, False]], "each view is one stored file's features"

    # What was stored is what today's code computes for those images (no cache folder: it must compute).
    hook.remove()
    fresh = features.FeatureCache(None, model, "fc", pre, amp, CPU, **cache_settings)
    torch.testing.assert_close(fresh.eval_view(channel).features, evaluated.features, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(fresh.train_view(channel, 0, train_transform(pre)).features, trained.features,
                               rtol=1e-4, atol=1e-3)
