"""A whole SecAgg+ round with real cryptography: exact sums, dropouts at every stage, thresholds."""

import numpy as np
import pytest

from src.secagg import BelowThresholdError, SecAggError, ServerSession
from tests.secagg.secagg_round import Federation, expected_sum, random_inputs

IDS3 = [7, 2**64 - 1, 123456789]  # Flower node ids are up to 64-bit
IDS5 = [5, 17, 2**63 + 3, 40, 2**40]
L = 257


def check(fed, total, weight, updates, weights, survivors):
    want, want_weight = expected_sum(updates, weights, survivors, 1.0, 16)
    assert total.dtype == np.uint64 and total.shape == (L,)
    np.testing.assert_array_equal(total, want)
    assert weight == want_weight
    assert sorted(survivors) == fed.server.survivors


@pytest.mark.parametrize("ids", [IDS3, IDS5])
def test_sum_without_dropouts(ids):
    updates, weights = random_inputs(ids, L)
    fed = Federation(ids, L)
    total, weight = fed.run(updates, weights)
    check(fed, total, weight, updates, weights, ids)
    assert fed.server.dropped == [] and fed.server.rejections == []


# "share_keys": advertised keys, then dropped; "masked_input": shared keys, then dropped
# (its pairwise masks are rebuilt from s_sk); "unmask": sent its vector, then dropped.
@pytest.mark.parametrize("ids", [IDS3, IDS5])
@pytest.mark.parametrize("stage", ["advertise", "share_keys", "masked_input", "unmask"])
def test_sum_with_one_dropout_at_each_stage(ids, stage):
    updates, weights = random_inputs(ids, L, seed=1)
    gone = ids[1]
    fed = Federation(ids, L)
    total, weight = fed.run(updates, weights, drop={stage: {gone}})
    survivors = ids if stage == "unmask" else [i for i in ids if i != gone]
    check(fed, total, weight, updates, weights, survivors)
    assert fed.server.dropped == ([gone] if stage == "masked_input" else [])


def test_dropouts_at_several_stages_in_one_round():
    updates, weights = random_inputs(IDS5, L, seed=2)
    fed = Federation(IDS5, L)
    total, weight = fed.run(updates, weights, drop={"masked_input": {IDS5[0]}, "unmask": {IDS5[2]}})
    check(fed, total, weight, updates, weights, [i for i in IDS5 if i != IDS5[0]])


# Positions (in sorted id order) that drop; each neighbourhood keeps at least 3 = threshold.
@pytest.mark.parametrize("n, num_shares, drop", [
    (8, 5, {"masked_input": [0, 1]}),
    (7, 4, {"masked_input": [0, 3]}),  # odd n: degree raised to 5
    (6, 4, {"unmask": [2]}),  # even n: +-1 and the antipode
    (9, 5, {"masked_input": [0], "unmask": [4]}),
])
def test_sparse_graph_with_dropouts(n, num_shares, drop):
    ids = [1000 + 17 * k for k in range(n)]
    updates, weights = random_inputs(ids, L, seed=3)
    fed = Federation(ids, L, num_shares=num_shares)
    assert fed.server.threshold == 3 and all(len(v) < n for v in fed.server.neighbours.values())
    total, weight = fed.run(updates, weights, drop={k: {ids[p] for p in v} for k, v in drop.items()})
    survivors = [i for p, i in enumerate(ids) if p not in drop.get("masked_input", [])]
    check(fed, total, weight, updates, weights, survivors)


def test_too_few_hospitals_advertise():
    fed = Federation(IDS3, L)
    fed.advertise(skip=IDS3[1:])
    with pytest.raises(BelowThresholdError, match="completed advertise_keys"):
        fed.server.share_keys_requests()


def test_too_few_masked_vectors():
    updates, weights = random_inputs(IDS3, L)
    fed = Federation(IDS3, L)
    fed.advertise()
    fed.share_keys()
    fed.masked_input(updates, weights, skip=IDS3[1:])
    with pytest.raises(BelowThresholdError, match="threshold 2"):
        fed.server.consistency_request()


