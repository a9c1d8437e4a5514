"""A round's model travels as one flat array of its trained entries, and only that is loaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from src.config import compose_config
from src.models.registry import build_model, trained_state
from src.models.wire import KEY, load_record, to_record


def model(name: str) -> torch.nn.Module:
    return build_model(compose_config([f"model={name}"]).model, 3)


@pytest.mark.parametrize("name", ["small_cnn", "scatter_linear"])
def test_the_trained_entries_round_trip_and_nothing_else_changes(name):
    torch.manual_seed(0)
    sent, received = model(name), model(name)
    with torch.no_grad():
        for p in sent.parameters():
            p.add_(torch.randn_like(p))
    fixed = {k: v.clone() for k, v in received.state_dict().items() if k not in trained_state(received)}
    record = to_record(sent)
    assert list(record) == [KEY] and record[KEY].numpy().ndim == 1
    load_record(received, record)
    for key, value in trained_state(sent).items():
        assert torch.equal(trained_state(received)[key], value)
    for key, value in fixed.items():  # a fixed front end is the run's initial model's, never the sender's
        assert torch.equal(received.state_dict()[key], value)


def test_one_flat_array_is_a_few_flower_objects_where_the_entries_were_many():
    """What the flat layout is for: each Flower object is fetched by a request of its own on every hop."""
    cnn = model("small_cnn")
    flat = get_all_nested_objects(RecordDict({"arrays": to_record(cnn)}))
    per_entry = get_all_nested_objects(RecordDict({"arrays": ArrayRecord(trained_state(cnn))}))
    assert len(flat) <= 4 < 30 <= len(per_entry)


def test_a_record_of_another_layout_size_or_dtype_is_refused():
    received = model("scatter_linear")
    before = {k: v.clone() for k, v in received.state_dict().items()}
    good = to_record(model("scatter_linear"))[KEY].numpy()
    wrong = {
        "the entries one by one": ArrayRecord(trained_state(model("scatter_linear"))),
        "another model's size": ArrayRecord({KEY: Array(np.zeros(good.size + 1, dtype=np.float32))}),
        "float64": ArrayRecord({KEY: Array(good.astype(np.float64))}),
        "two dimensions": ArrayRecord({KEY: Array(good.reshape(1, -1))}),
    }
    for what, record in wrong.items():
        with pytest.raises(ValueError, match="the model's arrays: expected"):
            load_record(received, record)
        assert all(torch.equal(received.state_dict()[k], v) for k, v in before.items()), what
