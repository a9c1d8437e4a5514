"""The Flower side of secure aggregation: model <-> update vector, and settings refused up front."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from src.config import compose_config
from src.models.registry import build_model, trained_state
from src.models.wire import load_record, to_record
from src.secagg.records import apply_update, flatten
from src.strategies.secure import check_secagg


@pytest.mark.parametrize("model", ["small_cnn", "scatter_linear"])
def test_an_update_round_trips_through_the_flat_vector(model):
    """Only what training changes travels: every parameter of a CNN, only the head of a model whose
    fixed front end (scattering filters, reference statistics) never changes."""
    cfg = compose_config([f"model={model}"])
    torch.manual_seed(0)
    base = build_model(cfg.model, 3)
    global_model = to_record(base)
    for p in base.parameters():
        if p.requires_grad:
            p.data += torch.randn_like(p)  # what local training does
    trained = to_record(base)
    delta = flatten(trained) - flatten(global_model)
    assert delta.size == sum(p.numel() for p in base.parameters() if p.requires_grad)
    assert (delta.size == 195) == (model == "scatter_linear")  # 64 components x 3 classes + 3 biases
    rebuilt = apply_update(global_model, delta)
    received = build_model(cfg.model, 3)
    load_record(received, rebuilt)
    for key, value in trained_state(base).items():
        torch.testing.assert_close(trained_state(received)[key], value, atol=1e-6, rtol=0)


def test_integer_buffers_are_kept_not_averaged():
    state = {"w": torch.ones(2, 2), "count": torch.tensor([7], dtype=torch.int64)}
    record = ArrayRecord(state)
    assert flatten(record).size == 4
    out = apply_update(record, np.full(4, 0.5))
    np.testing.assert_array_equal(out["w"].numpy(), np.full((2, 2), 1.5, dtype=np.float32))
    assert out["count"].numpy().tolist() == [7]


@pytest.mark.parametrize("overrides, n, hospitals, key", [
    (["strategy.quant_bits=52"], 10_000, 100, "strategy.quant_bits"),  # (2^52 - 1) x 10^6 wraps 2^64
    (["strategy.quant_bits=0"], 200, 3, "strategy.quant_bits"),
    (["strategy.clip_range=0"], 200, 3, "strategy.clip_range"),
    (["strategy.threshold=5"], 200, 3, "strategy.threshold"),
    (["strategy.threshold=1"], 200, 3, "strategy.threshold"),
    (["strategy.num_shares=2"], 200, 10, "strategy.num_shares"),
])
def test_settings_that_cannot_work_are_refused_naming_the_key(overrides, n, hospitals, key):
    cfg = compose_config(overrides)
    with pytest.raises(ValueError, match=key):
        check_secagg(cfg.strategy, n, hospitals)


def test_the_defaults_work_from_3_to_100_hospitals():
    cfg = compose_config([])
    for hospitals in (2, 3, 10, 30, 100):
        check_secagg(cfg.strategy, 100_000, hospitals)
