"""What secure aggregation costs a round: client and server compute and bytes sent for
(a) plain FedAvg, (b) fedcxr's SecAgg+ (`src/secagg/`) and (c) Flower's own
SecAgg+ (`SecAggPlusWorkflow` + `secaggplus_mod`, legacy API), side by side.

    python bench/secagg.py [--hospitals 3 10 30] [--lengths 1000000 11000000] [--repeats 3]
    python bench/secagg.py --quick    # 3 and 10 hospitals, L = 100000: a check, writes no JSON

Each (hospitals, vector length L, method) runs in a fresh worker process with a time
limit (`--limit-s`) and an address-space limit (`--memory-limit-gb`): a configuration
that runs past either, or dies, is recorded as such. A worker runs a warm-up round at
L = 1000 (imports, first calls into OpenSSL), then `--repeats` rounds, and keeps the
one with the lowest CPU time (the least disturbed by other work on the machine); the
defaults finish in about 11 minutes on 2 cores. Updates are random float32 vectors
uniform in [-clip_range, clip_range], weights n_i uniform in [180, 220], node ids
random 64-bit like Flower's; all methods of one configuration see the same.

How each method runs (all hospitals and the server in one process, one after the other):

- (a) plain: each hospital replies with its float32 update (ArrayRecord) and
  num-examples; the server takes the weighted mean, accumulated in float64 (numpy;
  Flower's Message-API FedAvg accumulates in float32, a little less exact).
- (b) secagg: ClientSession / ServerSession driven stage by stage (advertise_keys,
  share_keys, masked_input, consistency, unmask, aggregate + dequantize_mean) with the
  Ed25519-signed round keys and survivor list, the record layout
  of `src/strategies/secure.py` and `src/client/secure_aggregation.py`: the client state
  goes through to_bytes/from_bytes and Context.state between stages, the update is kept
  in Context.state as float64 from stage 1 to stage 3, the masked vector travels as an
  ArrayRecord of L + 1 uint64 words. Settings: conf/strategy/secagg.yaml. One exchange
  per stage here; the strategy sends stages 1-2 on the previous round's train and
  unmask messages, which changes when they travel, not what they compute or carry, and
  masks right after training, so the update no longer waits in Context.state (this
  bench slightly overstates (b)'s client time).
- (c) flower: Flower 1.41's own code end to end: `secaggplus_mod` in a legacy
  `ClientApp` around a `NumPyClient` whose fit returns the update, and the four stage
  methods of `SecAggPlusWorkflow` (setup, share_keys, collect_masked_vectors, unmask,
  which ends with the legacy FedAvg's aggregate_fit) on a `LegacyContext`, over a small
  in-process Grid instead of `run_simulation`. Why not run_simulation: Ray on 2 shared
  cores would run the virtual clients concurrently, so per-hospital compute could not
  be told apart from scheduling, Ray's object store and protobuf copies of 88 MB
  messages; (b) is measured in-process too, so this keeps the comparison like for like
  while still running Flower's mod and workflow unchanged. Parameters: num_shares and
  reconstruction_threshold = ours (fedcxr's defaults: 3/2 for 3 hospitals, 9/5 for 10,
  11/6 for 30; Flower has no defaults, its example uses 3/2), clipping_range =
  clip_range, quantization_range = 2^quant_bits, max_weight = the largest n_i (so the
  weighted values use the whole quantisation range, as ours do), modulus_range = 2^32
  (Flower's maximum; ours is 2^64). Flower's defaults are clipping 8, 2^22 levels,
  max_weight 1000. Differences that stay: Flower clips x_i * n_i / max_weight, not x_i;
  rounds stochastically; weights are quantised; keys are ECDH P-384 (PEM, ~215 bytes),
  shares Fernet-encrypted, masks NumPy's Mersenne Twister seeded with 32 bits.

Messages go through an in-process transport that deflates each Message into Flower's
wire objects and inflates a copy for the receiver (Flower 1.41's object tree, as the
SuperLink would carry it; the copy matters: the workflow sends one RecordDict to every
node and secaggplus_mod pops the stage key out of what it receives). Bytes = the
deflated objects' sizes, without gRPC/TLS framing; the server's figure leaves out the
global model it sends with the training instruction (4L bytes per hospital, the same
for every method). Transport time is recorded apart ("serde s": deflating every
message, and inflating the server's) and counted in no compute figure.

Times: client = the hospital's own handler code per stage (for (c) the time inside
secaggplus_mod less the NumPyClient fit it calls), summed over the stages, mean and max
over hospitals; server = the strategy/workflow's own code per stage (for (c) each stage
method less the time spent in the Grid); round = sum over stages of the slowest
hospital's time (hospitals run in parallel in a real federation) + server. CPU seconds
(process_time) and wall clock (perf_counter) are both kept; the table and the verdict
use CPU seconds, as other jobs may share the machine (their load average is in the
JSON), with the round's wall clock beside. The aggregate is checked against the exact
weighted mean (float64): max abs error vs the method's bound. Writes
bench/results/secagg.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "secagg.json"
CONF = Path(__file__).resolve().parent.parent / "conf" / "strategy" / "secagg.yaml"
METHODS = ("plain", "secagg", "flower")
DEFAULTS = {"clip_range": 0.5, "quant_bits": 24, "num_shares": None, "threshold": None}
ROUND, SEED = 1, 0


def settings() -> dict:
    """conf/strategy/secagg.yaml's values (DEFAULTS where the file or a key is missing)."""
    if CONF.exists():
        from omegaconf import OmegaConf
        cfg = OmegaConf.to_container(OmegaConf.load(CONF))
        return {k: cfg.get(k, v) for k, v in DEFAULTS.items()} | {"source": str(CONF.relative_to(CONF.parents[2]))}
    return DEFAULTS | {"source": "defaults in bench/secagg.py"}


