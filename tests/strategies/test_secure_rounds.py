"""`strategy=secagg` over several rounds, in process (see `federation_grid.py`)."""

from __future__ import annotations

import json
import logging

import pytest
from flwr.app import ConfigRecord, RecordDict

from src.client import secure_aggregation
from src.secagg import BelowThresholdError
from src.strategies.secure import SecureFedProx
from tests.strategies.federation_grid import (
    NODES,
    Hospitals,
    check,
    run_round,
    start_model,
    strategy,
)


def test_keys_for_the_next_round_are_shared_during_this_one(consortium_dir):
    grid, s, arrays = Hospitals(consortium_dir), strategy(3), start_model()
    for server_round in (1, 2, 3):
        after = run_round(s, grid, server_round, arrays)
        check(arrays, after, server_round, NODES)
        arrays = after
    assert grid.sent == [(1, "train.secagg_setup"), (1, "train.secagg_share"), (1, "train"),
                         (1, "train.secagg_consistency"), (1, "train.secagg_unmask"),
                         *[(r, stage) for r in (2, 3) for stage in ("train", "train.secagg_consistency",
                                                                    "train.secagg_unmask")]]
    assert [s.rounds[r]["secure_aggregation"]["keys"] for r in (1, 2, 3)] == [
        "shared before training", "shared during round 1", "shared during round 2"]
    # a hospital keeps no session beyond the last round, and never its update: only (on its disk) the last
    # round it masked
    assert all(not c.state for c in grid.contexts.values())
    assert all(json.loads(secure_aggregation.masked_rounds(c).read_text()) == {"1": 3} for c in grid.contexts.values())


@pytest.mark.parametrize("stage", ["train.secagg_setup", "train.secagg_share", "train", "train.secagg_consistency",
                                   "train.secagg_unmask"])
def test_a_hospital_that_vanishes_at_any_stage_leaves_the_sum_of_the_others(stage, consortium_dir):
    grid, s, arrays = Hospitals(consortium_dir), strategy(2), start_model()
    grid.behaviour[(1, 33)] = f"vanish at {stage}"
    after = run_round(s, grid, 1, arrays)
    contributors = NODES if stage in ("train.secagg_consistency", "train.secagg_unmask") else [
        n for n in NODES if n != 33]
    check(arrays, after, 1, contributors)
    secure = s.rounds[1]["secure_aggregation"]
    if stage in ("train.secagg_setup", "train.secagg_share"):  # no keys shared: not asked to train
        name = "node 33" if stage == "train.secagg_setup" else "hospital_33"  # never answered: no name
        assert secure["left_out"] == [name] and s.rounds[1]["failed"] == [name]
    if stage == "train":
        assert secure["dropped"] == ["hospital_33"]  # shared its keys: its masks are recovered
        # the SuperLink still lists it (its heartbeats have not run out yet): not asked to evaluate the model
        asked = [m.metadata.dst_node_id for m in s.configure_evaluate(1, after, ConfigRecord(), grid)]
        assert 33 in grid.get_node_ids() and sorted(asked) == [n for n in NODES if n != 33]
    if stage in ("train.secagg_consistency", "train.secagg_unmask"):
        assert secure["survivors"] == sorted(f"hospital_{n}" for n in NODES)
    # the next round goes on with the hospitals that are left (hospital 33 has vanished)
    grid.nodes.remove(33)
    after2 = run_round(s, grid, 2, after)
    check(after, after2, 2, [n for n in NODES if n != 33])


def test_a_declining_hospital_is_dropped_and_the_schedule_stays_pipelined(consortium_dir):
    grid, s, arrays = Hospitals(consortium_dir), strategy(2), start_model()
    grid.behaviour[(1, 22)] = grid.behaviour[(2, 22)] = "decline"
    for server_round in (1, 2):
        after = run_round(s, grid, server_round, arrays)
        check(arrays, after, server_round, [n for n in NODES if n != 22])
        assert s.rounds[server_round]["secure_aggregation"]["dropped"] == ["hospital_22"]
        arrays = after
    assert (2, "train.secagg_setup") not in grid.sent


def test_an_answer_missing_its_masked_vector_is_rejected_with_a_reason(caplog, consortium_dir):
    grid, s, arrays = Hospitals(consortium_dir), strategy(1), start_model()
    grid.behaviour[(1, 44)] = "no masked vector"
    with caplog.at_level(logging.WARNING):
        after = run_round(s, grid, 1, arrays)
    check(arrays, after, 1, [n for n in NODES if n != 44])
    rejections = s.rounds[1]["secure_aggregation"]["rejections"]
    assert rejections == ["masked_input: hospital_44: malformed answer (KeyError: 'secagg-masked')"]
    assert "malformed answer" in caplog.text


def test_a_prepared_round_whose_hospitals_changed_shares_keys_again(consortium_dir):
    grid, s, arrays = Hospitals(consortium_dir), strategy(2), start_model()
    arrays = run_round(s, grid, 1, arrays)
    grid.nodes.remove(55)  # gone between rounds
    after = run_round(s, grid, 2, arrays)
    check(arrays, after, 2, [n for n in NODES if n != 55])
    assert (2, "train.secagg_setup") in grid.sent


def test_below_threshold_the_round_fails_and_no_model_comes_out(consortium_dir):
    grid, s, arrays = Hospitals(consortium_dir), strategy(1), start_model()
    for node in (11, 22, 33):
        grid.behaviour[(1, node)] = "vanish at train"
    with pytest.raises(BelowThresholdError):
        run_round(s, grid, 1, arrays)


def test_fedprox_local_training_under_secure_aggregation(consortium_dir):
    grid, s, arrays = Hospitals(consortium_dir), strategy(2, SecureFedProx, proximal_mu=0.1), start_model()
    grid.round = 1
    messages = s.configure_train(1, arrays, ConfigRecord(), grid)
    assert [m.content["config"]["proximal-mu"] for m in messages] == [0.1] * len(NODES)
    after, _ = s.aggregate_train(1, grid.send_and_receive(messages))
    check(arrays, after, 1, NODES)


def test_a_hospital_that_lost_its_keys_refuses_to_train_and_is_recovered(consortium_dir):
    """Its SuperNode restarted between rounds, say: it must not spend privacy budget on an
    update it could not send; the round goes on without it, its masks removed."""
    grid, s, arrays = Hospitals(consortium_dir), strategy(2), start_model()
    arrays = run_round(s, grid, 1, arrays)
    grid.contexts[44].state = RecordDict()
    after = run_round(s, grid, 2, arrays)
    check(arrays, after, 2, [n for n in NODES if n != 44])
    assert (2, 44) not in grid.trained and s.rounds[2]["secure_aggregation"]["dropped"] == ["hospital_44"]
