"""Bad answers are logged, recorded and ignored; hospitals refuse requests that would unmask them."""

import logging

import numpy as np
import pytest

from src.secagg import BelowThresholdError, ClientSession, SecAggError
from src.secagg.identity import consortium
from tests.secagg.secagg_round import Federation, expected_sum, random_inputs

IDS = [3, 9, 27, 81, 243]
L = 64


def reasons(fed, stage):
    return {r.node: r.reason for r in fed.server.rejections if r.stage == stage}


def through_masked_input(updates, weights, **kwargs):
    fed = Federation(IDS, L)
    fed.advertise()
    fed.share_keys()
    fed.masked_input(updates, weights, **kwargs)
    return fed


def test_masked_vector_of_wrong_length_or_dtype_is_ignored(caplog):
    updates, weights = random_inputs(IDS, L)
    fed = Federation(IDS, L)
    fed.advertise()
    fed.share_keys()
    requests = fed.server.masked_input_requests()
    node = IDS[0]
    vector = fed.session(node).masked_input(requests[node], updates[node], weights[node])
    with caplog.at_level(logging.WARNING):
        assert not fed.server.receive_masked_vector(node, vector[:-1])
        assert not fed.server.receive_masked_vector(node, vector.astype(np.int64))
        assert not fed.server.receive_masked_vector(node, vector.astype(np.float64))
        assert not fed.server.receive_masked_vector(node, vector.tolist())
        assert not fed.server.receive_masked_vector(node, vector.reshape(1, -1))
    assert "expected shape" in caplog.text and "uint64" in caplog.text
    assert len(reasons(fed, "masked_input")) == 1 and len(fed.server.rejections) == 5
    assert fed.server.receive_masked_vector(node, vector)  # the right one is still welcome


def test_duplicate_and_out_of_order_answers_are_ignored():
    updates, weights = random_inputs(IDS, L)
    fed = Federation(IDS, L)
    late = IDS[-1]
    fed.advertise(skip={late})
    keys = ClientSession(IDS[0], **fed.server.client_config()).advertise_keys(fed.identities[IDS[0]])
    assert not fed.server.receive_public_keys(IDS[0], keys)  # twice (first keys kept)
    assert "twice" in reasons(fed, "advertise_keys")[IDS[0]]
    assert not fed.server.receive_public_keys(10**6, keys)  # not a participant
    assert "not a participant" in reasons(fed, "advertise_keys")[10**6]
    assert not fed.server.receive_masked_vector(IDS[1], np.zeros(L + 1, np.uint64))  # too early
    assert "out of order" in reasons(fed, "masked_input")[IDS[1]]
    fed.share_keys()
    assert late not in fed.requests
    late_keys = ClientSession(late, **fed.server.client_config()).advertise_keys(fed.identities[late])
    assert not fed.server.receive_public_keys(late, late_keys)  # stage closed
    assert not fed.server.receive_ciphertexts(late, {})  # never advertised
    assert "did not complete the previous stage" in reasons(fed, "share_keys")[late]
    fed.masked_input(updates, weights)
    first = IDS[0]
    assert not fed.server.receive_masked_vector(first, fed.sent[first])  # twice: not added again
    fed.unmask()
    total, weight = fed.server.aggregate()
    want, want_weight = expected_sum(updates, weights, IDS[:-1], 1.0, 16)
    np.testing.assert_array_equal(total, want)
    assert weight == want_weight


def test_ciphertexts_for_the_wrong_neighbours_are_ignored():
    fed = Federation(IDS, L, num_shares=3)
    fed.advertise()
    requests = fed.server.share_keys_requests()
    node = IDS[0]
    cts = fed.session(node).share_keys(requests[node], fed.identities[node])
    assert not fed.server.receive_ciphertexts(node, {**cts, IDS[2]: b"x" * 80})
    assert "expected ciphertexts for" in reasons(fed, "share_keys")[node]
    assert fed.server.receive_ciphertexts(node, cts)


