"""A mapping that forgets its least recently used keys past a bound: the one way raygate
keeps a memory of ids (retired leases, dead callers, units of work, flows served, clients
that guessed keys) from growing with the traffic it has seen.

Reading a key (``get``, ``[]``) or writing it makes it the most recently used; ``in``
does not. Plain Python, not thread-safe: its owner guards it like the rest of its state.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from typing import TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")


class Bounded(MutableMapping[K, V]):
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a bounded mapping keeps at least 1 key, not {size}")
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def __getitem__(self, key: K) -> V:
        value = self._items[key]
        self._items.move_to_end(key)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self.size:
            self._items.popitem(last=False)

    def __delitem__(self, key: K) -> None:
        del self._items[key]

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[K]:
        """Least recently used first."""
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: V | D) -> V | D: ...
    def get(self, key: K, default: object = None) -> object:
        return self[key] if key in self._items else default

    def add(self: Bounded[K, None], key: K) -> None:
        """Remember ``key`` (a bounded set of ids)."""
        self[key] = None