class Clock:
    """Wall and CPU seconds of a block, added to `into[key]` ([wall, cpu])."""

    def __init__(self, into: dict, key):
        self.into, self.key = into, key

    def __enter__(self):
        self.t = (time.perf_counter(), time.process_time())

    def __exit__(self, *exc):
        w, c = self.into.setdefault(self.key, [0.0, 0.0])
        self.into[self.key] = [w + time.perf_counter() - self.t[0], c + time.process_time() - self.t[1]]


class Federation:
    """Hospitals, weights and updates of one configuration; keeps the exact weighted sum."""

    def __init__(self, hospitals: int, length: int, clip_range: float):
        rng = np.random.default_rng(SEED)
        self.nodes = sorted({int(x) for x in rng.integers(2, 2**63, hospitals)})
        self.weights = {n: int(w) for n, w in zip(self.nodes, rng.integers(180, 221, hospitals))}
        self.length, self.clip = length, clip_range
        self.exact = np.zeros(length, dtype=np.float64)
        self.client, self.server, self.transport = {}, {}, {}  # (node, stage) / stage / stage -> [wall, cpu]
        self.detail = {}  # parts of a server stage worth naming -> [wall, cpu]
        self.sent = {}  # (sender, stage) -> bytes; sender 0 is the server
        self.params = {}  # the method's own parameters, where they differ from conf/strategy/secagg.yaml

    def update(self, node: int) -> np.ndarray:
        """Hospital `node`'s update (generated on demand, outside every timed block)."""
        x = np.random.default_rng([SEED, self.nodes.index(node)]).uniform(-self.clip, self.clip, self.length)
        x = x.astype(np.float32)
        self.exact += float(self.weights[node]) * x.astype(np.float64)  # n_i * x_i in float32 would round
        return x

    def ship(self, msg, sender: int, stage: str, count_arrays: bool = True, copy: bool = True):
        """`msg` as the receiver gets it, through Flower's wire objects; counts the bytes sent.

        copy=False (replies, which the server only reads): the bytes are counted and the
        sender's object is handed over, sparing an inflate of up to 88 MB per reply.
        """
        from flwr.supercore.inflatable.inflatable_object import (
            get_all_nested_objects,
            no_object_id_recompute,
        )
        from flwr.supercore.inflatable.inflatable_utils import (
            inflate_object_from_contents,
        )

        with Clock(self.transport, stage), no_object_id_recompute():
            objects = get_all_nested_objects(msg)
            contents = {oid: obj.deflate() for oid, obj in objects.items()}
            size = sum(len(contents[oid]) for oid, obj in objects.items()
                       if count_arrays or type(obj).__name__ not in ("ArrayRecord", "Array", "ArrayChunk"))
            self.sent[(sender, stage)] = self.sent.get((sender, stage), 0) + size
            return inflate_object_from_contents(msg.object_id, contents) if copy else msg


# --- (a) plain FedAvg ------------------------------------------------------------------------


def run_plain(fed: Federation, cfg: dict) -> tuple[np.ndarray, float]:
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    replies = []
    for node in fed.nodes:
        instruction = Message(RecordDict(), dst_node_id=node, message_type="train", group_id=str(ROUND))
        update = fed.update(node)
        with Clock(fed.client, (node, "train")):
            reply = Message(RecordDict({"arrays": ArrayRecord([update]),
                                        "metrics": MetricRecord({"num-examples": fed.weights[node]})}),
                            reply_to=instruction)
        replies.append(fed.ship(reply, node, "train", copy=False))
    with Clock(fed.server, "train"):
        total, weight = np.zeros(fed.length, dtype=np.float64), 0
        for reply in replies:
            n = int(reply.content["metrics"]["num-examples"])
            total += np.multiply(next(iter(reply.content["arrays"].values())).numpy(), n, dtype=np.float64)
            weight += n
        mean = (total / weight).astype(np.float32)
    return mean, 2.0**-24 * cfg["clip_range"]  # float32 rounding (half an ulp) of a mean within the clip range


