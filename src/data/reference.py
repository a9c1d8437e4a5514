"""The public reference set: images of no hospital's patients, for statistics anyone may see.

A fixed front end's feature standardisation must not come from a hospital's images
(it would leak data outside every ε). A consortium publishes a reference set (or
points at an open dataset); the demo generates one with the synthetic generator under
its own seed, so its "sites" are none of the hospitals'. Its labels are never used.
"""

from __future__ import annotations

from pathlib import Path

from hydra.utils import to_absolute_path

from src.data.images import IMAGE_SUFFIXES
from src.data.layouts import Sample
from src.data.synthetic import ensure_synthetic

SITES = 3  # the generated set spans several acquisition sites, as a published one would


def reference_samples(reference_cfg) -> list[Sample]:
    """Every image under `reference.root`, generating the synthetic reference set there first if it is missing."""
    root = Path(to_absolute_path(str(reference_cfg.root)))
    if not root.exists() or (root / "synthetic.json").exists():
        ensure_synthetic(root, SITES, -(-int(reference_cfg.images) // SITES), int(reference_cfg.seed))
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"reference.root: no image under {root}")
    return [Sample(str(p), 0) for p in files]
