"""wandb dashboards, from the ServerApp only.

ClientApps never start wandb: a hospital process prompting for an API key would
hang a round. Offline is the default; online is used only when a key is configured,
otherwise the run says so and stays offline rather than prompting.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

log = logging.getLogger("fedcxr")


def run_id(run_dir: Path) -> str:
    """One wandb run per run directory, so `resume=` continues the same dashboard."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


class Dashboard:
    """Per-round global and per-hospital metrics, ROC and confusion matrix, the config."""

    def __init__(self, cfg, run_dir: Path, classes: list[str]):
        self.run = None
        self.classes = classes
        if cfg.logger.name != "wandb" or cfg.logger.mode == "disabled":
            return
        import wandb
        from omegaconf import OmegaConf

        mode = cfg.logger.mode
        if mode == "online" and not os.environ.get("WANDB_API_KEY"):
            log.warning("logger.mode=online but WANDB_API_KEY is not set: logging offline instead")
            mode = "offline"
        self.run = wandb.init(
            project=cfg.logger.project, entity=cfg.logger.entity, dir=str(run_dir), mode=mode,
            name=Path(run_dir).name, id=run_id(run_dir), resume="allow", config=OmegaConf.to_container(cfg, resolve=True),
            settings=wandb.Settings(silent=True, console="off"),
        )

    def log_round(self, entry: dict, labels, probs, roc_png: Path | None = None) -> None:
        if self.run is None:
            return
        import wandb

        scalars = {f"global/{k}": v for k, v in entry["global"].items() if isinstance(v, (int, float))}
        for name, metrics in entry["hospitals"].items():
            scalars.update({f"{name}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            scalars.update({f"{name}/privacy/{k}": v for k, v in metrics.get("privacy", {}).items()
                            if isinstance(v, (int, float))})
        scalars.update({f"time/{k}": v for k, v in entry["time"].items()})
        if roc_png is not None:  # the report's plot: wandb's own ROC chart needs pandas
            scalars["global/roc"] = wandb.Image(str(roc_png))
        scalars["global/confusion_matrix"] = wandb.plot.confusion_matrix(
            y_true=list(map(int, labels)), preds=list(map(int, probs.argmax(1))), class_names=self.classes)
        self.run.log(scalars, step=entry["round"])

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
