"""Random but learnable 32×32 colour images for the benchmark's vision tasks (NumPy only, no download).

Each of the ten classes is a fixed colour grating (its own orientation, frequency and colour mix); a sample is
its class's grating, shifted by up to four pixels, at a random contrast, under Gaussian noise. Chance level is
ln 10 ≈ 2.303; a small conv net gets well below it in a few hundred steps.
"""

from __future__ import annotations

import numpy as np

SIZE = 32
CLASSES = 10
SAMPLES = 1500
VALIDATION = 300


def _templates(rng: np.random.Generator) -> np.ndarray:
    """``(CLASSES, 3, SIZE + 8, SIZE + 8)`` gratings, 4 pixels of room on every side for the shifts."""
    grid = np.arange(SIZE + 8, dtype=np.float32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    templates = []
    for k in range(CLASSES):
        angle = np.pi * k / CLASSES
        frequency = 2 * np.pi * (0.08 + 0.03 * (k % 3))
        wave = np.sin(frequency * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 2 * np.pi))
        colour = rng.uniform(-1.0, 1.0, size=(3, 1, 1)).astype(np.float32)
        templates.append(colour * wave[None])
    return np.stack(templates).astype(np.float32)


def images(channels_last: bool = False, seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray],
                                                                 tuple[np.ndarray, np.ndarray]]:
    """``((x_train, y_train), (x_val, y_val))``: float32 images (NCHW, or NHWC with ``channels_last``), int64
    labels; ``SAMPLES - VALIDATION`` training and ``VALIDATION`` validation samples."""
    rng = np.random.default_rng(seed)
    templates = _templates(rng)
    labels = rng.integers(0, CLASSES, size=SAMPLES)
    shifts = rng.integers(0, 9, size=(SAMPLES, 2))
    contrast = rng.uniform(0.5, 1.5, size=(SAMPLES, 1, 1, 1)).astype(np.float32)
    crops = np.stack([templates[label, :, dy:dy + SIZE, dx:dx + SIZE]
                      for label, (dy, dx) in zip(labels, shifts)])
    x = (contrast * crops + rng.normal(0.0, 1.5, size=crops.shape)).astype(np.float32)
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y = labels.astype(np.int64)
    split = SAMPLES - VALIDATION
    return (x[:split], y[:split]), (x[split:], y[split:])
