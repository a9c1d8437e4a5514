"""Who shares secrets and masks with whom (SecAgg+, Bell et al. 2020).

Full SecAgg pairs every hospital with every other: O(n^2) mask expansions. SecAgg+
only pairs neighbours in a sparse graph. Ours is a circulant graph over the sorted
node ids: hospital at position p is neighbour of positions p +- 1, ..., p +- k (and
p + n/2 when an even degree needs it). It is symmetric (a pairwise mask needs both
ends), every hospital has the same degree, and it stays connected until 2k
hospitals drop, so the survivors rarely split into small groups whose sums the
server could read (the server refuses to unmask if they do).

`num_shares` is the degree counting the hospital itself (it keeps one share of its
own secrets), as in Flower's SecAgg+.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from .keys import u64


def default_num_shares(num_hospitals: int) -> int:
    """2*ceil(log2 n) + 1, at most n.

    Logarithmic degree is what SecAgg+ needs for the graph to stay connected w.h.p.
    Concretely: n <= 5 -> everyone (complete graph, plain SecAgg); 10 -> 9; 20 -> 11;
    50 -> 13; 100 -> 15. A hospital then expands at most 14 pairwise masks a round
    instead of 99, and a neighbourhood survives up to (num_shares - 1) // 2 dropouts.
    """
    n = int(num_hospitals)
    if n < 1:
        raise ValueError(f"federation.num_hospitals: expected at least 1, got {num_hospitals!r}")
    return min(n, max(3, 2 * math.ceil(math.log2(n)) + 1))


def default_threshold(num_shares: int) -> int:
    """A strict majority of the neighbourhood: num_shares // 2 + 1.

    Each surviving neighbour reveals either a hospital's b share or its s_sk share,
    never both; with t > num_shares / 2 two disjoint groups of neighbours cannot both
    reach t, so even a server that lies about who dropped cannot rebuild both secrets
    of one hospital. It also tolerates (num_shares - 1) // 2 dropouts per neighbourhood.
    """
    return int(num_shares) // 2 + 1


def circulant_neighbours(node_ids, num_shares: int) -> dict[int, list[int]]:
    """{node: sorted neighbours, itself included}: a symmetric circulant graph over the sorted ids.

    The degree is `num_shares` capped at n; when n is odd and the degree even (no
    regular symmetric graph exists) it is raised by one.
    """
    ids = sorted(int(i) for i in node_ids)
    n = len(ids)
    if len(set(ids)) != n:
        raise ValueError("node ids: expected distinct ids")
    if int(num_shares) < min(3, n):  # fewer: no pairwise masks at all, or pairs that learn each other's update
        raise ValueError(f"strategy.num_shares: expected at least 3, got {num_shares!r}")
    degree = min(n, int(num_shares))
    if n % 2 == 1 and degree % 2 == 0:
        degree += 1
    offsets = set()
    for k in range(1, (degree - 1) // 2 + 1):
        offsets.update((k, n - k))
    if degree % 2 == 0:  # n is even here: the antipode is its own mirror image
        offsets.add(n // 2)
    return {ids[p]: sorted([ids[p]] + [ids[(p + o) % n] for o in offsets]) for p in range(n)}


def components(nodes, neighbours: dict[int, list[int]]) -> list[set[int]]:
    """Connected groups of `nodes` in the graph restricted to them (what the server could sum apart)."""
    left = set(nodes)
    groups = []
    while left:
        start = left.pop()
        group, frontier = {start}, [start]
        while frontier:
            for peer in neighbours[frontier.pop()]:
                if peer in left:
                    left.discard(peer)
                    group.add(peer)
                    frontier.append(peer)
        groups.append(group)
    return groups


@dataclass(frozen=True)
class GraphView:
    """A round's graph as the server announces it to a hospital at stage 2: the participants, the
    degree, and who was asked to share keys (those that advertised, less any left with too few
    neighbours).

    The hospital checks that the keys it was sent are exactly its neighbours in this graph among
    those sharing, and signs its survivor list together with `digest()`, so that signatures of
    hospitals shown another graph do not count. Otherwise a server could show each hospital a
    neighbourhood of its own making (all within the threshold's strict-majority rule) and collect
    one hospital's seed b from some and the mask keys of its partners from others: its update,
    alone, with no hospital colluding (tests/secagg/test_rejections.py plays it with 9 hospitals).
    """

    participants: tuple[int, ...]
    num_shares: int
    sharing: tuple[int, ...]

    def __post_init__(self):
        participants = tuple(sorted(int(p) for p in self.participants))
        sharing = tuple(sorted(int(p) for p in self.sharing))
        if len(set(participants)) != len(participants) or len(set(sharing)) != len(sharing):
            raise ValueError("graph view: repeated node ids")
        if not set(sharing) <= set(participants):
            raise ValueError("graph view: hospitals sharing keys that are not participants")
        object.__setattr__(self, "participants", participants)
        object.__setattr__(self, "sharing", sharing)
        object.__setattr__(self, "num_shares", int(self.num_shares))

    def peers_of(self, node: int) -> set[int]:
        """The neighbours `node` shares with, itself included."""
        if node not in self.sharing:
            raise ValueError(f"graph view: hospital {node} is not among those sharing keys")
        return set(circulant_neighbours(self.participants, self.num_shares)[node]).intersection(self.sharing)

    def digest(self) -> bytes:
        data = b"fedcxr/secagg/graph" + u64(self.num_shares)
        for ids in (self.participants, self.sharing):
            data += u64(len(ids)) + b"".join(u64(i) for i in ids)
        return hashlib.sha256(data).digest()
