"""The run's record: `results.json`, the global model `model.pt`, a progress line per round.

Both files are rewritten after every round, so an interrupted run leaves its last
completed round behind.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf

from src.server.report import HEADLINE


def unflatten(flat: dict, classes: list[str]) -> dict:
    """A hospital's MetricRecord back into classification_metrics' shape."""
    out: dict = {}
    for key, value in flat.items():
        if isinstance(value, float) and math.isnan(value):
            value = None
        if "." in key:
            group, name = key.split(".", 1)
            out.setdefault(group, {})[name] = value
        elif key == "confusion_matrix":
            k = len(classes)
            out[key] = [list(map(int, value[i * k:(i + 1) * k])) for i in range(k)]
        else:
            out[key] = value
    return out


class RunRecord:
    """Accumulates rounds and writes `results.json` and `model.pt` into the run directory."""

    def __init__(self, run_dir: Path, cfg, classes: list[str]):
        self.run_dir, self.cfg, self.classes = Path(run_dir), cfg, classes
        self.rounds: list[dict] = []

    def add_round(self, server_round: int, global_metrics: dict, observed: dict) -> dict:
        hospitals = {name: unflatten(m, self.classes) for name, m in sorted(observed["hospitals"].items())}
        entry = {"round": server_round, "global": global_metrics, "hospitals": hospitals,
                 "failed_hospitals": observed.get("failed", []), "time": observed["time"]}
        self.rounds.append(entry)
        return entry

    def save(self, state_dict: dict) -> dict:
        torch.save({"state_dict": state_dict, "model": OmegaConf.to_container(self.cfg.model, resolve=True),
                    "classes": self.classes, "image_size": int(self.cfg.data.image_size)},
                   self.run_dir / "model.pt")
        final = {"global": self.rounds[-1]["global"], "hospitals": self.rounds[-1]["hospitals"]} if self.rounds else {}
        record = {"config": OmegaConf.to_container(self.cfg, resolve=True), "classes": self.classes,
                  "rounds": self.rounds, "final": final}
        tmp = self.run_dir / "results.json.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(self.run_dir / "results.json")
        return record


def progress_line(entry: dict, rounds: int) -> str:
    g = entry["global"]
    shown = "  ".join(f"{k} {g[k]:.3f}" for k in HEADLINE if g.get(k) is not None)
    t = entry["time"]
    return (f"round {entry['round']}/{rounds}  {shown}  hospitals {len(entry['hospitals'])}"
            f"  time {t.get('total', 0):.1f}s (train {t.get('train', 0):.1f}s)")
