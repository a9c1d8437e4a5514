"""The federation's initial global model: seeded weights, public feature statistics, public pretraining.

Made once by the launcher, before any process starts, and written to
`<run dir>/initial_model.pt`: the ServerApp starts the federation from it and the
baselines copy it, so every model of a run starts from the same weights. Nothing here
reads a hospital's images: a fixed front end is standardised on the public reference
set, and `model.init_weights` is a file the user provides (e.g. public pretraining).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from hydra.utils import to_absolute_path

from src.data.reference import reference_samples
from src.models.features import raw_features
from src.models.registry import build_model

FILE = "initial_model.pt"


def initial_model(cfg, num_classes: int) -> torch.nn.Module:
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, num_classes)
    if getattr(model, "front_end", None) is not None:
        from src.data.dataset import cache_dir  # MONAI, which reading images needs: not for a saved model

        # the public reference set decoded as hospitals decode; its features cached for the next run
        raw, _ = raw_features(model.front_end, reference_samples(cfg.reference), cfg.data,
                              cache_dir(cfg.data) / "reference-features")
        model.front_end.fit(raw)
    if cfg.model.get("init_weights"):
        path = Path(to_absolute_path(str(cfg.model.init_weights)))
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)  # a fedcxr model.pt, or a bare state_dict
            model.load_state_dict(state)
        except (OSError, RuntimeError, KeyError, AttributeError, TypeError, EOFError, pickle.UnpicklingError) as e:
            raise ValueError(f"model.init_weights: cannot start {cfg.model.name} from {path}: "
                             f"{str(e).splitlines()[0]}") from None
    return model


def save_initial_model(cfg, num_classes: int, run_dir: Path) -> Path:
    """`<run dir>/initial_model.pt`, made once per run (a resumed run keeps its own)."""
    path = Path(run_dir) / FILE
    if not path.exists():
        torch.save(initial_model(cfg, num_classes).state_dict(), path)
    return path


def load_initial_model(cfg, num_classes: int, run_dir: Path) -> torch.nn.Module:
    """The run's initial model; a run started without the launcher (`flwr run .`) builds it here."""
    return initial_model_from(cfg, num_classes, Path(run_dir) / FILE)


def initial_model_from(cfg, num_classes: int, path: Path) -> torch.nn.Module:
    """The initial model saved at `path`, or, where there is none, built as the launcher builds it
    (its front end from the public reference set alone, so any party can compute it)."""
    path = Path(path)
    if not path.exists():
        return initial_model(cfg, num_classes)
    model = build_model(cfg.model, num_classes)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model