# --- (b) fedcxr's secure aggregation ---------------------------------------------------------


def run_secagg(fed: Federation, cfg: dict) -> tuple[np.ndarray, float]:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from src.secagg import (
        ClientSession,
        ServerSession,
        dequantize_mean,
        error_bound,
    )
    from src.secagg.identity import consortium
    from src.secagg.records import keys_record, peers_keys, peers_record, peers_view, round_keys

    state = {node: RecordDict() for node in fed.nodes}  # each hospital's Context.state
    identities = dict(zip(fed.nodes, consortium([f"hospital_{i}" for i in range(len(fed.nodes))]).values()))
    for identity in identities.values():  # the Ed25519 work inside the client stages, counted apart too
        for name in ("sign", "verify"):
            def timed(*args, _call=getattr(identity, name)):
                with Clock(fed.detail, "client signatures (sign + verify, all hospitals)"):
                    return _call(*args)
            setattr(identity, name, timed)

    def keep(node, session, n):
        state[node]["secagg-session"] = ConfigRecord({"state": session.to_bytes(), "num-examples": n})

    def restore(node):
        kept = state[node]["secagg-session"]
        return ClientSession.from_bytes(kept["state"]), int(kept["num-examples"])

    def ask(stage: str, contents: dict, handler) -> list:
        """Server -> each hospital -> server, as the strategy's `_ask` over the Grid."""
        messages = [Message(c, dst_node_id=node, message_type=f"train.{stage}", group_id=str(ROUND))
                    for node, c in contents.items()]
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            received = fed.ship(msg, 0, stage)
            with Clock(fed.client, (node, stage)):
                reply = Message(handler(node, received.content), reply_to=received)
            replies.append((node, fed.ship(reply, node, stage, copy=False).content))
        return replies

    # stage 1: the training instruction carries the session config, the reply carries signed public keys
    with Clock(fed.server, "advertise_keys"):
        server = ServerSession(ROUND, fed.nodes, fed.length, clip_range=cfg["clip_range"],
                               quant_bits=cfg["quant_bits"], num_shares=cfg["num_shares"],
                               threshold=cfg["threshold"])
        secagg = ConfigRecord({f"secagg.{k}": v for k, v in server.client_config().items()})

    def advertise(node, content):
        config = {k.removeprefix("secagg."): v for k, v in content["secagg"].items()}
        session = ClientSession(node, **config, run_id=1)
        keys = session.advertise_keys(identities[node])
        state[node]["secagg-update"] = ArrayRecord([updates.pop(node).astype(np.float64)])
        keep(node, session, fed.weights[node])
        return RecordDict({"secagg-keys": keys_record(keys),
                           "metrics": MetricRecord({"num-examples": fed.weights[node]})})

    updates, replies = {}, []
    for node in fed.nodes:
        updates[node] = fed.update(node)  # the result of local training: not timed
        replies += ask("advertise_keys", {node: RecordDict({"secagg": secagg})}, advertise)
    with Clock(fed.server, "advertise_keys"):
        for node, content in replies:
            server.receive_public_keys(node, round_keys(content["secagg-keys"]))

    def share(node, content):
        session, n = restore(node)
        cts = session.share_keys(peers_keys(content["peers"]), identities[node], peers_view(content["peers"]))
        keep(node, session, n)
        return RecordDict({"shares": ConfigRecord({"to": list(cts), "ciphertexts": list(cts.values())})})

    with Clock(fed.server, "share_keys"):
        requests = {n: RecordDict({"peers": peers_record(ROUND, peers, server.view)})
                    for n, peers in server.share_keys_requests().items()}
    replies = ask("share_keys", requests, share)
    with Clock(fed.server, "share_keys"):
        for node, content in replies:
            server.receive_ciphertexts(node, dict(zip(content["shares"]["to"], content["shares"]["ciphertexts"])))

    def mask(node, content):
        session, n = restore(node)
        update = next(iter(state[node]["secagg-update"].values())).numpy()
        masked = session.masked_input(dict(zip(content["shares"]["from"], content["shares"]["ciphertexts"])),
                                      update, n)
        del state[node]["secagg-update"]
        keep(node, session, n)
        return RecordDict({"masked": ArrayRecord([masked])})

    with Clock(fed.server, "masked_input"):
        requests = {n: RecordDict({"shares": ConfigRecord({"from": list(inc), "ciphertexts": list(inc.values())})})
                    for n, inc in server.masked_input_requests().items()}
    replies = ask("masked_input", requests, mask)
    with Clock(fed.server, "masked_input"):
        for node, content in replies:
            server.receive_masked_vector(node, next(iter(content["masked"].values())).numpy())
        del replies, content

    def sign(node, content):
        session, n = restore(node)
        signature = session.sign_survivors(list(content["consistency"]["survivors"]), identities[node])
        keep(node, session, n)
        return RecordDict({"consistency": ConfigRecord({"signature": signature})})

    with Clock(fed.server, "consistency"):
        survivors = server.consistency_request()
        ask_record = ConfigRecord({"round": ROUND, "survivors": survivors})
    replies = ask("consistency", {n: RecordDict({"consistency": ask_record}) for n in survivors}, sign)
    with Clock(fed.server, "consistency"):
        for node, content in replies:
            server.receive_signature(node, content["consistency"]["signature"])

    def unmask(node, content):
        session, _ = restore(node)
        ask = content["unmask"]
        b, sk = session.unmask(list(ask["survivors"]), list(ask["dropped"]),
                               dict(zip(ask["signers"], ask["signatures"])), identities[node])
        del state[node]["secagg-session"]
        return RecordDict({"b": ConfigRecord({"nodes": list(b), "shares": list(b.values())}),
                           "sk": ConfigRecord({"nodes": list(sk), "shares": list(sk.values())})})

    with Clock(fed.server, "unmask"):
        survivors, dropped, signatures = server.unmask_request()
        ask_record = ConfigRecord({"round": ROUND, "survivors": survivors, "dropped": dropped,
                                   "signers": list(signatures), "signatures": list(signatures.values())})
    replies = ask("unmask", {n: RecordDict({"unmask": ask_record}) for n in survivors}, unmask)
    with Clock(fed.server, "unmask"):
        for node, content in replies:
            server.receive_shares(node, dict(zip(content["b"]["nodes"], content["b"]["shares"])),
                                  dict(zip(content["sk"]["nodes"], content["sk"]["shares"])))
        total, weight = server.aggregate()
        mean = dequantize_mean(total, weight, cfg["clip_range"], cfg["quant_bits"], dtype=np.float64)
    if server.rejections:
        raise RuntimeError(f"secagg rejected answers: {server.rejections}")
    return mean, error_bound(cfg["clip_range"], cfg["quant_bits"])


