"""Small generated image data sets: each class a distinct colour and shape, so a short
training run can learn them; written as real JPEG/PNG files."""
from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = [(220, 40, 40), (40, 160, 60), (40, 70, 220), (230, 200, 30), (150, 60, 200), (30, 190, 200)]


def draw(label: int, rng: random.Random, size: int = 96) -> Image.Image:
    image = Image.new("RGB", (size, size), tuple(rng.randint(0, 60) for _ in range(3)))
    d = ImageDraw.Draw(image)
    colour = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in COLOURS[label % len(COLOURS)])
    m = rng.randint(5, 20)
    box = [m, m, size - rng.randint(5, 20), size - rng.randint(5, 20)]
    (d.ellipse if label % 2 else d.rectangle)(box, fill=colour)
    return image


def make_imagefolder(root: Path, classes: list[str], per_class: int, seed: int = 0, fmt: str = "JPEG") -> Path:
    rng = random.Random(seed)
    for label, name in enumerate(classes):
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext = "jpg" if fmt == "JPEG" else fmt.lower()
            draw(label, rng).save(folder / f"{name}_{i:03d}.{ext}", fmt)
    return Path(root)


def make_splits(root: Path, classes: list[str], per_class: dict[str, int], seed: int = 0) -> dict[str, Path]:
    return {split: make_imagefolder(Path(root) / split, classes, n, seed + i)
            for i, (split, n) in enumerate(per_class.items())}
