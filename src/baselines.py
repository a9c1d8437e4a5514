"""The value of federation: what the hospitals would get without it, and what pooling would give.

With `baselines=true`, after the federated run, two reference models are trained on
the same split (`run_dir/split.json`) with the federation's whole budget
(`federation.rounds × federation.local_epochs` epochs), model, lr, batch size, seed
and initial weights:

- centralized: one model on every hospital's training images pooled, the upper
  bound a federation tries to reach without moving data;
- local-only: one model per hospital on its own training images, what each
  hospital gets by staying alone.

Each is evaluated like the federation's models: on the pooled test set (every
hospital's test split) and, for a local-only model, on its own hospital's test split.
Results go to `run_dir/baselines.json`; `baselines_markdown` renders them next to the
federated global model for `report.md`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from src.data.federation import Federation
from src.data.layouts import Sample
from src.metrics import classification_metrics
from src.models.initial import load_initial_model
from src.progress import progress_bar
from src.server.report import HEADLINE
from src.training.loops import local_training_view, predict_samples, resolve_device, train_epochs
from src.training.privacy import plan


def _train(cfg, initial: torch.nn.Module, samples: list[Sample], epochs: int, device, cache: Path) -> torch.nn.Module:
    """A copy of `initial` trained on `samples`, seeded once with `cfg.seed` so it does not
    depend on which baselines were trained before it; under `privacy=dp` with the
    federation's privacy settings (the same target ε over the same number of epochs)."""
    if not samples:
        raise ValueError("baselines: a model has no training image")
    torch.manual_seed(int(cfg.seed))
    model = copy.deepcopy(initial)
    view = local_training_view(model, samples, cfg.data, int(cfg.federation.batch_size), int(cfg.seed), device,
                               cache, int(cfg.data.num_workers))
    dp = plan(cfg.privacy, cfg.federation, len(samples)) if cfg.privacy.name == "dp" else None
    train_epochs(view.module, view.loader, epochs, float(cfg.federation.lr), device, dp=dp,
                 grad_sample_mode=str(cfg.privacy.get("grad_sample_mode", "auto")),
                 optimizer=str(cfg.federation.optimizer), momentum=float(cfg.federation.momentum), augment=view.augment,
                 precision=str(cfg.federation.precision))
    return model


def _evaluate(cfg, model, samples: list[Sample], classes: list[str], device, cache: Path) -> dict:
    """classification_metrics on `samples`, loaded as the ServerApp loads the pooled test set."""
    labels, probs = predict_samples(model, samples, cfg.data, int(cfg.federation.batch_size), device, cache)
    return classification_metrics(labels, probs, classes)


def run_baselines(cfg, run_dir: Path) -> dict:
    """Train and evaluate the centralized and local-only baselines; write and return baselines.json.

    Runs in the launcher process once the federation has ended, so torch keeps its
    default thread count (the machine's cores) instead of a hospital's share.
    """
    run_dir = Path(run_dir)
    federation = Federation.load(run_dir / "split.json")
    classes = federation.classes
    epochs = int(cfg.federation.rounds) * int(cfg.federation.local_epochs)
    device = resolve_device(cfg.device)
    initial = load_initial_model(cfg, len(classes), run_dir)  # the federation's initial global model
    cache = run_dir / "features"  # a fixed front end's features, shared with the ServerApp's
    pooled_test = federation.select(split="test")
    with progress_bar(f"baselines: centralized + {len(federation.hospitals)} local-only, {epochs} epochs each",
                      1 + len(federation.hospitals)) as advance:
        model = _train(cfg, initial, federation.select(split="train"), epochs, device, cache)
        out = {"budget_epochs": epochs,
               "centralized": {"pooled": _evaluate(cfg, model, pooled_test, classes, device, cache)},
               "local": {}}
        advance(1)
        for hospital in federation.hospitals:
            model = _train(cfg, initial, federation.select(hospital, "train"), epochs, device, cache)
            out["local"][hospital] = {
                "own": _evaluate(cfg, model, federation.select(hospital, "test"), classes, device, cache),
                "pooled": _evaluate(cfg, model, pooled_test, classes, device, cache),
            }
            advance(1)
    (run_dir / "baselines.json").write_text(json.dumps(out, indent=1))
    return out


def _row(model: str, test_set: str, metrics: dict | None, images_key: str = "num_examples") -> str:
    metrics = metrics or {}
    cells = ["–" if metrics.get(k) is None else f"{metrics[k]:.3f}" for k in HEADLINE]
    return f"| {model} | {test_set} | {metrics.get(images_key, '–')} | " + " | ".join(cells) + " |"


def baselines_markdown(results: dict, baselines: dict) -> str:
    """The report.md section that says what federating bought: the federated global model next
    to the centralized model (pooled data) and each hospital's local-only model.

    Each hospital's local-only model on its own test split is followed by the federated
    global model on that same split (results.json's final.hospitals), the comparison
    that hospital cares about.
    """
    final = results.get("final") or {}
    federated_at = final.get("hospitals", {})
    epochs = baselines["budget_epochs"]
    lines = [
        "## Value of federation", "",
        (f"Same model, initial weights, lr, batch size and seed as the federation; each baseline "
         f"trained for the federation's budget, {epochs} epoch{'' if epochs == 1 else 's'} "
         f"(rounds × local epochs)."), "",
        "| model | test set | test images | " + " | ".join(HEADLINE) + " |",
        "|---" * (len(HEADLINE) + 3) + "|",
        _row("federated (global)", "pooled", final.get("global")),
        _row("centralized", "pooled", baselines["centralized"]["pooled"]),
    ]
    for hospital, local in baselines["local"].items():
        lines.append(_row(f"local-only {hospital}", "pooled", local["pooled"]))
        lines.append(_row(f"local-only {hospital}", hospital, local["own"]))
        if hospital in federated_at:
            lines.append(_row("federated (global)", hospital, federated_at[hospital], "num_test_examples"))
    return "\n".join(lines + [""])
