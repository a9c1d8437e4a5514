"""The SecAgg+ neighbour graph: symmetric, regular, itself included; defaults for 3-100 hospitals."""

import pytest

from src.secagg import (
    circulant_neighbours,
    default_num_shares,
    default_threshold,
)
from src.secagg.graph import components


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 10, 17, 50, 100])
@pytest.mark.parametrize("num_shares", [3, 4, 5, 8, 11, None])
def test_graph_is_symmetric_regular_and_includes_itself(n, num_shares):
    ids = [(2**64 - 1) - 977 * k for k in range(n)]
    degree = num_shares or default_num_shares(n)
    graph = circulant_neighbours(ids, degree)
    want = min(n, degree + (n % 2 == 1 and min(n, degree) % 2 == 0))
    for node, near in graph.items():
        assert node in near and len(near) == len(set(near)) == want
        assert all(node in graph[peer] for peer in near)
    assert len(components(ids, graph)) == 1


def test_defaults():
    table = {n: default_num_shares(n) for n in (3, 4, 5, 6, 10, 20, 50, 100)}
    assert table == {3: 3, 4: 4, 5: 5, 6: 6, 10: 9, 20: 11, 50: 13, 100: 15}
    assert [default_threshold(d) for d in (3, 4, 5, 9, 15)] == [2, 3, 3, 5, 8]
    for n in range(3, 101):
        d = default_num_shares(n)
        assert 3 <= d <= n and 2 * default_threshold(d) > d  # a strict majority of the neighbourhood


def test_components_of_a_ring_with_holes():
    ids = list(range(8))
    graph = circulant_neighbours(ids, 3)
    assert sorted(map(sorted, components([0, 2, 4, 5, 6, 7], graph))) == [[0, 4, 5, 6, 7], [2]]


def test_bad_graph_input():
    with pytest.raises(ValueError, match="distinct"):
        circulant_neighbours([1, 1, 2], 3)
    for too_few in (0, 1, 2):  # no pairwise masks, or pairs whose sum gives each away to the other
        with pytest.raises(ValueError, match="strategy.num_shares: expected at least 3"):
            circulant_neighbours([1, 2, 3, 4], too_few)
