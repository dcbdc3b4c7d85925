"""What each step of an epoch trains on. ImageBatches: decoded, augmented images through the
whole network. FeatureBatches (trainable=head with cache-features): the head on the frozen
backbone's cached features (features.py), the same steps in the same shuffle, a fraction of the
time. Both give an epoch's training steps and the validation batches, each rank its shard."""
from __future__ import annotations

import torch

from .. import models
from ..preprocessing import Augmentation, Preprocessing, eval_transform, train_transform
from . import data, distributed, features
from .distributed import World


def image_loader(samples, transform, draft_size: int, batch_size: int, num_workers: int, sampler=None,
                 drop_last: bool = False):
    return data.loader(data.ImageDataset(samples, transform, draft_size), batch_size, num_workers, sampler,
                       drop_last)


class ImageBatches:
    """Each step decodes and augments images (DataLoaders) and runs the whole network."""

    def __init__(self, *, model, train, valid, pre: Preprocessing, aug: Augmentation, batch_size: int,
                 num_workers: int, sampler, drop_last: bool, world: World):
        self.net = model
        self.blank = torch.zeros(1, 3, pre.image_size, pre.image_size)  # a step's input shape
        batch = batch_size // world.size
        self._train = image_loader(train.samples, train_transform(pre, aug), pre.image_size, batch, num_workers,
                                   sampler, drop_last)
        self._valid = image_loader(distributed.shard(world, valid.samples), eval_transform(pre), pre.resize_size,
                                   batch, num_workers)

    def train(self, epoch: int, stop):
        return self._train

    def valid(self):
        return self._valid


class FeatureBatches:
    """Each step runs the head on the frozen backbone's cached features (features.py); the backbone
    runs in the first feature-views epochs only, when train() computes that epoch's view."""

    def __init__(self, *, cache: features.FeatureCache, model, head: str, train, valid, pre: Preprocessing,
                 aug: Augmentation, batch_size: int, views: int, sampler, drop_last: bool, world: World):
        self.net = features.Head(model, head)
        self.blank = torch.zeros(1, models.classifier_width(model, head))
        self.cache, self.train_ch, self.valid_ch, self.pre, self.views = cache, train, valid, pre, views
        self.aug = aug
        self.sampler, self.drop_last, self.world = sampler, drop_last, world
        self.batch = batch_size // world.size

    def train(self, epoch: int, stop):
        view = self.cache.train_view(self.train_ch, epoch % self.views, train_transform(self.pre, self.aug), stop,
                                     self.aug)
        return features.batches(view, list(self.sampler), self.batch, self.drop_last)

    def valid(self):
        view = self.cache.eval_view(self.valid_ch)
        order = distributed.shard(self.world, list(range(len(self.valid_ch.samples))))
        return features.batches(view, order, self.batch, False)