# --- (c) Flower's SecAgg+ (legacy API) -------------------------------------------------------


def run_flower(fed: Federation, cfg: dict, num_shares: int, threshold: int) -> tuple[np.ndarray, float]:
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.secure_aggregation.secaggplus_constants import (
        RECORD_KEY_CONFIGS,
        Key,
    )
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server import ServerConfig
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey
    from flwr.server.workflow.secure_aggregation.secaggplus_workflow import (
        WorkflowState,
    )
    from flwr.serverapp.grid import Grid
    random.seed(SEED)  # the workflow shuffles the nodes to build the neighbour graph
    np.random.seed(SEED)  # stochastic rounding

    class UpdateClient(NumPyClient):
        def __init__(self, node: int):
            self.node = node

        def fit(self, parameters, config):
            return [fed.update(self.node)], fed.weights[self.node], {}

    def client_fn(context: Context):
        return UpdateClient(context.node_id).to_client()

    def timed_secaggplus_mod(msg, context, call_next):
        """secaggplus_mod, timed without the fit it calls (training, not secure aggregation)."""
        inner = {}

        def timed_call_next(m, c):
            with Clock(inner, "fit"):
                return call_next(m, c)

        stage = msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
        with Clock(fed.client, (msg.metadata.dst_node_id, stage)):
            reply = secaggplus_mod(msg, context, timed_call_next)
        wall, cpu = inner.get("fit", (0.0, 0.0))
        spent = fed.client[(msg.metadata.dst_node_id, stage)]
        fed.client[(msg.metadata.dst_node_id, stage)] = [spent[0] - wall, spent[1] - cpu]
        return reply

    app = ClientApp(client_fn=client_fn, mods=[timed_secaggplus_mod])
    contexts = {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={}) for n in fed.nodes}

    class InProcessGrid(Grid):
        """Delivers each message to the hospital's ClientApp through `fed.ship`, one after the other."""

        def __init__(self):
            self.spent = {}

        def set_run(self, run):
            pass

        @property
        def run(self):
            return None

        def create_message(self, *args, **kwargs):
            raise NotImplementedError

        def get_node_ids(self):
            return list(fed.nodes)

        def push_messages(self, messages):
            raise NotImplementedError

        def pull_messages(self, message_ids):
            raise NotImplementedError

        def send_and_receive(self, messages, *, timeout=None):
            replies = []
            with Clock(self.spent, "grid"):
                for msg in messages:
                    node = msg.metadata.dst_node_id
                    stage = msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
                    received = fed.ship(msg, 0, stage, count_arrays=False)  # not the FitIns' model
                    replies.append(fed.ship(app(received, contexts[node]), node, stage, copy=False))
            return replies

    grid = InProcessGrid()
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=len(fed.nodes),
                      min_available_clients=len(fed.nodes))
    aggregate_fit = strategy.aggregate_fit

    def timed_aggregate_fit(*args):
        with Clock(fed.detail, "unmask: legacy FedAvg.aggregate_fit"):
            return aggregate_fit(*args)

    strategy.aggregate_fit = timed_aggregate_fit
    context = LegacyContext(Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            config=ServerConfig(num_rounds=1), strategy=strategy, client_manager=SimpleClientManager())
    for node in fed.nodes:
        context.client_manager.register(GridClientProxy(node, grid, 1))
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: ROUND})
    # the global model: one value (the model broadcast is the same for every method and not measured here)
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters([np.zeros(1, dtype=np.float32)]), True)

    fed.params = {"num_shares": num_shares, "reconstruction_threshold": threshold,
                  "max_weight": float(max(fed.weights.values())), "clipping_range": cfg["clip_range"],
                  "quantization_range": 2 ** cfg["quant_bits"], "modulus_range": 2**32}
    workflow = SecAggPlusWorkflow(**fed.params)
    max_weight = fed.params["max_weight"]
    state = WorkflowState()
    for stage, step in (("setup", workflow.setup_stage), ("share_keys", workflow.share_keys_stage),
                        ("collect_masked_vectors", workflow.collect_masked_vectors_stage),
                        ("unmask", workflow.unmask_stage)):
        before = list(grid.spent.get("grid", (0.0, 0.0)))
        with Clock(fed.server, stage):
            ok = step(grid, context, state)
        after = grid.spent.get("grid", (0.0, 0.0))
        fed.server[stage] = [fed.server[stage][i] - (after[i] - before[i]) for i in (0, 1)]
        if not ok:
            raise RuntimeError(f"SecAggPlusWorkflow halted at {stage}: {state.failures}")
    mean = parameters_to_ndarrays(compat.arrayrecord_to_parameters(
        context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True))[0]
    # Stochastic rounding: < 1 level (2c/T) per hospital on x_i * w_i, w_i = n_i / max_weight; plus the
    # weights' own quantisation to 1/T (at most 1/(2T) each): N * (2c/T + c/T) / sum(w_i).
    levels, clip = 2 ** cfg["quant_bits"], cfg["clip_range"]
    bound = len(fed.nodes) * 3 * clip / levels / (sum(fed.weights.values()) / max_weight)
    return mean, bound


