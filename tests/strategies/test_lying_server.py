"""A server that lies, against the hospitals' real stage handlers: every attack is refused.

The strategy is the honest one; `Hospitals.lies` rewrites what it sends on the way, as a
malicious server would: substituted, invented or replayed keys, a lowered threshold,
different survivor lists to different hospitals, a sum over too few hospitals, withheld
shares, a round started again after a hospital masked, a session of another run. The
hospitals enforce their own policy from their node config (`src/client/hospital.py`).
"""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from src.client import secure_aggregation
from src.secagg import BelowThresholdError, RoundKeys, SecAggError
from src.secagg.graph import GraphView
from src.secagg.identity import consortium
from src.secagg.keys import generate_keypair
from src.secagg.records import peers_keys, peers_record, peers_view
from src.server.rounds import RoundFailed, run_rounds
from tests.strategies.federation_grid import (
    BITS,
    CLIP,
    HANDLERS,
    NODES,
    Hospitals,
    run_round,
    start_model,
    strategy,
)

TARGET = NODES[0]


def rewritten(msg: Message, **records) -> Message:
    """The same message with some records replaced (the strategy's records are shared: never edit them)."""
    return Message(content=RecordDict({**msg.content, **records}), dst_node_id=msg.metadata.dst_node_id,
                   message_type=msg.metadata.message_type, group_id=msg.metadata.group_id)


def refusals(grid: Hospitals, node: int) -> list[str]:
    return [r.error.reason for r in grid.replies if r.has_error() and r.metadata.src_node_id == node]


def server_owned_keys(name: str, signer=None) -> RoundKeys:
    """Keys the server holds the private halves of, signed by an identity that is not on the roster."""
    (_, c_pk), (_, s_pk) = generate_keypair(), generate_keypair()
    unsigned = RoundKeys(name, c_pk, s_pk, bytes(32), b"")
    signer = signer or consortium([name])[name]
    return RoundKeys(name, c_pk, s_pk, bytes(32), signer.sign(unsigned.message(1, 1, 99, 3)))


@pytest.mark.parametrize("attack", ["substitute", "invent"])
def test_substituted_or_invented_neighbours_are_refused(consortium_dir, attack):
    grid, s = Hospitals(consortium_dir), strategy(1)

    def lie(msg):
        if msg.metadata.dst_node_id != TARGET:
            return msg
        record = msg.content["peers"]
        keys, view = peers_keys(record), peers_view(record)
        if attack == "substitute":  # hospital_22's keys replaced by the server's own
            keys[NODES[1]] = server_owned_keys("hospital_22")
        else:  # a neighbour that does not exist, in a graph that has it
            keys[99] = server_owned_keys("hospital_99")
            view = GraphView((*view.participants, 99), len(view.participants) + 1, (*view.sharing, 99))
        return rewritten(msg, peers=peers_record(int(record["round"]), keys, view))

    grid.lies["train.secagg_share"] = lie
    run_round(s, grid, 1, start_model())  # the others go on without the target
    [reason] = refusals(grid, TARGET)
    assert "not signed by a hospital of the roster" in reason
    assert s.rounds[1]["secure_aggregation"]["left_out"] == [f"hospital_{TARGET}"]
    assert (1, TARGET) not in grid.trained  # it never trained, never shared a secret with the server's keys


def test_keys_replayed_from_an_earlier_round_are_refused(consortium_dir):
    grid, s, arrays = Hospitals(consortium_dir), strategy(2), start_model()
    seen = {}

    def remember(msg):
        seen.update(peers_keys(msg.content["peers"]))
        return msg

    grid.lies["train.secagg_share"] = remember
    arrays = run_round(s, grid, 1, arrays)
    old = seen[NODES[1]]

    def replay(msg):  # round 2's keys travel on round 1's unmask exchange
        if "peers" not in msg.content or msg.metadata.dst_node_id != TARGET:
            return msg
        record = msg.content["peers"]
        keys = peers_keys(record)
        keys[NODES[1]] = old
        return rewritten(msg, peers=peers_record(int(record["round"]), keys, peers_view(record)))

    grid.lies = {"train.secagg_unmask": replay, "train.secagg_share": replay}
    s.prepared = None  # round 2 shares its keys on its own, through the lie
    run_round(s, grid, 2, arrays)
    assert any("not signed by a hospital of the roster for this run, round" in r for r in refusals(grid, TARGET))
    assert (2, TARGET) not in grid.trained


def test_a_threshold_below_a_strict_majority_is_refused(consortium_dir):
    """threshold 2 of 5: two disjoint groups of neighbours could each rebuild one secret."""
    grid = Hospitals(consortium_dir)
    with pytest.raises(BelowThresholdError):
        run_round(strategy(1, threshold=2), grid, 1, start_model())
    assert all("below 3, a strict majority of its 5 share holders" in r.error.reason
               for r in grid.replies if r.has_error())
    assert not grid.trained