def test_no_unmasking_below_min_survivors():
    """federation.min_hospitals reaches the session: a sum over fewer hospitals is never unmasked,
    so no two sums that differ by one hospital can be differenced."""
    updates, weights = random_inputs(IDS5, L)
    fed = Federation(IDS5, L, min_survivors=5)
    fed.advertise()
    fed.share_keys()
    fed.masked_input(updates, weights, skip=IDS5[4:])
    with pytest.raises(BelowThresholdError, match="at least 5 needed to unmask"):
        fed.server.consistency_request()
    assert fed.server.shares == {}  # nothing was asked of the hospitals


def test_a_tampered_seed_share_is_detected_by_the_commitment():
    updates, weights = random_inputs(IDS5, L)
    fed = Federation(IDS5, L)
    fed.advertise()
    fed.share_keys()
    fed.masked_input(updates, weights)
    fed.unmask()
    holder, owner = sorted(fed.server.shares)[0], IDS5[2]
    share = bytearray(fed.server.shares[holder][0][owner])
    share[5] ^= 1  # in the first 16-byte chunk (4 bytes of index first): a valid-looking, wrong share
    fed.server.shares[holder][0][owner] = bytes(share)
    with pytest.raises(SecAggError, match=f"hospital {owner}'s seed do not match its commitment"):
        fed.server.aggregate()


def test_an_input_outside_the_protocols_range_is_detected():
    """A hospital that adds garbage instead of n_i * q(x_i): the unmasked sum is out of range."""
    updates, weights = random_inputs(IDS5, L)
    fed = Federation(IDS5, L)
    fed.advertise()
    fed.share_keys()
    cheat = IDS5[1]
    fed.masked_input(updates, weights, skip={cheat})
    vector = fed._run(cheat, lambda s: s.masked_input(fed.requests[cheat], updates[cheat], weights[cheat]))
    vector[:-1] += np.uint64(1 << 62)
    assert fed.server.receive_masked_vector(cheat, vector)
    fed.unmask()
    with pytest.raises(SecAggError, match="out of range"):
        fed.server.aggregate()


def test_too_few_shares_then_a_late_answer():
    updates, weights = random_inputs(IDS5, L)
    fed = Federation(IDS5, L)
    fed.advertise()
    fed.share_keys()
    fed.masked_input(updates, weights)
    survivors, dropped = fed.unmask(skip=IDS5[2:])
    with pytest.raises(BelowThresholdError, match="2 shares of the seed b"):
        fed.server.aggregate()
    late = IDS5[2]
    session = fed.session(late)
    assert fed.server.receive_shares(late, *session.unmask(survivors, dropped, fed.server.signatures,
                                                           fed.identities[late]))
    check(fed, *fed.server.aggregate(), updates, weights, IDS5)


def test_refuses_to_unmask_survivors_cut_into_small_groups():
    ids = list(range(1, 9))  # a ring (num_shares 3, threshold 2): hospital 3 loses both neighbours
    updates, weights = random_inputs(ids, L)
    fed = Federation(ids, L, num_shares=3)
    fed.advertise()
    fed.share_keys()
    fed.masked_input(updates, weights, skip={2, 4})
    with pytest.raises(BelowThresholdError, match=r"\[\[3\]\]"):
        fed.server.consistency_request()


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="strategy.threshold"):
        ServerSession(1, IDS5, L, clip_range=1.0, quant_bits=16, threshold=1)
    with pytest.raises(ValueError, match="strategy.threshold"):
        ServerSession(1, IDS5, L, clip_range=1.0, quant_bits=16, threshold=6)
    with pytest.raises(ValueError, match="strategy.quant_bits"):
        ServerSession(1, IDS5, L, clip_range=1.0, quant_bits=0)
