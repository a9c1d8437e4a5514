"""Composing fedcxr's Hydra config outside `@hydra.main` (command-line tools, tests)."""

from __future__ import annotations

import json
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The same config `run_simulation.py` would see for these Hydra-style overrides."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=list(overrides or []))


def to_run_config(cfg: DictConfig, run_dir) -> dict:
    """Flower's run config for this run: the resolved config as JSON, and the run directory.

    Flower's run config holds flat scalars only, so the whole composed config travels
    as one JSON string and is rebuilt with `from_run_config` in every app.
    """
    return {"config": json.dumps(OmegaConf.to_container(cfg, resolve=True)), "run-dir": str(run_dir)}


def from_run_config(run_config) -> DictConfig:
    """The config a run config carries, refusing any `${...}` in it.

    The launcher resolves the config before it leaves (`to_run_config`), so an honest one
    holds no interpolation. OmegaConf would resolve one wherever a key is read, at a
    hospital too, on behalf of the server that wrote it: `oc.env` reads the hospital's
    environment, `oc.create` makes a fresh node at every read (so a value the hospital
    sets for itself, such as its data cache, would not stick), and nested references
    grow exponentially."""
    config = json.loads(str(run_config["config"]))
    if not isinstance(config, dict):  # a string would be read as YAML, whose escapes spell `${` unseen
        raise ValueError(f"the run config's config: expected a JSON object, got {type(config).__name__}")
    _refuse_interpolation(config, "")
    return OmegaConf.create(config)


def _refuse_interpolation(value, key: str) -> None:
    if isinstance(value, dict):
        for name, inner in value.items():
            _refuse_interpolation(inner, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            _refuse_interpolation(inner, f"{key}[{i}]")
    elif isinstance(value, str) and "${" in value:
        raise ValueError(f"{key}: the run config holds an interpolation ({value[:60]!r}); a run config is "
                         "resolved before it is sent")


def validate(cfg: DictConfig) -> None:
    """Refuse a config that cannot run, with one line naming the key, before any process starts.

    The plain keys first, then the data's root, and only then what needs torch and Opacus
    (seconds to import): a mistyped number is refused at once."""
    missing = sorted(OmegaConf.missing_keys(cfg))  # `???` in conf/: a value only the user can give
    if missing:
        raise ValueError(f"{missing[0]}: expected a value, got none (give it on the command line: {missing[0]}=...)")
    fed = cfg.federation
    checks = [
        (fed.mode in ("deployment", "simulation"), "federation.mode", "'deployment' or 'simulation'", fed.mode),
        (int(fed.rounds) >= 1, "federation.rounds", "at least 1", fed.rounds),
        (int(fed.num_hospitals) >= 1, "federation.num_hospitals", "at least 1", fed.num_hospitals),
        (int(fed.simulation_cpus) >= 1, "federation.simulation_cpus", "at least 1", fed.simulation_cpus),
        (1 <= int(fed.min_hospitals) <= int(fed.num_hospitals), "federation.min_hospitals",
         f"between 1 and federation.num_hospitals={fed.num_hospitals}", fed.min_hospitals),
        (0 < float(fed.fraction) <= 1, "federation.fraction", "in (0, 1]", fed.fraction),
        (int(fed.local_epochs) >= 1, "federation.local_epochs", "at least 1", fed.local_epochs),
        (int(fed.batch_size) >= 1, "federation.batch_size", "at least 1", fed.batch_size),
        (float(fed.lr) > 0, "federation.lr", "> 0", fed.lr),
        (cfg.strategy.name in ("fedavg", "fedprox", "secagg"), "strategy.name", "'fedavg', 'fedprox' or 'secagg'",
         cfg.strategy.name),
        (cfg.device == "auto" or str(cfg.device).split(":")[0] in ("cpu", "cuda"), "device",
         "auto, cpu or cuda[:N]", cfg.device),
        (int(cfg.data.image_size) >= 16, "data.image_size", "at least 16", cfg.data.image_size),
        (int(cfg.data.num_workers) >= 0, "data.num_workers", "at least 0", cfg.data.num_workers),
        (float(cfg.data.memory_cache_mb) >= 0, "data.memory_cache_mb", "at least 0", cfg.data.memory_cache_mb),
        (cfg.privacy.name in ("dp", "none"), "privacy.name", "'dp' or 'none'", cfg.privacy.name),
        (cfg.hospital.require_secure_aggregation in (None, True, False), "hospital.require_secure_aggregation",
         "true, false or null", cfg.hospital.require_secure_aggregation),
        (int(cfg.hospital.min_threshold) >= 2, "hospital.min_threshold", "at least 2", cfg.hospital.min_threshold),
        (cfg.hospital.min_survivors is None or int(cfg.hospital.min_survivors) >= 2, "hospital.min_survivors",
         "at least 2, or null", cfg.hospital.min_survivors),
        (cfg.hospital.complete_graph in (None, True, False), "hospital.complete_graph", "true, false or null",
         cfg.hospital.complete_graph),
        (cfg.hospital.max_epsilon is None or float(cfg.hospital.max_epsilon) > 0, "hospital.max_epsilon",
         "> 0, or null", cfg.hospital.max_epsilon),
        (cfg.hospital.max_delta is None or 0 < float(cfg.hospital.max_delta) < 1, "hospital.max_delta",
         "in (0, 1), or null", cfg.hospital.max_delta),
        (cfg.hospital.max_image_size is None or int(cfg.hospital.max_image_size) >= int(cfg.data.image_size),
         "hospital.max_image_size", "at least data.image_size (every hospital would decline), or null",
         cfg.hospital.max_image_size),
        (cfg.data.layout == "synthetic" or Path(str(cfg.data.root)).expanduser().exists(), "data.root",
         f"an existing path for layout {cfg.data.layout}", cfg.data.root),
    ]
    _refuse_failed(checks)

    from src.models.registry import MODELS
    from src.training import grad_sample, precision

    checks = [(cfg.model.name in MODELS, "model.name", f"one of {sorted(MODELS)}", cfg.model.name),
              (cfg.federation.precision in precision.PRECISIONS, "federation.precision",
               " or ".join(precision.PRECISIONS), cfg.federation.precision)]
    if cfg.privacy.name == "dp":
        checks.append((cfg.privacy.grad_sample_mode in grad_sample.MODES, "privacy.grad_sample_mode",
                       ", ".join(grad_sample.MODES), cfg.privacy.grad_sample_mode))
    _refuse_failed(checks)
    if cfg.privacy.name == "dp":
        _check_opacus_can_train(cfg)


def _refuse_failed(checks: list[tuple[bool, str, str, object]]) -> None:
    for ok, key, expected, got in checks:
        if not ok:
            raise ValueError(f"{key}: expected {expected}, got {got!r}")


def _check_opacus_can_train(cfg: DictConfig) -> None:
    """A model with a layer Opacus cannot compute per-sample gradients for (BatchNorm, ...), or a
    `privacy.grad_sample_mode` that cannot train it, is refused."""
    from opacus.validators import ModuleValidator

    from src.models.grouped_conv import register_opacus_sampler
    from src.models.registry import build_model
    from src.training.grad_sample import choose

    register_opacus_sampler()
    model = build_model(cfg.model, 2)
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(f"model.name: Opacus cannot train {cfg.model.name} under privacy=dp: {errors[0]}")
    trained = model.head if getattr(model, "front_end", None) is not None else model  # as local_training_view
    choose(str(cfg.privacy.grad_sample_mode), trained)
