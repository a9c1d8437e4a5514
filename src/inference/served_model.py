"""A run's model split for encrypted diagnosis: the public front end, and the secret head.

Only models whose trained part is one linear layer on a fixed, public front end can be
served: their whole trained computation is one encrypted matrix–vector product (depth 2,
`src/inference/ckks.py`). A CNN's ReLUs and stacked layers would need polynomial
approximations and a depth CKKS cannot give at a useful speed; such models are refused.
The front end's arrays (standardisation and projection from the public reference set)
carry no hospital's data and go to the hospital in the clear; the head never leaves.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SERVABLE = ("scatter_linear",)


class NotServable(ValueError):
    pass


@dataclass
class ServedModel:
    path: Path
    sha256: str
    classes: list[str]
    config: dict           # the model's config (name, image size, front end settings)
    front_end: dict[str, np.ndarray]
    weight: np.ndarray     # (classes, features): secret
    bias: np.ndarray

    @classmethod
    def load(cls, path: Path) -> ServedModel:
        path = Path(path)
        data = path.read_bytes()
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        config = dict(saved["model"])
        if config.get("name") not in SERVABLE:
            raise NotServable(f"model {config.get('name')!r} cannot run under CKKS at a useful depth; encrypted "
                              f"diagnosis serves models whose trained part is one linear layer on a public "
                              f"fixed front end: {', '.join(SERVABLE)}")
        state = saved["state_dict"]
        return cls(path=path, sha256=hashlib.sha256(data).hexdigest(), classes=list(saved["classes"]),
                   config=config | {"image_size": int(saved["image_size"])},
                   front_end={k.removeprefix("front_end."): v.numpy() for k, v in state.items()
                              if k.startswith("front_end.")},
                   weight=state["head.weight"].double().numpy(), bias=state["head.bias"].double().numpy())

    def front_end_bytes(self) -> bytes:
        """The public front end's arrays as an .npz (read back with `allow_pickle=False`)."""
        buffer = io.BytesIO()
        np.savez(buffer, **self.front_end)
        return buffer.getvalue()


def front_end_module(config: dict, arrays: bytes):
    """The hospital's copy of the public front end (kymatio scattering + the given statistics)."""
    from src.models.scattering import ScatterFrontEnd

    front_end = ScatterFrontEnd(int(config["image_size"]), J=int(config["J"]), L=int(config["L"]),
                                pool=int(config["pool"]), components=config.get("components"))
    with np.load(io.BytesIO(arrays), allow_pickle=False) as npz:
        front_end.load_state_dict({k: torch.from_numpy(npz[k]) for k in npz.files})
    return front_end.eval()