# --- worker: one (hospitals, length, method) in its own process ------------------------------

STAGES = {"plain": ("train",), "secagg": ("advertise_keys", "share_keys", "masked_input", "consistency", "unmask"),
          "flower": ("setup", "share_keys", "collect_masked_vectors", "unmask")}


def summarize(fed: Federation, method: str) -> dict:
    stages, nodes = STAGES[method], fed.nodes
    zero = [0.0, 0.0]
    per_node = {n: [sum(fed.client.get((n, s), zero)[i] for s in stages) for i in (0, 1)] for n in nodes}
    sent = {n: sum(fed.sent.get((n, s), 0) for s in stages) for n in nodes}
    server = [sum(fed.server.get(s, zero)[i] for s in stages) for i in (0, 1)]
    slowest = [sum(max(fed.client.get((n, s), zero)[i] for n in nodes) for s in stages) for i in (0, 1)]
    out = {
        "client_s_mean": float(np.mean([v[0] for v in per_node.values()])),
        "client_s_max": max(v[0] for v in per_node.values()),
        "client_cpu_s_mean": float(np.mean([v[1] for v in per_node.values()])),
        "client_cpu_s_max": max(v[1] for v in per_node.values()),
        "server_s": server[0], "server_cpu_s": server[1],
        "round_s": slowest[0] + server[0], "round_cpu_s": slowest[1] + server[1],
        "sequential_s": sum(v[0] for v in per_node.values()) + server[0],
        "client_bytes_mean": float(np.mean(list(sent.values()))), "client_bytes_max": max(sent.values()),
        "server_bytes": sum(fed.sent.get((0, s), 0) for s in stages),
        "transport_s": sum(v[0] for v in fed.transport.values()),
        "stages": {s: {"client_s_mean": float(np.mean([fed.client.get((n, s), zero)[0] for n in nodes])),
                       "client_s_max": max(fed.client.get((n, s), zero)[0] for n in nodes),
                       "server_s": fed.server.get(s, zero)[0],
                       "client_bytes_mean": float(np.mean([fed.sent.get((n, s), 0) for n in nodes])),
                       "server_bytes": fed.sent.get((0, s), 0),
                       "transport_s": fed.transport.get(s, zero)[0]} for s in stages},
    }
    if fed.detail:
        out["detail_s"] = {k: v[0] for k, v in fed.detail.items()}
    if fed.params:
        out["params"] = fed.params
    return out


