"""`strategy=secagg` over several rounds, in process: the strategy's own messages go to the
hospitals' real stage handlers (`src/client/secure_aggregation.py`) through a Grid stand-in.

The train handler is replaced by a known update per hospital, so the aggregate can be
checked exactly; everything else (keys, shares, masking, the pipelined schedule) is the code
that runs in a federation.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from src.client import secure_aggregation
from src.strategies.secagg import BelowThresholdError, SecAggError, error_bound
from src.strategies.secure import SecureFedAvg, SecureFedProx, flatten

NODES = [11, 22, 33, 44, 55]
EXAMPLES = {11: 100, 22: 150, 33: 200, 44: 120, 55: 90}
CLIP, BITS = 0.5, 24
HANDLERS = {"train.secagg_setup": lambda msg, context: secure_aggregation.setup(
                msg, context, f"hospital_{msg.metadata.dst_node_id}"),
            "train.secagg_share": secure_aggregation.share_keys,
            "train.secagg_unmask": secure_aggregation.unmask}


@pytest.fixture(autouse=True)
def server_identity():
    """What Flower's ServerApp runtime sets before the strategy creates messages."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def update_of(node: int, server_round: int, length: int) -> np.ndarray:
    return np.random.default_rng([node, server_round]).uniform(-CLIP, CLIP, length)


class Hospitals(Grid):
    """Delivers each message to its hospital at once; `behaviour[(round, node)]` makes one misbehave."""

    def __init__(self, nodes=NODES):
        self.nodes = list(nodes)
        self.contexts = {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={})
                         for n in self.nodes}
        self.behaviour: dict[tuple[int, int], str] = {}
        self.sent: list[tuple[int, str]] = []  # (round, message type), one per exchange
        self.round = 0
        self.trained: set[tuple[int, int]] = set()  # (round, node) that got as far as training

    def set_run(self, run_id):
        pass

    @property
    def run(self):
        return None

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.sent.append((self.round, messages[0].metadata.message_type))
        replies = []
        for msg in messages:
            node, server_round = msg.metadata.dst_node_id, self.round
            todo = self.behaviour.get((server_round, node))
            if todo == f"vanish at {msg.metadata.message_type}" or todo == "vanished":
                self.behaviour[(server_round, node)] = "vanished"
                continue
            handler = HANDLERS.get(msg.metadata.message_type, self.train)
            try:
                replies.append(handler(msg, self.contexts[node]))
            except SecAggError as e:  # what Flower answers for a handler that raised
                self.trained.discard((server_round, node))
                replies.append(Message(error=Error(code=0, reason=str(e)), reply_to=msg))
        return replies

    def train(self, msg: Message, context: Context) -> Message:
        node, server_round = msg.metadata.dst_node_id, self.round
        content = RecordDict({"metrics": MetricRecord({"num-examples": EXAMPLES[node]}),
                              "hospital": ConfigRecord({"name": f"hospital_{node}"})})
        secure_aggregation.check_ready(msg, context)  # as the ClientApp does, before training
        self.trained.add((server_round, node))
        todo = self.behaviour.get((server_round, node))
        if todo == "decline":
            content["hospital"]["declined"] = "privacy budget spent"
            records = secure_aggregation.decline(msg, context)
        else:
            length = flatten(msg.content["arrays"]).size
            records = secure_aggregation.contribute(msg, context, update_of(node, server_round, length),
                                                    EXAMPLES[node])
            if todo == "no masked vector":
                del records["secagg-masked"]
        for name, record in records.items():
            content[name] = record
        return Message(content, reply_to=msg)


def strategy(rounds: int, kind=SecureFedAvg, **extra) -> SecureFedAvg:
    n = 2  # as federation.min_hospitals: rounds go on with the hospitals that are left
    return kind(**extra, clip_range=CLIP, quant_bits=BITS, num_shares=None, threshold=None, stage_timeout=10,
                        num_rounds=rounds, fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=n,
                        min_evaluate_nodes=n, min_available_nodes=n)


