"""Small archives written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def chest_like(seed: int, size: int = 48) -> np.ndarray:
    """A gray image with some structure, so percentile scaling and resizing have work to do."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = 0.5 + 0.3 * np.sin(6 * x + seed) * np.cos(4 * y) + 0.05 * rng.standard_normal((size, size))
    return np.clip(img, 0, 1)


def write_png(path: Path, seed: int = 0, size: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((chest_like(seed, size) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def config(tmp_path):
    """The whole config for a layout, composed as run_simulation.py would, caching under tmp."""
    from src.config import compose_config

    def make(layout: str, root, *overrides: str):
        return compose_config(
            [f"data={layout}", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", *overrides]
        )

    return make
