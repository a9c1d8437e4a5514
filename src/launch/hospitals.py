"""A run's hospitals on one machine: the split (`split.json`) and one SuperNode per hospital.

Each hospital's SuperNode is given only its own manifest (its part of the split), as
a real hospital's SuperNode would only see its own archive.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console

from src.data.check import decode_all, report
from src.data.federation import Federation, build_federation
from src.launch.federation import Hospital


def prepare_federation(cfg: DictConfig, run_dir: Path, console: Console) -> Federation:
    """Build (or, when resuming, reload) the hospitals' split and write it to split.json."""
    if (run_dir / "split.json").exists():
        return Federation.load(run_dir / "split.json")
    federation = decode_all(build_federation(cfg.data, cfg.federation.num_hospitals, cfg.seed), cfg.data)
    report(federation, console)
    empty = [h for h, splits in federation.counts().items() if not sum(splits["train"])]
    if empty:
        raise ValueError(f"data: no training image at {', '.join(empty)}")
    federation.save(run_dir / "split.json")
    return federation


def hospital_nodes(federation: Federation, run_dir: Path) -> list[Hospital]:
    """One SuperNode per hospital, each given only its own manifest and its share of the cores."""
    (run_dir / "hospitals").mkdir(exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // len(federation.hospitals))
    hospitals = []
    for name in federation.hospitals:
        manifest = run_dir / "hospitals" / f"{name}.json"
        federation.only(name).save(manifest)
        hospitals.append(Hospital(name, {"hospital": name, "manifest": str(manifest), "threads": threads}))
    return hospitals
