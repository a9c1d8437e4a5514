"""A run's hospitals on one machine: the split (`split.json`) and one SuperNode per hospital.

Each hospital's SuperNode is given only its own manifest (its part of the split), as
a real hospital's SuperNode would only see its own archive.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig
from rich.console import Console

from src.data.check import decode_all, report
from src.data.dataset import cache_dir
from src.data.federation import Federation, build_federation
from src.launch.configs import Hospital
from src.models.features import features_file, raw_features, save_features
from src.models.initial import FILE as INITIAL_MODEL, load_initial_model
from src.secagg.graph import circulant_neighbours, default_num_shares
from src.secagg.identity import new_identity_key, write_roster


def prepare_federation(cfg: DictConfig, run_dir: Path, console: Console) -> Federation:
    """Build (or, when resuming, reload) the hospitals' split and write it to split.json."""
    if (run_dir / "split.json").exists():
        return Federation.load(run_dir / "split.json")
    federation = decode_all(build_federation(cfg.data, cfg.federation.num_hospitals, cfg.seed), cfg.data)
    report(federation, cfg.data, console)
    empty = [h for h, splits in federation.counts().items() if not sum(splits["train"])]
    if empty:
        raise ValueError(f"data: no training image at {', '.join(empty)}")
    federation.save(run_dir / "split.json")
    return federation


def hospital_policy(cfg: DictConfig) -> dict[str, bool | int | float]:
    """The hospitals' policy (`hospital.*`) as node config; its defaults follow the run's own settings.
    ValueError for a graph policy the run's own graph would have every hospital refuse (the other
    refusals are the hospitals', as a lying server would meet them)."""
    policy = cfg.hospital
    if cfg.strategy.name == "secagg" and policy.complete_graph and not complete_graph(cfg):
        raise ValueError("hospital.complete_graph=true: every hospital would refuse the run's sparse graph; set "
                         f"strategy.num_shares={cfg.federation.num_hospitals} (or hospital.complete_graph=false)")
    require = policy.require_secure_aggregation
    max_epsilon = policy.max_epsilon if policy.max_epsilon is not None else cfg.privacy.get("target_epsilon")
    max_delta = policy.max_delta if policy.max_delta is not None else cfg.privacy.get("delta")
    node = {"require-secure-aggregation": bool(cfg.strategy.name == "secagg" if require is None else require),
            "min-threshold": int(policy.min_threshold),
            "min-survivors": int(policy.min_survivors if policy.min_survivors is not None
                                 else cfg.federation.min_hospitals),
            "complete-graph": bool(complete_graph(cfg) if policy.complete_graph is None else policy.complete_graph)}
    node["max-epsilon"] = float(max_epsilon) if max_epsilon is not None else math.inf  # inf: no cap, stated
    node["max-image-size"] = int(policy.max_image_size if policy.max_image_size is not None else cfg.data.image_size)
    return node | ({"max-delta": float(max_delta)} if max_delta is not None else {})


def complete_graph(cfg: DictConfig) -> bool:
    """Whether the run's secure-aggregation graph makes every hospital a neighbour of every other."""
    if cfg.strategy.name != "secagg":
        return False
    n = int(cfg.federation.num_hospitals)
    num_shares = cfg.strategy.num_shares
    graph = circulant_neighbours(range(n), int(num_shares) if num_shares is not None else default_num_shares(n))
    return all(len(near) == n for near in graph.values())


def identities(names: list[str], run_dir: Path) -> tuple[Path, dict[str, Path]]:
    """Each hospital's Ed25519 identity key and the consortium roster of their public keys.

    A real consortium creates these once, out of band (each hospital its own key; the
    roster signed off by every member); the demo makes them for the run, and keeps them
    when a run is resumed.
    """
    roster, keys = run_dir / "roster.json", {name: run_dir / "hospitals" / f"{name}.identity.pem" for name in names}
    if roster.exists() and all(path.exists() for path in keys.values()):
        return roster, keys
    public = {}
    for name, path in keys.items():
        pem, public[name] = new_identity_key()
        path.touch(mode=0o600)
        path.write_bytes(pem)
    write_roster(roster, public)
    return roster, keys


def hospital_nodes(cfg: DictConfig, federation: Federation, run_dir: Path) -> list[Hospital]:
    """One SuperNode per hospital, each given only its own manifest, identity, policy, data cache and share of
    the cores.

    The same settings go to `hospitals/<name>.node.json`: Flower's simulation engine
    has no per-node config, and the ClientApp reads them there instead.
    """
    (run_dir / "hospitals").mkdir(exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // len(federation.hospitals))
    roster, keys = identities(federation.hospitals, run_dir)
    policy = hospital_policy(cfg)
    image_cache = to_absolute_path(str(cfg.data.cache_dir))  # the launcher decodes their images into it, as theirs
    hospitals = []
    for name in federation.hospitals:
        manifest = run_dir / "hospitals" / f"{name}.json"
        federation.only(name).save(manifest)
        config = {"hospital": name, "manifest": str(manifest), "threads": threads, "identity-key": str(keys[name]),
                  "roster": str(roster), "initial-model": str(run_dir / INITIAL_MODEL), "cache-dir": image_cache,
                  **policy}
        (run_dir / "hospitals" / f"{name}.node.json").write_text(json.dumps(config, indent=1))
        hospitals.append(Hospital(name, config))
    return hospitals


def cache_front_end_features(cfg: DictConfig, federation: Federation, run_dir: Path) -> None:
    """With a fixed front end, its features of each hospital's train and test images, where that hospital's
    ClientApp looks for them (beside its manifest), and of the pooled test set, where the ServerApp does.

    The launcher already decodes every hospital's images on this machine (each hospital's own preparation,
    as `fedcxr-check`); computing their fixed features here too spares every process of the federation
    importing MONAI (~6 s of CPU) and decoding again. They are computed once into the data cache, beside
    the decoded images, and copied into each run; the pooled test set's are the hospitals' test rows. A
    hospital on a machine of its own computes them on its first message instead (the same cache,
    src/models/features.py)."""
    front_end = getattr(load_initial_model(cfg, len(federation.classes), run_dir), "front_end", None)
    if front_end is None:
        return
    computed = cache_dir(cfg.data) / "front-end-features"

    def copy(samples, where: Path) -> None:
        source = features_file(front_end, samples, cfg.data, computed)
        where.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, where / source.name)

    rows = {}  # test image -> (features, label): the pooled test set is the hospitals' test sets
    for name in federation.hospitals:
        for split in ("train", "test"):
            samples = federation.only(name).select(split=split)
            features, labels = raw_features(front_end, samples, cfg.data, computed)
            copy(samples, run_dir / "hospitals" / "features")
            if split == "test":
                rows.update({s.path: (f, label) for s, f, label in zip(samples, features, labels)})
    pooled = federation.select(split="test")
    if not pooled:
        raw_features(front_end, pooled, cfg.data, computed)  # an empty set's file
    elif not features_file(front_end, pooled, cfg.data, computed).exists():  # the hospitals' rows, not computed again
        save_features(features_file(front_end, pooled, cfg.data, computed),
                      torch.stack([rows[s.path][0] for s in pooled]), torch.stack([rows[s.path][1] for s in pooled]))
    copy(pooled, run_dir / "features")
