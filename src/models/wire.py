"""A round's model in a message: its trained entries as one flat array.

Flower stores a message's ArrayRecord as one object per array (and per 5 MB chunk), and on
every hop (ServerApp → SuperLink → SuperNode → the hospital's worker, and back) each object
is fetched by a request of its own. SmallCNN's 23 entries are 32 objects, one flat array 4
(ResNet-18: 65 → 12; tests/models/test_wire.py); on 2 cores that took a small_cnn round
from 13.0–14.5 s to 11.2–11.8 s (bench/round_overhead.py). Both sides
know the layout from the model itself (its trained entries in state_dict order:
`trained_state`), so no layout travels, and a record of any other size is refused.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord

from src.models.registry import trained_state

KEY = "trained"


def to_record(model: torch.nn.Module) -> ArrayRecord:
    """`model`'s trained entries, flattened in state_dict order, as a one-array record."""
    state = trained_state(model)
    dtypes = {v.dtype for v in state.values()}
    if len(dtypes) != 1:
        raise ValueError(f"a model's trained entries travel as one array and must share a dtype, got {dtypes}")
    return ArrayRecord({KEY: torch.cat([v.detach().cpu().reshape(-1) for v in state.values()])})


def load_record(model: torch.nn.Module, record: ArrayRecord) -> None:
    """Load a `to_record` record into `model`; anything but one flat array of exactly its trained
    entries' size and dtype (a server sending another model, or a front end of its choosing) is refused."""
    if list(record) != [KEY]:
        raise ValueError(f"the model's arrays: expected one array {KEY!r}, got {sorted(record)}")
    flat = record[KEY].numpy()
    state = trained_state(model)
    size = sum(v.numel() for v in state.values())
    dtype = next(iter(state.values())).dtype
    if flat.ndim != 1 or flat.size != size or torch.from_numpy(flat[:0]).dtype != dtype:
        raise ValueError(f"the model's arrays: expected {size} values of {dtype}, got {flat.shape} of {flat.dtype}")
    values, offset = {}, 0
    for key, value in state.items():
        values[key] = torch.from_numpy(flat[offset:offset + value.numel()].copy()).reshape(value.shape)
        offset += value.numel()
    model.load_state_dict(values, strict=False)  # exactly the trained entries: the layout was checked above
