"""What a hospital decides for itself: its files, its policy and its identity, from its own node config.

The server's run config says what the consortium asks for; the hospital's node config
(set by the hospital on its own SuperNode, `python -m src.launch.supernode --client-app
src.client.app:app --node-config ...`) says what the hospital accepts. Everything a lying
server could abuse is read from here:

    hospital, manifest, threads             its name, its part of the split, its cores
    cache-dir                               where it caches its decoded images (default: beside
                                            its manifest)
    initial-model                           the run's agreed initial model (its fixed front end)
    identity-key, roster                    its Ed25519 identity key, the consortium's roster
    require-secure-aggregation              refuse to send an update that is not masked
    min-threshold                           refuse a secure-aggregation threshold below it
    min-survivors                           refuse to unmask a sum of fewer hospitals
    complete-graph                          refuse a secure-aggregation graph in which some hospital
                                            sharing keys is not its neighbour
    max-epsilon                             the ledger never goes past it (inf: no cap, DP optional)
    max-delta                               the δ its ε is counted at, at most
    max-image-size                          the largest data.image_size it decodes and caches its
                                            images at (default 1024)

Missing policy keys take the strict side (masking required, thresholds of at least 2,
a complete graph, δ at most 1e-5, images of at most 1024 px); without max-epsilon the
hospital trains not at all.
Flower's simulation engine gives a virtual node only `partition-id`, so there the
launcher writes the same settings to `hospitals/<name>.node.json`, the stand-in for
that hospital's node config, and names that folder in the environment of the processes
it starts (`FEDCXR_NODE_CONFIGS`): never through the run config, which the server writes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context

MAX_DELTA = 1e-5  # the δ a hospital counts its ε at when its node config names none
MAX_IMAGE_SIZE = 1024  # the largest data.image_size a hospital accepts when its node config names none
NODE_CONFIGS = "FEDCXR_NODE_CONFIGS"  # simulation: the folder of the hospitals' stand-in node configs


def manifest(context: Context) -> Path:
    """This hospital's manifest (its part of the federation); its own records (privacy ledger, training log,
    secure-aggregation rounds) lie beside it."""
    return Path(str(node_settings(context)["manifest"]))


def node_settings(context: Context) -> dict:
    """This hospital's own settings: its node config, or the simulation's stand-in for it (in the folder
    its process environment names; the run config's `run-dir` is the server's word)."""
    if "manifest" in context.node_config:
        return dict(context.node_config)
    if NODE_CONFIGS not in os.environ:
        raise ValueError(f"this hospital's node config names no manifest (and {NODE_CONFIGS} names no simulated "
                         "hospitals' node configs)")
    from src.data.federation import Federation  # pydicom: only simulation's stand-in reads the split

    folder = Path(os.environ[NODE_CONFIGS])
    name = Federation.load(folder.parent / "split.json").hospitals[int(context.node_config["partition-id"])]
    return json.loads((folder / f"{name}.node.json").read_text())


@dataclass(frozen=True)
class Policy:
    require_secure_aggregation: bool = True
    min_threshold: int = 2
    min_survivors: int = 2
    complete_graph: bool = True
    max_epsilon: float | None = None  # None: no cap chosen, so no training; inf: no cap
    max_delta: float = MAX_DELTA
    max_image_size: float = MAX_IMAGE_SIZE  # inf: no cap

    @classmethod
    def of(cls, settings: dict) -> Policy:
        max_epsilon = settings.get("max-epsilon")
        return cls(require_secure_aggregation=bool(settings.get("require-secure-aggregation", True)),
                   min_threshold=max(2, int(settings.get("min-threshold", 2))),
                   min_survivors=max(2, int(settings.get("min-survivors", 2))),
                   complete_graph=bool(settings.get("complete-graph", True)),
                   max_epsilon=None if max_epsilon is None else float(max_epsilon),
                   max_delta=float(settings.get("max-delta", MAX_DELTA)),
                   max_image_size=float(settings.get("max-image-size", MAX_IMAGE_SIZE)))

    def image_size_refusal(self, image_size: int) -> str | None:
        """Why the run's image size is refused, if it is: every image is decoded and cached on the
        hospital's disk at that size. This bounds each cached copy, not how many sizes runs ask for
        (each size keeps its own cache folder), nor memory (data.memory_cache_mb, batch size)."""
        if image_size > self.max_image_size:
            return (f"policy hospital.max_image_size={self.max_image_size:g}: refusing data.image_size={image_size} "
                    "(every image would be decoded and cached at that size on this hospital's disk)")
        return None


def policy(context: Context) -> Policy:
    return Policy.of(node_settings(context))


def identity(context: Context):
    """The hospital's identity and the roster it checks its neighbours against."""
    from src.secagg import Identity

    settings = node_settings(context)
    return Identity.load(str(settings["hospital"]), Path(str(settings["identity-key"])),
                         Path(str(settings["roster"])))
