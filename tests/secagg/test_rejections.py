"""Bad answers are logged, recorded and ignored; hospitals refuse requests that would unmask them."""

import logging

import numpy as np
import pytest

from src.secagg import BelowThresholdError, ClientSession, SecAggError
from src.secagg.graph import GraphView
from src.secagg.identity import consortium, survivors_message
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
    cts = fed.session(node).share_keys(requests[node], fed.identities[node], fed.server.view)
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


def test_neighbourhoods_tailored_hospital_by_hospital_do_not_unmask_one():
    """9 hospitals, threshold 3 (a strict majority of every neighbourhood shown), none colluding.
    The server shows u the neighbours w1, w2, v1, v2 and hands it only w1's and w2's shares; shows
    w1 and w2 the neighbours u, z1, z2, z3; v1 and v2 the neighbours u, y and each other, y only
    v1 and v2. It asks u, w1, w2 to sign {u, w1, w2}; v1, v2, y {u, v1, v2, y}; z1, z2, z3
    {z1, z2, z3}, and the z's to reveal the mask keys of w1 and w2. Had u, v1 and v2 revealed u's
    seed b, the server would rebuild u's update alone (it did before hospitals checked the graph).
    Now hospitals sign only lists within the graph they were shown, count only signatures made
    under that graph, and u's seed b never leaves a hospital."""
    u, w1, w2, v1, v2, y, z1, z2, z3 = ids = list(range(1, 10))
    shown = {u: (u, w1, w2, v1, v2), w1: (w1, u, z1, z2, z3), w2: (w2, u, z1, z2, z3),
             v1: (u, v1, v2, y), v2: (u, v1, v2, y), y: (v1, v2, y), **{z: (z1, z2, z3, w1, w2) for z in (z1, z2, z3)}}
    lists = {**{n: [u, w1, w2] for n in (u, w1, w2)}, **{n: [u, v1, v2, y] for n in (v1, v2, y)},
             **{z: [z1, z2, z3] for z in (z1, z2, z3)}}
    me = dict(zip(ids, consortium([f"hospital_{i}" for i in ids]).values()))
    sessions = {n: ClientSession(n, server_round=1, threshold=3, clip_range=1.0, quant_bits=16) for n in ids}
    keys = {n: sessions[n].advertise_keys(me[n]) for n in ids}
    sent = {n: sessions[n].share_keys({p: keys[p] for p in shown[n]}, me[n], GraphView(shown[n], 5, shown[n]))
            for n in ids}
    inbox = {n: {src: sent[src][n] for src in shown[n] if n in sent.get(src, {})} for n in ids}
    inbox[u] = {src: inbox[u][src] for src in (w1, w2)}  # it masks with w1 and w2 alone
    updates, weights = random_inputs(ids, L)
    for n in ids:
        sessions[n].masked_input(inbox[n], updates[n], weights[n])
    signatures = {}
    for n in ids:
        try:
            signatures[n] = sessions[n].sign_survivors(lists[n], me[n])
        except SecAggError as err:
            assert n in (w1, w2, y) and "did not share keys in the graph the server announced" in str(err)
    b_of_u, sk_of = 0, {w1: 0, w2: 0}
    for n, dropped in [(u, []), (v1, []), (v2, []), (z1, [w1, w2]), (z2, [w1, w2]), (z3, [w1, w2])]:
        together = {m: signatures[m] for m in signatures if lists[m] == lists[n]}
        try:
            b, sk = sessions[n].unmask(lists[n], dropped, together, me[n])
        except SecAggError as err:
            assert f"only {1 if n == u else 2} of its surviving neighbours signed the survivor list" in str(err)
            continue
        b_of_u += u in b
        for w in sk:
            sk_of[w] += 1
    assert sk_of == {w1: 3, w2: 3}  # the mask keys u used are the server's ...
    assert b_of_u == 0  # ... but its seed b is not: u's update stays masked


