"""Small training runs, healthy and deliberately broken, recorded with a real smdebug hook for the
Debugger rule tests. Each run trains an MLP on Gaussian blobs (full batch, so that the healthy
run's loss is smooth) and saves losses, weights, biases, gradients and ReLU inputs at every step,
in TRAIN and EVAL modes, as our jobs do.

    python tests/recorded_runs.py OUT     # OUT/<run>/ holds each run's trial

A separate process: smdebug marks a trial complete from its atexit handler.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

CLASSES, FEATURES = 3, 10


def blobs(n: int, seed: int, random_labels: bool = False):
    centers = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(0)) * 0.7  # overlapping classes
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % CLASSES
    x = centers[y] + torch.randn(n, FEATURES, generator=g)
    if random_labels:
        y = torch.randint(0, CLASSES, (n,), generator=g)
    return x, y


class MLP(nn.Module):
    """Linear layers named fc<i>, each followed by an activation named block<i>_relu (saved as
    block<i>_relu_input_0, which PoorWeightInitialization's default regex matches)."""

    def __init__(self, depth: int = 2, width: int = 32, activation=nn.ReLU):
        super().__init__()
        sizes = [FEATURES] + [width] * depth
        for i in range(depth):
            setattr(self, f"fc{i}", nn.Linear(sizes[i], sizes[i + 1]))
            setattr(self, f"block{i}_relu", activation())
        self.depth = depth
        self.head = nn.Linear(width, CLASSES)

    def forward(self, x):
        for i in range(self.depth):
            x = getattr(self, f"block{i}_relu")(getattr(self, f"fc{i}")(x))
        return self.head(x)


def record(out: Path, model: nn.Module, steps: int, lr: float, optimizer=torch.optim.SGD, n_train: int = 3000,
           random_labels: bool = False, eval_every: int = 10) -> None:
    import smdebug.pytorch as smd
    torch.manual_seed(0)
    x, y = blobs(n_train, seed=1, random_labels=random_labels)
    xv, yv = blobs(120, seed=2, random_labels=random_labels)
    hook = smd.Hook(out_dir=str(out), save_config=smd.SaveConfig(save_interval=1),
                    include_collections=["losses", "weights", "biases", "gradients", "relu_input"])
    hook.get_collection("relu_input").include(".*relu_input")
    criterion = nn.CrossEntropyLoss()
    hook.register_module(model)
    hook.register_loss(criterion)
    opt = optimizer(model.parameters(), lr=lr)
    for step in range(steps):
        hook.set_mode(smd.modes.TRAIN)
        loss = criterion(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % eval_every == 0:
            hook.set_mode(smd.modes.EVAL)
            with torch.no_grad():
                for chunk in range(0, len(xv), 60):  # a validation pass of two batches
                    criterion(model(xv[chunk:chunk + 60]), yv[chunk:chunk + 60])
    hook.close()


def scaled(model: MLP, **scales) -> MLP:
    with torch.no_grad():
        for name, scale in scales.items():
            getattr(model, name).weight.mul_(scale)
    return model


def sigmoid_tower() -> MLP:
    """Ten sigmoid layers with small weights: each layer shrinks the gradient ~10x."""
    model = MLP(depth=10, activation=nn.Sigmoid)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.05)
    return model


RUNS = {
    # the same network, trained well: every rule stays quiet
    "healthy": lambda out: record(out, MLP(), steps=30, lr=0.005, optimizer=torch.optim.Adam),
    # gradients vanish through ten saturating layers
    "vanishing_gradient": lambda out: record(out, sigmoid_tower(), steps=12, lr=0.05),
    # a learning rate that overflows the weights within a few steps
    "exploding_tensor": lambda out: record(out, MLP(), steps=12, lr=1e18),
    # memorizes 30 randomly labelled points; validation labels are random too
    "overfit": lambda out: record(out, MLP(width=128), steps=60, lr=0.01, optimizer=torch.optim.Adam, n_train=30,
                                  random_labels=True),
    # trained long after the loss stopped improving
    "overtraining": lambda out: record(out, MLP(), steps=200, lr=0.05, optimizer=torch.optim.Adam),
    # one layer's weights 30x too large, the next 30x too small
    "poor_weight_initialization": lambda out: record(out, scaled(MLP(), fc0=30.0, fc1=1 / 30), steps=12, lr=0.01),
    # a learning rate of zero: the loss never moves
    "loss_not_decreasing": lambda out: record(out, MLP(), steps=30, lr=0.0),
}


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for name, run in RUNS.items():
        run(root / name)
