"""A federation of hospitals in one process: the strategy's own messages go to the hospitals' real
stage handlers (`src/client/secure_aggregation.py`) through a Grid stand-in.

The train handler is replaced by a known update per hospital, so the aggregate can be
checked exactly; everything else (signed keys, shares, masking, the consistency check, the
pipelined schedule, each hospital's policy from its node config) is the code that runs in
a federation.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from src.client import secure_aggregation
from src.secagg import SecAggError, error_bound
from src.secagg.identity import new_identity_key, write_roster
from src.secagg.records import flatten
from src.strategies.secure import SecureFedAvg

NODES = [11, 22, 33, 44, 55]
EXAMPLES = {11: 100, 22: 150, 33: 200, 44: 120, 55: 90}
CLIP, BITS = 0.5, 24
HANDLERS = {"train.secagg_setup": lambda msg, context: secure_aggregation.setup(
                msg, context, f"hospital_{msg.metadata.dst_node_id}"),
            "train.secagg_share": secure_aggregation.share_keys,
            "train.secagg_consistency": secure_aggregation.consistency,
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


@pytest.fixture(scope="session")
def consortium_dir(tmp_path_factory):
    """Identity keys of every hospital in NODES and the roster, as the launcher writes them."""
    folder = tmp_path_factory.mktemp("consortium")
    public = {}
    for node in NODES:
        pem, public[f"hospital_{node}"] = new_identity_key()
        (folder / f"hospital_{node}.pem").write_bytes(pem)
    write_roster(folder / "roster.json", public)
    return folder


def node_config(folder, node: int, records: Path, **policy) -> dict:
    """A hospital's own node config: its identity, the roster, its policy, where its records go (beside its
    manifest, which no stage reads)."""
    return {"hospital": f"hospital_{node}", "manifest": str(records / f"hospital_{node}.json"),
            "identity-key": str(folder / f"hospital_{node}.pem"), "roster": str(folder / "roster.json"), **policy}


def update_of(node: int, server_round: int, length: int) -> np.ndarray:
    return np.random.default_rng([node, server_round]).uniform(-CLIP, CLIP, length)


class Hospitals(Grid):
    """Delivers each message to its hospital at once; `behaviour[(round, node)]` makes one misbehave,
    `lies[message type]` rewrites what the server sends (a lying server), `replies` keeps every answer."""

    def __init__(self, folder, nodes=NODES, **policy):
        self.nodes = list(nodes)
        self.records = Path(tempfile.mkdtemp(dir=folder))  # the hospitals' own disks, this grid's alone
        self.contexts = {n: Context(run_id=1, node_id=n, node_config=node_config(folder, n, self.records, **policy),
                                    state=RecordDict(), run_config={}) for n in self.nodes}
        self.behaviour: dict[tuple[int, int], str] = {}
        self.sent: list[tuple[int, str]] = []  # (round, message type), one per exchange
        self.round = 0
        self.trained: set[tuple[int, int]] = set()  # (round, node) that got as far as training
        self.lies: dict = {}
        self.replies: list[Message] = []

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
            if msg.metadata.message_type in self.lies:
                msg = self.lies[msg.metadata.message_type](msg)
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
        self.replies += replies
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


def strategy(rounds: int, kind=SecureFedAvg, n: int = 2, threshold: int | None = None, **extra) -> SecureFedAvg:
    """`n` as federation.min_hospitals: rounds go on with the hospitals that are left."""
    return kind(**extra, clip_range=CLIP, quant_bits=BITS, num_shares=None, threshold=threshold, stage_timeout=10,
                        num_rounds=rounds, min_survivors=n, fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=n,
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