def test_only_signatures_under_the_same_graph_and_round_keys_count():
    """A signature counts only if made under the graph this hospital was shown and with the round keys
    it holds of the signer: otherwise a server could gather signatures across tailored graphs, or start
    a hospital's round again (fresh keys, a fresh 'one list per round') to have it sign a second list."""
    updates, weights = random_inputs(IDS, L)
    fed = Federation(IDS, L)
    fed.advertise()
    fed.share_keys()
    view, first_keys = fed.server.view, fed.requests[IDS[0]]
    fed.masked_input(updates, weights)
    node, survivors = IDS[0], IDS[:3]
    signatures = {n: fed._run(n, lambda s, n=n: s.sign_survivors(survivors, fed.identities[n])) for n in survivors}
    again = ClientSession(IDS[2], **fed.server.client_config())  # its round started again by the server
    fresh = again.advertise_keys(fed.identities[IDS[2]])
    junk = {src: bytes(80) for src in IDS[:2]}  # any ciphertexts do: they fail, but it masks with their senders
    again.share_keys({**{p: k for p, k in first_keys.items() if p != IDS[2]}, IDS[2]: fresh}, fed.identities[IDS[2]],
                     view)
    again.masked_input(junk, updates[IDS[2]], weights[IDS[2]])
    other = GraphView(IDS, 4, IDS)
    forged = {**signatures, IDS[1]: fed.identities[IDS[1]].sign(survivors_message(
        0, 1, IDS[1], survivors, other.digest(), fed.session(IDS[1]).state.peers[IDS[1]]))}
    for bad in ({**signatures, IDS[2]: again.sign_survivors(survivors, fed.identities[IDS[2]])}, forged):
        with pytest.raises(SecAggError, match="only 2 of its surviving neighbours signed the survivor list and graph"):
            fed.session(node).unmask(survivors, IDS[3:], bad, fed.identities[node])
    assert set(fed.session(node).unmask(survivors, IDS[3:], signatures, fed.identities[node])[0]) == set(survivors)


def test_a_hospital_that_asks_for_a_complete_graph_refuses_a_sparse_one():
    ids = list(range(1, 9))
    fed = Federation(ids, L, num_shares=5)
    fed.advertise()
    requests = fed.server.share_keys_requests()
    strict = ClientSession(1, **fed.server.client_config(), complete_graph=True)
    strict.advertise_keys(fed.identities[1])
    with pytest.raises(SecAggError, match=r"neighbour of 5 of the 8 hospitals .* \(hospital.complete_graph\)"):
        strict.share_keys(requests[1], fed.identities[1], fed.server.view)
    assert fed.session(1).share_keys(requests[1], fed.identities[1], fed.server.view)  # without the policy: fine


def test_survivors_that_shared_no_keys_do_not_count():
    """min_survivors 4: a list of three hospitals padded with an id that shared no keys is refused."""
    updates, weights = random_inputs(IDS, L)
    fed = through_masked_input(updates, weights)
    with pytest.raises(SecAggError, match=r"survivors \[999\] did not share keys in the graph"):
        fed.session(IDS[0]).sign_survivors([*IDS[:3], 999], fed.identities[IDS[0]])


def test_keys_that_are_not_the_announced_neighbourhood_are_refused():
    fed = Federation(IDS, L)
    fed.advertise()
    requests, node = fed.server.share_keys_requests(), IDS[0]
    fewer = {p: k for p, k in requests[node].items() if p != IDS[4]}
    with pytest.raises(SecAggError, match=r"but its neighbours in the announced graph are"):
        fed.session(node).share_keys(fewer, fed.identities[node], fed.server.view)
    with pytest.raises(SecAggError, match="malformed graph"):
        fed.session(node).share_keys(requests[node], fed.identities[node], GraphView(IDS[1:], 5, IDS[1:]))


def test_client_stages_must_come_in_order():
    me = consortium(["hospital_1"])["hospital_1"]
    session = ClientSession(1, server_round=2, threshold=2, clip_range=1.0, quant_bits=8)
    with pytest.raises(SecAggError, match="out of order"):
        session.share_keys({}, me, None)
    with pytest.raises(SecAggError, match="out of order"):
        session.unmask([], [], {}, me)
    session.advertise_keys(me)
    with pytest.raises(SecAggError, match="out of order"):
        session.advertise_keys(me)