def one_round(hospitals: int, length: int, method: str, cfg: dict, num_shares: int, threshold: int) -> dict:
    fed = Federation(hospitals, length, cfg["clip_range"])
    if method == "plain":
        mean, bound = run_plain(fed, cfg)
    elif method == "secagg":
        mean, bound = run_secagg(fed, cfg)
    else:
        mean, bound = run_flower(fed, cfg, num_shares, threshold)
    error = float(np.max(np.abs(np.asarray(mean, dtype=np.float64) - fed.exact / sum(fed.weights.values()))))
    return {"max_abs_error": error, "error_bound": bound, "within_bound": error <= bound,
            "aggregate_dtype": str(np.asarray(mean).dtype)} | summarize(fed, method)


def worker(hospitals: int, length: int, method: str, repeats: int, memory_limit_gb: float) -> dict:
    """A warm-up round at L = 1000 (imports, first calls into OpenSSL), then `repeats` rounds; the best is kept."""
    if memory_limit_gb > 0:
        limit = int(memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logging.getLogger("flwr").setLevel(logging.ERROR)
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from src.secagg import ServerSession

    # what the ServerApp's runtime sets: instructions are created as the SuperLink's
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    cfg = settings()
    nodes = Federation(hospitals, 1, cfg["clip_range"]).nodes
    probe = ServerSession(ROUND, nodes, 1, clip_range=cfg["clip_range"], quant_bits=cfg["quant_bits"],
                          num_shares=cfg["num_shares"], threshold=cfg["threshold"])
    num_shares, threshold = len(probe.neighbours[nodes[0]]), probe.threshold
    out = {"hospitals": hospitals, "length": length, "method": method, "num_shares": num_shares,
           "threshold": threshold, "load_average_before": os.getloadavg()}
    start, rounds = time.perf_counter(), []
    try:
        one_round(hospitals, 1000, method, cfg, num_shares, threshold)
        for _ in range(repeats):
            rounds.append(one_round(hospitals, length, method, cfg, num_shares, threshold))
    except MemoryError:
        return out | {"status": "out_of_memory", "memory_limit_gb": memory_limit_gb, "rounds_done": len(rounds),
                      "elapsed_s": time.perf_counter() - start}
    best = min(rounds, key=lambda r: r["round_cpu_s"])
    peak = next((int(line.split()[1]) / 1024 for line in Path("/proc/self/status").read_text().splitlines()
                 if line.startswith("VmHWM:")), None) if Path("/proc/self/status").exists() else None
    return out | {"status": "ok", "elapsed_s": time.perf_counter() - start, "repeats": repeats,
                  "round_cpu_s_repeats": [r["round_cpu_s"] for r in rounds],
                  "round_s_repeats": [r["round_s"] for r in rounds],
                  "max_abs_error_repeats": [r["max_abs_error"] for r in rounds],
                  "within_bound_all_repeats": all(r["within_bound"] for r in rounds),
                  "peak_rss_mb": peak, "load_average_after": os.getloadavg()} | best


# --- driver -------------------------------------------------------------------------------------


def measure(hospitals: int, length: int, method: str, repeats: int, limit_s: float, memory_limit_gb: float) -> dict:
    spec = json.dumps({"hospitals": hospitals, "length": length, "method": method, "repeats": repeats,
                       "memory_limit_gb": memory_limit_gb})
    row = {"hospitals": hospitals, "length": length, "method": method}
    env = os.environ | {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", spec], capture_output=True, text=True,
                              env=env, timeout=limit_s, check=False)
    except subprocess.TimeoutExpired:
        return row | {"status": "timeout", "limit_s": limit_s, "load_average": os.getloadavg()}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):]) | {"process_wall_s": time.perf_counter() - start,
                                                        "limit_s": limit_s}
    tail = (proc.stderr.strip().splitlines() or [""])[-1][:500]
    status = "killed (SIGKILL: out of memory?)" if proc.returncode == -9 else "error"
    if "MemoryError" in proc.stderr:
        status = "out_of_memory"
    return row | {"status": status, "returncode": proc.returncode, "error": tail, "limit_s": limit_s}


