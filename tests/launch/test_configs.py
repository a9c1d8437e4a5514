"""Run configs and node configs: checked, and passed to Flower the way it parses them."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from src.launch.configs import check_run_config, node_config_arg

TOY_APP = Path(__file__).parent / "toy_app"


def test_run_config_values_must_be_scalars() -> None:
    check_run_config({"a": "x", "b": 1, "c": 0.5, "d": True})
    for bad in ({"a": None}, {"a": [1, 2]}, {"a": {"b": 1}}, {"": 1}):
        with pytest.raises(ValueError, match="run config key"):
            check_run_config(bad)


def test_run_config_keys_must_be_declared_by_the_app() -> None:
    check_run_config({"num-server-rounds": 3, "hospitals": "a,b"}, TOY_APP)
    with pytest.raises(ValueError, match=r"\['num_server_rounds'\].*tool.flwr.app.config"):
        check_run_config({"num_server_rounds": 3}, TOY_APP)


def test_node_config_survives_flowers_parser() -> None:
    config = {"partition-id": 2, "num-partitions": 3, "hospital": "hospital_1",
              "manifest": "/abs/with space/m.json", "quote": 'say "hi"', "frac": 0.25,
              "flag": True, "apostrophe": "it's"}
    assert parse_config_args([node_config_arg(config)]) == config
    with pytest.raises(ValueError):
        node_config_arg({"x": "both ' and \" quotes"})
    with pytest.raises(ValueError):
        node_config_arg({"bad key": 1})
