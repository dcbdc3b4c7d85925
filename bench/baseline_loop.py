"""The baseline every training benchmark is measured against: the typical course-project loop.

torchvision's ImageFolder, the usual transforms (Resize, RandomResizedCrop, flip, ToTensor,
Normalize), a DataLoader with its defaults (no worker processes), fp32 in the default memory
format, and a plain forward/backward/step. The model is ours (same architecture, weights and
frozen layers), so the comparison is about everything around it.
"""
from __future__ import annotations

import time

import torch
from torch import nn

import image_classifier.vision  # noqa: F401 - torchvision's op schemas (see docs/DEPENDENCIES.md)
import torchvision
from torchvision import transforms

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def loader(train_dir, batch_size: int, image_size: int = 224):
    transform = transforms.Compose([
        transforms.Resize(256),
        transforms.RandomResizedCrop(image_size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    dataset = torchvision.datasets.ImageFolder(str(train_dir), transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)


def train(model: nn.Module, train_dir, epochs: int, batch_size: int, lr: float = 1e-3) -> list[dict]:
    """Train; per epoch: seconds and images per second (training only, as `train` reports them)."""
    data = loader(train_dir, batch_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    criterion = nn.CrossEntropyLoss()
    model.train()
    epochs_run = []
    for epoch in range(epochs):
        started, seen = time.perf_counter(), 0
        for images, labels in data:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            seen += len(labels)
        seconds = time.perf_counter() - started
        epochs_run.append({"epoch": epoch + 1, "seconds": seconds, "images_per_second": seen / seconds})
    return epochs_run