def compare(rows: list[dict]) -> dict:
    """Ratios per (hospitals, length): each method vs plain, and secagg / flower."""
    out = {}
    for key in sorted({(r["hospitals"], r["length"]) for r in rows}):
        by = {r["method"]: r for r in rows if (r["hospitals"], r["length"]) == key and r.get("status") == "ok"}
        entry = {}
        for m, r in by.items():
            if "plain" in by and m != "plain":
                r["round_vs_plain"] = r["round_s"] / by["plain"]["round_s"]
                r["round_cpu_vs_plain"] = r["round_cpu_s"] / by["plain"]["round_cpu_s"]
                r["client_bytes_vs_plain"] = r["client_bytes_mean"] / by["plain"]["client_bytes_mean"]
        if "secagg" in by and "flower" in by:
            b, c = by["secagg"], by["flower"]
            entry = {k: b[k] / c[k] for k in ("round_s", "round_cpu_s", "client_s_mean", "client_cpu_s_mean",
                                              "server_s", "server_cpu_s", "client_bytes_mean", "server_bytes")}
            entry["secagg_faster"] = b["round_cpu_s"] < c["round_cpu_s"]
            entry["secagg_faster_wall"] = b["round_s"] < c["round_s"]
        else:
            missing = [m for m in ("secagg", "flower") if m not in by]
            entry = {"secagg_faster": None, "why": f"no result for {', '.join(missing)}"}
        out[f"{key[0]}x{key[1]}"] = entry
    return out


def machine() -> dict:
    import cryptography
    import flwr

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"machine": platform.machine(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__, "flwr": flwr.__version__,
            "cryptography": cryptography.__version__}


def fmt_bytes(n) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _ratio(x) -> str:
    return "" if x is None else f"{x:.2f}"