def test_a_threshold_below_the_hospitals_own_minimum_is_refused_at_once(consortium_dir):
    grid = Hospitals(consortium_dir, **{"min-threshold": 4})
    with pytest.raises(BelowThresholdError):
        run_round(strategy(1), grid, 1, start_model())  # the strategy's default: 3 of 5
    assert grid.sent == [(1, "train.secagg_setup")]
    assert all("hospital.min_threshold=4" in r.error.reason for r in grid.replies)


def test_different_survivor_lists_never_yield_both_secrets_of_a_hospital(consortium_dir):
    """The server tells the target and one other hospital that everyone survived, and the other three
    that the target dropped: it wants the target's seed b from the first group and its mask key from
    the second. The consistency check stops the first group; the target's update stays masked."""
    grid, s = Hospitals(consortium_dir), strategy(1)
    told_dropped = set(NODES[2:])
    lists = {}

    def split_consistency(msg):
        node, ask = msg.metadata.dst_node_id, msg.content["consistency"]
        survivors = [n for n in ask["survivors"] if node not in told_dropped or n != TARGET]
        lists[node] = survivors
        return rewritten(msg, consistency=ConfigRecord({"round": ask["round"], "survivors": survivors}))

    def split_unmask(msg):
        node, ask = msg.metadata.dst_node_id, msg.content["unmask"]
        dropped = [TARGET] if node in told_dropped else []
        return rewritten(msg, unmask=ConfigRecord({**ask, "survivors": lists[node], "dropped": dropped}))

    grid.lies = {"train.secagg_consistency": split_consistency, "train.secagg_unmask": split_unmask}
    with pytest.raises(SecAggError):
        run_round(s, grid, 1, start_model())
    revealed = [r.content for r in grid.replies if not r.has_error() and "b" in r.content]
    b_of_target = sum(TARGET in list(c["b"]["nodes"]) for c in revealed)
    sk_of_target = sum(TARGET in list(c["sk"]["nodes"]) for c in revealed)
    threshold = s.current.threshold
    assert not (b_of_target >= threshold and sk_of_target >= threshold)
    assert b_of_target == 0  # the target and its ally saw too few signatures on their list
    assert any("signed the survivor list" in r for r in refusals(grid, TARGET))


def test_withholding_shares_to_single_out_a_hospital_is_refused(consortium_dir):
    """The server hands the target only two neighbours' shares, so it masks with those two alone, then
    lists them as dropped and the others as survivors: the survivors' shares would rebuild the target's
    seed b and both of its mask keys. The target refuses to sign a list of neighbours it never masked with."""
    grid, s = Hospitals(consortium_dir), strategy(1)
    partners, survivors = NODES[1:3], [TARGET, *NODES[3:]]

    def withhold(msg):
        if msg.metadata.dst_node_id != TARGET:
            return msg
        shares = dict(zip(msg.content["secagg-shares"]["from"], msg.content["secagg-shares"]["ciphertexts"]))
        kept = {src: ct for src, ct in shares.items() if src in partners}
        return rewritten(msg, **{"secagg-shares": ConfigRecord({"from": list(kept),
                                                                "ciphertexts": list(kept.values())})})

    def single_out(msg):
        ask = msg.content["consistency"]
        return rewritten(msg, consistency=ConfigRecord({"round": ask["round"], "survivors": survivors}))

    def unmask_alone(msg):
        return rewritten(msg, unmask=ConfigRecord({**msg.content["unmask"], "survivors": survivors,
                                                   "dropped": partners}))

    grid.lies = {"train": withhold, "train.secagg_consistency": single_out, "train.secagg_unmask": unmask_alone}
    with pytest.raises(SecAggError):
        run_round(s, grid, 1, start_model())
    assert any("secagg-masked" in r.content for r in grid.replies  # it trained and sent its masked update
               if not r.has_error() and r.metadata.src_node_id == TARGET)
    assert any("their shares never reached it" in r for r in refusals(grid, TARGET))
    revealed = [r.content for r in grid.replies if not r.has_error() and "b" in r.content]
    assert not any(TARGET in list(c["b"]["nodes"]) for c in revealed)