def run_round(s: SecureFedAvg, grid: Hospitals, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
    grid.round = server_round
    replies = grid.send_and_receive(s.configure_train(server_round, arrays, ConfigRecord(), grid))
    aggregated, _ = s.aggregate_train(server_round, replies)
    return aggregated


def expected_mean(server_round: int, contributors, length: int) -> np.ndarray:
    total = sum(EXAMPLES[n] * update_of(n, server_round, length) for n in contributors)
    return total / sum(EXAMPLES[n] for n in contributors)


def start_model() -> ArrayRecord:
    return ArrayRecord(array_dict={"w": Array(np.zeros((20, 5), dtype=np.float32)),
                                   "b": Array(np.zeros(7, dtype=np.float32)), "steps": Array(np.array([3]))})


def check(before: ArrayRecord, after: ArrayRecord, server_round: int, contributors) -> None:
    delta = flatten(after) - flatten(before)
    expected = expected_mean(server_round, contributors, delta.size)
    # quantisation (clip / (2^bits - 1)) plus the float32 of the model's weights
    assert np.max(np.abs(delta - expected)) <= error_bound(CLIP, BITS) + 1e-6
    assert after["steps"].numpy().tolist() == [3]


def test_keys_for_the_next_round_are_shared_during_this_one():
    grid, s, arrays = Hospitals(), strategy(3), start_model()
    for server_round in (1, 2, 3):
        after = run_round(s, grid, server_round, arrays)
        check(arrays, after, server_round, NODES)
        arrays = after
    assert grid.sent == [(1, "train.secagg_setup"), (1, "train.secagg_share"), (1, "train"), (1, "train.secagg_unmask"),
                         (2, "train"), (2, "train.secagg_unmask"), (3, "train"), (3, "train.secagg_unmask")]
    assert [s.rounds[r]["secure_aggregation"]["keys"] for r in (1, 2, 3)] == [
        "shared before training", "shared during round 1", "shared during round 2"]
    # a hospital keeps no session beyond the last round, and never its update
    assert all(not list(c.state) for c in grid.contexts.values())


@pytest.mark.parametrize("stage", ["train.secagg_setup", "train.secagg_share", "train", "train.secagg_unmask"])
def test_a_hospital_that_vanishes_at_any_stage_leaves_the_sum_of_the_others(stage):
    grid, s, arrays = Hospitals(), strategy(2), start_model()
    grid.behaviour[(1, 33)] = f"vanish at {stage}"
    after = run_round(s, grid, 1, arrays)
    contributors = NODES if stage == "train.secagg_unmask" else [n for n in NODES if n != 33]
    check(arrays, after, 1, contributors)
    secure = s.rounds[1]["secure_aggregation"]
    if stage in ("train.secagg_setup", "train.secagg_share"):  # no keys shared: not asked to train
        name = "node 33" if stage == "train.secagg_setup" else "hospital_33"  # never answered: no name
        assert secure["left_out"] == [name] and s.rounds[1]["failed"] == [name]
    if stage == "train":
        assert secure["dropped"] == ["hospital_33"]  # shared its keys: its masks are recovered
    if stage == "train.secagg_unmask":
        assert secure["survivors"] == sorted(f"hospital_{n}" for n in NODES)
    # the next round goes on with the hospitals that are left (hospital 33 has vanished)
    grid.nodes.remove(33)
    after2 = run_round(s, grid, 2, after)
    check(after, after2, 2, [n for n in NODES if n != 33])


def test_a_declining_hospital_is_dropped_and_the_schedule_stays_pipelined():
    grid, s, arrays = Hospitals(), strategy(2), start_model()
    grid.behaviour[(1, 22)] = grid.behaviour[(2, 22)] = "decline"
    for server_round in (1, 2):
        after = run_round(s, grid, server_round, arrays)
        check(arrays, after, server_round, [n for n in NODES if n != 22])
        assert s.rounds[server_round]["secure_aggregation"]["dropped"] == ["hospital_22"]
        arrays = after
    assert (2, "train.secagg_setup") not in grid.sent


def test_an_answer_missing_its_masked_vector_is_rejected_with_a_reason(caplog):
    grid, s, arrays = Hospitals(), strategy(1), start_model()
    grid.behaviour[(1, 44)] = "no masked vector"
    with caplog.at_level(logging.WARNING):
        after = run_round(s, grid, 1, arrays)
    check(arrays, after, 1, [n for n in NODES if n != 44])
    rejections = s.rounds[1]["secure_aggregation"]["rejections"]
    assert rejections == ["masked_input: hospital_44: malformed answer (KeyError: 'secagg-masked')"]
    assert "malformed answer" in caplog.text


def test_a_prepared_round_whose_hospitals_changed_shares_keys_again():
    grid, s, arrays = Hospitals(), strategy(2), start_model()
    arrays = run_round(s, grid, 1, arrays)
    grid.nodes.remove(55)  # gone between rounds
    after = run_round(s, grid, 2, arrays)
    check(arrays, after, 2, [n for n in NODES if n != 55])
    assert (2, "train.secagg_setup") in grid.sent


def test_below_threshold_the_round_fails_and_no_model_comes_out():
    grid, s, arrays = Hospitals(), strategy(1), start_model()
    for node in (11, 22, 33):
        grid.behaviour[(1, node)] = "vanish at train"
    with pytest.raises(BelowThresholdError):
        run_round(s, grid, 1, arrays)


def test_fedprox_local_training_under_secure_aggregation():
    grid, s, arrays = Hospitals(), strategy(2, SecureFedProx, proximal_mu=0.1), start_model()
    grid.round = 1
    messages = s.configure_train(1, arrays, ConfigRecord(), grid)
    assert [m.content["config"]["proximal-mu"] for m in messages] == [0.1] * len(NODES)
    after, _ = s.aggregate_train(1, grid.send_and_receive(messages))
    check(arrays, after, 1, NODES)


def test_a_hospital_that_lost_its_keys_refuses_to_train_and_is_recovered():
    """Its SuperNode restarted between rounds, say: it must not spend privacy budget on an
    update it could not send; the round goes on without it, its masks removed."""
    grid, s, arrays = Hospitals(), strategy(2), start_model()
    arrays = run_round(s, grid, 1, arrays)
    grid.contexts[44].state = RecordDict()
    after = run_round(s, grid, 2, arrays)
    check(arrays, after, 2, [n for n in NODES if n != 44])
    assert (2, 44) not in grid.trained and s.rounds[2]["secure_aggregation"]["dropped"] == ["hospital_44"]
