"""The job's channels: train (required), valid (else a stratified split of train), test, and a
'pretrained' weights file or timm folder; with several hosts, a check that every host sees the same files."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from .. import image_folder, weights
from ..errors import TrainingError
from ..image_folder import Channel
from . import distributed
from .distributed import World

log = logging.getLogger(__name__)

CHANNELS = ("train", "valid", "test", "pretrained")
WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")  # a state_dict, as weights.read_weights_file reads it


def load(channels: dict[str, Path], valid_fraction: float, seed: int) -> tuple[Channel, Channel, Channel | None]:
    """(train, valid, test or None), scanned and checked against each other."""
    unknown = sorted(set(channels) - set(CHANNELS))
    if unknown:
        raise TrainingError(f"unknown channel(s): {', '.join(unknown)} (expected {', '.join(CHANNELS)})")
    if "train" not in channels:
        raise TrainingError("no 'train' channel: give one with class folders of images")
    train = image_folder.scan("train", channels["train"])
    if len(train.folders) < 2:
        raise TrainingError(f"channel 'train' has {len(train.folders)} class folder; need at least 2 classes")
    if "valid" in channels:
        valid = image_folder.scan("valid", channels["valid"])
        image_folder.check_same_classes(train, valid)
    else:
        train, valid = image_folder.stratified_split(train, valid_fraction, seed)
        log.info("no 'valid' channel: held out %d of %d train images (stratified)", len(valid.samples),
                 len(valid.samples) + len(train.samples))
    test = None
    if "test" in channels:
        test = image_folder.scan("test", channels["test"])
        image_folder.check_same_classes(train, test)
    log.info("classes: %d; images: train %d, valid %d, test %s", len(train.classes), len(train.samples),
             len(valid.samples), len(test.samples) if test else "none")
    return train, valid, test


def pretrained(channels: dict[str, Path], backbone: str) -> Path | None:
    """The 'pretrained' channel's weights: a timm local-dir folder (its config.json beside the
    weights), else one weights file (or the one named after the backbone)."""
    if "pretrained" not in channels:
        return None
    root = Path(channels["pretrained"])
    configs = sorted(p.parent for p in root.rglob(weights.LOCAL_DIR_CONFIG)
                     if any((p.parent / f).is_file() for f in weights.LOCAL_DIR_WEIGHTS))
    if len(configs) == 1:
        return configs[0]
    if len(configs) > 1:
        raise TrainingError(f"channel 'pretrained' has {len(configs)} timm local-dir folders; give one")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHTS_SUFFIXES)
    named = [p for p in files if p.stem == backbone]
    if len(files) == 1 or len(named) == 1:
        return (named or files)[0]
    if not files:
        raise TrainingError(f"channel 'pretrained' has no weights file ({', '.join(WEIGHTS_SUFFIXES)}) and no "
                            f"timm local-dir folder ({weights.LOCAL_DIR_CONFIG} + "
                            f"{' or '.join(weights.LOCAL_DIR_WEIGHTS)}); looked in {root}")
    raise TrainingError(f"channel 'pretrained' has {len(files)} weights files; name one {backbone}.safetensors")


def check_shared(world: World, channels: list, device) -> None:
    """Every host must see the same files (each trains on its shard of the leader's order): a
    channel that SageMaker shards by S3 key, or a copy that differs, fails every host alike. And
    every process needs an image of train."""
    if not world.distributed:
        return
    h = hashlib.blake2b(digest_size=16)
    for ch in channels:
        for path, label in (ch.samples if ch else []):
            h.update(f"{ch.name}\0{os.path.relpath(path, ch.root)}\0{os.path.getsize(path)}\0{label}\n".encode())
    mine = h.hexdigest()
    leaders = distributed.from_leader(world, lambda: mine)
    if distributed.anyone(world, [mine != leaders], device)[0]:
        raise TrainingError("the hosts do not see the same data (file names, sizes or classes differ between their "
                            "channels); give every host all of it (S3DataDistributionType FullyReplicated)")
    if len(channels[0].samples) < world.size:
        raise TrainingError(f"channel 'train' has {len(channels[0].samples)} images: fewer than the job's "
                            f"{world.size} processes")
