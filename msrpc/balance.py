"""
Balancers: which instance gets the next call.

Each balancer is told the current list of callable members (``update``, rare) and picks
from it per call (``pick``, hot).  Members with weight 0, disabled or unhealthy instances
never reach a balancer.  ``pick_excluding`` serves retries: anyone but the instances
already tried, when there is anyone else.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from typing import TYPE_CHECKING, Any, Callable, Collection, Optional, Sequence

from msrpc.errors import NoInstances
from msrpc.registry.instance import ServiceInstance

if TYPE_CHECKING:
    from msrpc.pool import Endpoint


class Member:
    """An instance of a service and the client-side endpoint that reaches it."""

    __slots__ = ("instance", "endpoint", "weight")

    def __init__(self, instance: ServiceInstance, endpoint: "Endpoint") -> None:
        self.instance = instance
        self.endpoint = endpoint
        self.weight = instance.weight

    def __repr__(self) -> str:
        return f"<Member {self.instance.service}@{self.endpoint.address} w={self.weight:g}>"


class Balancer:
    name = "base"

    def __init__(self) -> None:
        self.members: list[Member] = []

    def update(self, members: Sequence[Member]) -> None:
        self.members = list(members)

    def pick(self, key: Any = None) -> Member:
        raise NotImplementedError

    def pick_excluding(self, tried: Collection["Endpoint"], key: Any = None) -> Member:
        """Like ``pick`` but avoiding ``tried`` endpoints while others remain."""
        others = [m for m in self.members if m.endpoint not in tried]
        if not others or len(others) == len(self.members):
            return self.pick(key)
        return _weighted_choice(others)

    def _empty(self) -> NoInstances:
        return NoInstances("no callable instance (all have weight 0 or are disabled)")


def _weighted_choice(members: Sequence[Member]) -> Member:
    total = sum(m.weight for m in members)
    r = random.random() * total
    for member in members:
        r -= member.weight
        if r < 0:
            return member
    return members[-1]


class WeightedRandom(Balancer):
    """The default: chance proportional to weight, like Nacos's SelectOneHealthyInstance."""

    name = "weighted_random"

    def __init__(self) -> None:
        super().__init__()
        self._cumulative: list[float] = []
        self._total = 0.0
        self._uniform = True

    def update(self, members: Sequence[Member]) -> None:
        super().update(members)
        self._cumulative = list(itertools.accumulate(m.weight for m in self.members))
        self._total = self._cumulative[-1] if self._cumulative else 0.0
        self._uniform = len({m.weight for m in self.members}) <= 1

    def pick(self, key: Any = None) -> Member:
        members = self.members
        n = len(members)
        if n == 1:
            return members[0]
        if n == 0:
            raise self._empty()
        if self._uniform:
            return members[int(random.random() * n)]
        return members[bisect.bisect_right(self._cumulative, random.random() * self._total)]


class RoundRobin(Balancer):
    """Smooth weighted round robin (nginx's): with equal weights, plain rotation."""

    name = "round_robin"

    def __init__(self) -> None:
        super().__init__()
        self._current: list[float] = []
        self._total = 0.0

    def update(self, members: Sequence[Member]) -> None:
        previous = {id(m.endpoint): c for m, c in zip(self.members, self._current)}
        super().update(members)
        self._current = [previous.get(id(m.endpoint), 0.0) for m in self.members]
        self._total = sum(m.weight for m in self.members)

    def pick(self, key: Any = None) -> Member:
        members = self.members
        if not members:
            raise self._empty()
        current = self._current
        best = 0
        for i, member in enumerate(members):
            current[i] += member.weight
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return members[best]


class LeastOutstanding(Balancer):
    """Power of two choices: of two random members, the one with fewer calls per weight."""

    name = "least_outstanding"

    def pick(self, key: Any = None) -> Member:
        members = self.members
        n = len(members)
        if n == 1:
            return members[0]
        if n == 0:
            raise self._empty()
        a, b = random.sample(members, 2)
        load_a = a.endpoint.outstanding / a.weight
        load_b = b.endpoint.outstanding / b.weight
        return a if load_a <= load_b else b


class ConsistentHash(Balancer):
    """
    A hash ring (weight-proportional virtual nodes): the same call key goes to the same
    instance while the membership is stable, and only ~1/n of keys move when it changes.
    Calls without a key are spread by weight.
    """

    name = "consistent_hash"
    VNODES_PER_WEIGHT = 16

    def __init__(self) -> None:
        super().__init__()
        self._ring: list[int] = []
        self._owners: list[Member] = []

    def update(self, members: Sequence[Member]) -> None:
        super().update(members)
        points = []
        for member in self.members:
            count = max(1, int(round(member.weight * self.VNODES_PER_WEIGHT)))
            ident = member.instance.instance_id or member.endpoint.address
            for v in range(count):
                points.append((_hash(f"{ident}#{v}"), member))
        points.sort(key=lambda p: p[0])
        self._ring = [p[0] for p in points]
        self._owners = [p[1] for p in points]

    def pick(self, key: Any = None) -> Member:
        if not self.members:
            raise self._empty()
        if key is None:
            return _weighted_choice(self.members)
        index = bisect.bisect(self._ring, _hash(str(key))) % len(self._ring)
        return self._owners[index]

    def pick_excluding(self, tried: Collection["Endpoint"], key: Any = None) -> Member:
        if key is None or not self._ring:
            return super().pick_excluding(tried, key)
        start = bisect.bisect(self._ring, _hash(str(key)))
        n = len(self._ring)
        for step in range(n):
            owner = self._owners[(start + step) % n]
            if owner.endpoint not in tried:
                return owner
        return self.pick(key)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


BALANCERS: dict[str, Callable[[], Balancer]] = {
    cls.name: cls for cls in (WeightedRandom, RoundRobin, LeastOutstanding, ConsistentHash)
}


def make_balancer(name: Optional[str]) -> Balancer:
    try:
        return BALANCERS[name or WeightedRandom.name]()
    except KeyError:
        raise ValueError(f"unknown balancer {name!r}; choose one of "
                         f"{', '.join(sorted(BALANCERS))}") from None