def print_table(rows: list[dict], ratios: dict) -> None:
    """CPU seconds (process_time: the machine is shared, wall clock is in the JSON and the 'wall' column)."""
    print(f"{'hosp':>4s} {'L':>9s} {'method':7s} {'client s mean/max':>17s} {'server s':>9s} {'round s':>8s} "
          f"{'(wall)':>8s} {'bytes/client':>12s} {'bytes server':>12s} {'x plain':>8s} {'b/c':>5s} {'(wall)':>6s} "
          f"{'serde s':>7s} {'err<=bound':>10s}")
    for r in rows:
        lead = f"{r['hospitals']:4d} {r['length']:9d} {r['method']:7s}"
        if r.get("status") != "ok":
            print(f"{lead} {r.get('status')}" + (f" (limit {r['limit_s']:g} s)" if r.get("status") == "timeout"
                                                  else f": {r.get('error', '')}"))
            continue
        x = r.get("round_cpu_vs_plain")
        bc = ratios.get(f"{r['hospitals']}x{r['length']}", {}) if r["method"] == "secagg" else {}
        print(f"{lead} {r['client_cpu_s_mean']:7.3f}/{r['client_cpu_s_max']:<9.3f} {r['server_cpu_s']:9.3f} "
              f"{r['round_cpu_s']:8.3f} {r['round_s']:8.3f} "
              f"{fmt_bytes(r['client_bytes_mean']):>12s} {fmt_bytes(r['server_bytes']):>12s} "
              f"{'' if x is None else f'{x:7.1f}x':>8s} "
              f"{_ratio(bc.get('round_cpu_s')):>5s} {_ratio(bc.get('round_s')):>6s} "
              f"{r['transport_s']:7.2f} {'yes' if r['within_bound_all_repeats'] else 'NO':>10s}")
    print("fedcxr's defences against a lying server, per round (wall clock): the consistency stage "
          "(signing the survivor list) and all Ed25519 signing/verification")
    for r in rows:
        if r["method"] == "secagg" and r.get("status") == "ok":
            c = r["stages"]["consistency"]
            signatures = r.get("detail_s", {}).get("client signatures (sign + verify, all hospitals)", 0.0)
            print(f"{r['hospitals']:4d} {r['length']:9d}  consistency: client {1e3 * c['client_s_max']:.2f} ms, "
                  f"server {1e3 * c['server_s']:.2f} ms, {fmt_bytes(c['client_bytes_mean'])}/client, "
                  f"{fmt_bytes(c['server_bytes'])} server; signatures {1e3 * signatures:.2f} ms over all hospitals; "
                  f"{100 * (c['client_s_max'] + c['server_s']) / r['round_s']:.2f}% of the round")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hospitals", type=int, nargs="+", default=None, help="default 3 10 30 (--quick: 3 10)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="update lengths L (default 1000000 11000000; --quick: 100000)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--quick", action="store_true", help="small sizes, a check that everything runs")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per configuration; the lowest CPU time is kept")
    parser.add_argument("--limit-s", type=float, default=None, help="per configuration (default 600; --quick 120)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="configurations not started by then are recorded as not run (default 1200; --quick 300)")
    parser.add_argument("--memory-limit-gb", type=float, default=16.0, help="address space of a worker (0: none)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON to write (default {RESULTS.relative_to(RESULTS.parents[2])}; --quick: none, so "
                             "that a check does not overwrite the full results)")
    args = parser.parse_args()
    out = args.out or (None if args.quick else RESULTS)
    hospitals = args.hospitals or ([3, 10] if args.quick else [3, 10, 30])
    lengths = args.lengths or ([100_000] if args.quick else [1_000_000, 11_000_000])
    limit_s = args.limit_s or (120.0 if args.quick else 600.0)
    budget_s = args.budget_s or (300.0 if args.quick else 1200.0)

    load_before, start, rows = os.getloadavg(), time.perf_counter(), []
    for length in sorted(lengths):
        for n in sorted(hospitals):
            for method in args.methods:
                left = budget_s - (time.perf_counter() - start)
                if left < 10:
                    rows.append({"hospitals": n, "length": length, "method": method,
                                 "status": "not run: the benchmark's time budget was spent", "budget_s": budget_s})
                else:
                    rows.append(measure(n, length, method, args.repeats, min(limit_s, left), args.memory_limit_gb))
                r = rows[-1]
                print(f"  {n} hospitals, L={length}, {method}: " + (
                    f"round {r['round_s']:.3f} s, error {r['max_abs_error']:.2e} (bound {r['error_bound']:.2e})"
                    if r.get("status") == "ok" else r.get("status")), file=sys.stderr, flush=True)
    ratios = compare(rows)
    cfg = settings()
    report = {
        "settings": {"secagg": cfg, "round": ROUND, "seed": SEED, "weights": "n_i uniform integers in [180, 220]",
                     "updates": f"float32 uniform in [-{cfg['clip_range']}, {cfg['clip_range']}]",
                     "repeats": args.repeats,
                     "statistic": "the repeat with the lowest round_cpu_s, after a warm-up round at L = 1000",
                     "limit_s": limit_s, "budget_s": budget_s, "memory_limit_gb": args.memory_limit_gb,
                     "flower": "SecAggPlusWorkflow stages + secaggplus_mod run unchanged in one process over an "
                               "in-process Grid (not run_simulation/Ray); num_shares/threshold = fedcxr's, "
                               "clipping_range = clip_range, quantization_range = 2^quant_bits, "
                               "max_weight = max n_i, modulus_range = 2^32",
                     "times": "client: per hospital, summed over stages (mean/max over hospitals); server: the "
                              "strategy/workflow's own code; round: sum over stages of the slowest hospital + server; "
                              "wall clock (perf_counter), *_cpu_s: process_time",
                     "bytes": "Flower wire objects (deflated Message trees), no gRPC/TLS framing; server bytes: all "
                              "it sends to all hospitals for the protocol, without the global model (4L per hospital "
                              "for every method)",
                     "aggregate_dtype": "what each method's aggregation returns: fedcxr's strategy adds its float64 "
                                        "mean delta to the model and keeps the model's dtype (apply_update in "
                                        "src/strategies/secure.py); Flower's workflow stores its float64 result as "
                                        "the new global parameters"},
        "machine": machine() | {"load_average_before": load_before, "load_average_after": os.getloadavg()},
        "wall_s": time.perf_counter() - start,
        "verdict": {"aim": "at equal hospitals and L, fedcxr's secure aggregation (b) takes less time per round "
                           "than Flower's SecAgg+ (c); judged on CPU seconds (round_cpu_s: the machine is shared), "
                           "wall clock alongside",
                    "secagg_over_flower": ratios,
                    "met": (None if not ratios or any(v["secagg_faster"] is None for v in ratios.values())
                            else all(v["secagg_faster"] for v in ratios.values())),
                    "not_compared": [k for k, v in ratios.items() if v["secagg_faster"] is None]},
        "results": rows,
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(rows, ratios)
    print(f"(b) secagg faster than (c) flower in every configuration: {report['verdict']['met']}; "
          f"load average {load_before[0]:.2f} before, {report['machine']['load_average_after'][0]:.2f} after; "
          + (f"wrote {out}" if out is not None else "no JSON written (--out PATH to write one)"))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print("RESULT " + json.dumps(worker(**json.loads(sys.argv[2]))), flush=True)
    else:
        main()