@pytest.mark.parametrize("restarted", [False, True])
def test_a_round_a_hospital_masked_an_update_for_is_never_started_again(consortium_dir, restarted):
    """Started again after the hospital masked, a round gets a second session that signs a second
    survivor list with fresh keys; a server that shows each neighbour the session it wants then has
    the hospital's signature counted on two lists, and (3 or 5 hospitals, none colluding) gathers
    its seed b and its partners' mask keys: its update, alone. Also after its SuperNode restarted,
    which empties Context.state."""
    grid, s = Hospitals(consortium_dir), strategy(2)
    run_round(s, grid, 1, start_model())
    if restarted:
        grid.contexts[TARGET] = Context(run_id=1, node_id=TARGET, node_config=grid.contexts[TARGET].node_config,
                                        state=RecordDict(), run_config={})

    def setup(server_round):
        settings = {"server_round": server_round, "threshold": 3, "clip_range": CLIP, "quant_bits": BITS,
                    "vector_length": 4}
        return HANDLERS["train.secagg_setup"](Message(RecordDict({"secagg": ConfigRecord(settings)}),
                                                      dst_node_id=TARGET, message_type="train.secagg_setup",
                                                      group_id=str(server_round)), grid.contexts[TARGET])

    for server_round in (1, 0):
        with pytest.raises(SecAggError, match=f"refusing to start secure-aggregation round {server_round} of run 1: "
                                              "this hospital already sent a masked update for round 1"):
            setup(server_round)
    assert "keys" in setup(2).content  # round 2 is yet to be masked: its keys may be set up again
    older = Message(RecordDict({"secagg": ConfigRecord({"server_round": 1}),  # masking an older round would
                                "secagg-shares": ConfigRecord({"from": [], "ciphertexts": []})}),  # lower the record
                    dst_node_id=TARGET, message_type="train", group_id="1")
    with pytest.raises(SecAggError, match="refusing to mask an update for secure-aggregation round 1 of run 1"):
        secure_aggregation.check_ready(older, grid.contexts[TARGET])


@pytest.mark.parametrize("record", ['{"1": null}', '{"1": "1"}', '[1]', 'not json'])
def test_a_record_of_masked_rounds_it_cannot_read_refuses_every_round(consortium_dir, record):
    grid, s = Hospitals(consortium_dir), strategy(2)
    run_round(s, grid, 1, start_model())
    secure_aggregation.masked_rounds(grid.contexts[TARGET]).write_text(record)
    settings = {"server_round": 2, "threshold": 3, "clip_range": CLIP, "quant_bits": BITS, "vector_length": 4}
    with pytest.raises((SecAggError, ValueError), match="cannot read its record|Expecting value"):
        HANDLERS["train.secagg_setup"](Message(RecordDict({"secagg": ConfigRecord(settings)}), dst_node_id=TARGET,
                                               message_type="train.secagg_setup", group_id="2"), grid.contexts[TARGET])


def test_a_session_left_from_another_run_is_refused(consortium_dir):
    """Flower keeps Context.state across the runs of a series: round 2's session, prepared in run 1, is
    not run 2's to drive."""
    from flwr.supercore.task_identity import TaskIdentity

    grid, s = Hospitals(consortium_dir), strategy(2)
    run_round(s, grid, 1, start_model())  # round 2's keys are shared during round 1, in run 1
    TaskIdentity.run_id = 2
    ask = Message(RecordDict({"consistency": ConfigRecord({"round": 2, "survivors": NODES})}), dst_node_id=TARGET,
                  message_type="train.secagg_consistency", group_id="2")
    assert ask.metadata.run_id == 2
    with pytest.raises(SecAggError, match="belongs to run 1, not to run 2"):
        secure_aggregation.consistency(ask, grid.contexts[TARGET])


def test_no_unmasking_below_min_hospitals_at_the_server(consortium_dir):
    grid, s = Hospitals(consortium_dir), strategy(1, n=5)
    grid.behaviour[(1, NODES[2])] = "vanish at train"
    with pytest.raises(BelowThresholdError, match="at least 5 needed to unmask"):
        run_round(s, grid, 1, start_model())
    assert (1, "train.secagg_unmask") not in grid.sent and (1, "train.secagg_consistency") not in grid.sent


def test_no_unmasking_below_a_hospitals_own_minimum_whatever_the_server_asks(consortium_dir):
    """A server configured (or lying) with min_hospitals 2: the hospitals' policy says 5."""
    grid, s = Hospitals(consortium_dir, **{"min-survivors": 5}), strategy(1, n=2)
    grid.behaviour[(1, NODES[2])] = "vanish at train"
    with pytest.raises(SecAggError):
        run_round(s, grid, 1, start_model())
    assert all("hospital.min_survivors=5" in r.error.reason for r in grid.replies[-4:])
    assert not any("b" in r.content for r in grid.replies if not r.has_error())


def test_a_tampered_share_fails_the_round_cleanly_and_releases_no_model(consortium_dir):
    grid, s = Hospitals(consortium_dir), strategy(1)
    original = grid.send_and_receive

    def tampering(messages, *, timeout=None):
        replies = original(messages, timeout=timeout)
        for reply in replies:
            if not reply.has_error() and "b" in reply.content and reply.metadata.src_node_id == NODES[1]:
                b = reply.content["b"]
                shares = [bytes(x) for x in b["shares"]]
                first = bytearray(shares[0])
                first[5] ^= 1
                b["shares"] = [bytes(first), *shares[1:]]
        return replies

    grid.send_and_receive = tampering
    grid.round = 1
    published = []
    with pytest.raises(RoundFailed, match="commitment|inconsistent|reconstruction"):
        run_rounds(s, grid, start_model(), range(1, 2), min_answers=2, timeout=10, train_config=ConfigRecord(),
                   on_round=lambda r, arrays: published.append(r), on_evaluated=lambda r: None)
    assert published == []