@pytest.mark.parametrize("attack", ["flip", "swap"])
def test_tampered_share_ciphertext_is_rejected_and_the_round_completes(attack, caplog):
    updates, weights = random_inputs(IDS, L)
    src, dst, other = IDS[1], IDS[3], IDS[4]

    def tamper(requests):
        if attack == "flip":
            ct = bytearray(requests[dst][src])
            ct[-1] ^= 1
            requests[dst][src] = bytes(ct)
        else:  # a ciphertext meant for another hospital: bound to (round, src, dst) by the AAD
            requests[dst][src] = requests[other][src]

    with caplog.at_level(logging.WARNING):
        fed = through_masked_input(updates, weights, tamper=tamper)
    assert "failed authentication" in fed.session(dst).rejected[src]
    assert f"hospital {dst} rejected the shares from {src}" in caplog.text
    fed.unmask()
    total, weight = fed.server.aggregate()
    want, want_weight = expected_sum(updates, weights, IDS, 1.0, 16)
    np.testing.assert_array_equal(total, want)
    assert weight == want_weight


def test_a_hospital_unmasks_only_the_survivor_list_it_signed_and_never_both_secrets():
    updates, weights = random_inputs(IDS, L)
    fed = through_masked_input(updates, weights, skip={IDS[4]})  # IDS[4] dropped after sharing its keys
    node, other = IDS[0], IDS[1]  # threshold 3
    me, session = fed.identities[node], fed.session(node)
    with pytest.raises(SecAggError, match="not listed as a survivor"):
        session.sign_survivors(IDS[1:4], me)
    with pytest.raises(BelowThresholdError, match="a sum of 2 hospitals"):
        session.sign_survivors([node, other], me)
    survivors = fed.consistency()
    _, dropped, signatures = fed.server.unmask_request()
    session = fed.session(node)
    with pytest.raises(SecAggError, match="second, different survivor list"):
        session.sign_survivors(survivors[:-1], me)
    with pytest.raises(SecAggError, match="differs from the one it signed"):
        session.unmask(survivors[:-1], dropped, signatures, me)
    with pytest.raises(SecAggError, match="both survivor and dropped"):
        session.unmask(survivors, [other], signatures, me)
    with pytest.raises(SecAggError, match="signed the survivor list"):  # signatures missing or forged
        session.unmask(survivors, dropped, {n: signatures[n] for n in survivors[:2]}, me)
    with pytest.raises(SecAggError, match="signed the survivor list"):
        session.unmask(survivors, dropped, {n: signatures[node] for n in survivors}, me)
    b_shares, sk_shares = session.unmask(survivors, dropped, signatures, me)
    assert set(b_shares) == set(survivors) and set(sk_shares) == {IDS[4]}
    session = ClientSession.from_bytes(session.to_bytes())  # the memory survives the next message
    assert session.unmask(survivors, dropped, signatures, me)[0] == b_shares  # asking again is harmless


def test_a_hospital_singled_out_by_withheld_shares_refuses_to_unmask():
    """The server hands the target only two neighbours' shares (threshold 3: two plus itself pass),
    so it masks with those two alone; it then lists them as dropped and the others as survivors.
    Had the target unmasked, the survivors' shares would rebuild its seed b and both mask keys it
    used: its update, alone (Bonawitz et al.'s U3 ⊆ U2)."""
    updates, weights = random_inputs(IDS, L)
    target, partners = IDS[0], IDS[1:3]
    survivors = [target, *IDS[3:]]

    def withhold(requests):
        requests[target] = {src: ct for src, ct in requests[target].items() if src in partners}

    fed = through_masked_input(updates, weights, tamper=withhold)
    assert fed.session(target).partners == {target, *partners}
    with pytest.raises(SecAggError, match=rf"neighbours \[{IDS[3]}, {IDS[4]}\] are listed as survivors, but "
                                          "their shares never reached it"):
        fed.session(target).sign_survivors(survivors, fed.identities[target])
    signatures = {n: fed._run(n, lambda s, n=n: s.sign_survivors(survivors, fed.identities[n])) for n in IDS[3:]}
    for node in IDS[3:]:  # two signatures on the list, threshold 3: the others reveal nothing either
        with pytest.raises(SecAggError, match="only 2 of its surviving neighbours signed"):
            fed.session(node).unmask(survivors, partners, signatures, fed.identities[node])


def test_client_stages_must_come_in_order():
    me = consortium(["hospital_1"])["hospital_1"]
    session = ClientSession(1, server_round=2, threshold=2, clip_range=1.0, quant_bits=8)
    with pytest.raises(SecAggError, match="out of order"):
        session.share_keys({}, me)
    with pytest.raises(SecAggError, match="out of order"):
        session.unmask([], [], {}, me)
    session.advertise_keys(me)
    with pytest.raises(SecAggError, match="out of order"):
        session.advertise_keys(me)
