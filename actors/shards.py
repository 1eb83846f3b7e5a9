"""Which manager decides for a group, when ``queue.shards`` splits the groups between several.

One manager actor takes a few tens of thousands of gated pairs a second here,
whatever the cluster's size. With ``queue.shards: N`` the groups are split
between N manager actors (``concurrency-manager``, ``concurrency-manager-1``,
...), each with its own journal, recovery and callers' lifelines, so that N
event loops on N cores decide at once. Each group is decided by exactly one
of them, so every promise of one manager (the cap exact, the order, the fair
share within a group) holds as before.

Every process finds a group's shard alone, from the settings, without asking:
a hash of the group's id, the same everywhere (Python's own ``hash`` of a
string differs between processes). The groups of a pool wait once, on the set,
so they must be decided in one place: every group of a pool (and of pools that
share a server with it) hashes as the pool's least group id.

A global cap (``queue.concurrency``) couples every group: the first shard
keeps it and lends its slots to the others (see :mod:`actors.capacity`).
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from typing import TypeVar

from actors.capacity import CAPACITY
from actors.errors import PoolAcrossShards
from actors.groups import ModelEntry, Pool, model_entry
from actors.names import MANAGER_NAME
from actors.queueview import QueueView
from actors.stats import QueueStats

V = TypeVar("V")

# How many merged views' versions a client remembers (a page sends back the last one).
VIEWS_KEPT = 64


def shard_name(index: int, name: str = MANAGER_NAME) -> str:
    """The actor name of shard ``index`` of the manager called ``name``: the first keeps
    the name, so one shard is the manager as it always was."""
    return name if index == 0 else f"{name}-{index}"


class Routes:
    """The shard of each group, pool and model, for ``count`` shards and the settings'
    ``models`` (whose pools say which groups go together). Picklable: it travels with
    the client."""

    def __init__(self, count: int = 1, models: Mapping[str, ModelEntry] | None = None) -> None:
        self.count = count
        self.models = dict(models or {})

    def __reduce__(self) -> tuple[type[Routes], tuple[int, dict[str, ModelEntry]]]:
        return (Routes, (self.count, self.models))

    def of_group(self, group: str) -> int:
        if self.count == 1:
            return 0
        key = self._keys.get(group, group)
        return zlib.crc32(key.encode()) % self.count

    def of_pool(self, pool: Pool) -> int:
        """The shard of every group of ``pool``; a pool whose groups the settings do not
        pool together may fall on several, and is refused."""
        if self.count == 1:
            return 0
        shards = {self.of_group(group) for group in pool}
        if len(shards) > 1:
            raise PoolAcrossShards(pool, self.count)
        return shards.pop()

    def of_model(self, model_id: str) -> int:
        """The shard of the groups of ``model_id``'s servers (one shard: without resolving
        the model, whose errors are then the manager's to say)."""
        if self.count == 1:
            return 0
        return self.of_pool(tuple(spec.id for spec in model_entry(self.models, model_id).specs()))

    def own_models(self, shard: int) -> dict[str, ModelEntry]:
        """The settings' models whose servers shard ``shard`` decides for."""
        return {
            model_id: entry
            for model_id, entry in self.models.items()
            if self.of_pool(tuple(spec.id for spec in entry.specs())) == shard
        }

    @cached_property
    def _keys(self) -> dict[str, str]:
        """The key each pooled group hashes as: the least group id of the servers pooled
        with it, directly or through another pool that shares a server."""
        return _least_of_each_set(
            [spec.id for spec in entry.specs()] for entry in self.models.values()
        )


def _least_of_each_set(linked: Iterable[list[str]]) -> dict[str, str]:
    """Union-find over groups named together: each group's set's least member."""
    parent: dict[str, str] = {}

    def root(group: str) -> str:
        while parent.setdefault(group, group) != group:
            parent[group] = parent[parent[group]]
            group = parent[group]
        return group

    for groups in linked:
        for other in groups[1:]:
            first, second = root(groups[0]), root(other)
            if first != second:
                parent[max(first, second)] = min(first, second)
    return {group: root(group) for group in parent}


def merged_stats(each: Sequence[QueueStats]) -> QueueStats:
    """The shards' stats as one manager's: their groups side by side, their counts added.
    The epoch is the latest shard's, so that it moves when any shard restarts. The
    global cap's slots that the first shard lent the others (its group
    ``shard-capacity``) are listed, not counted again in the totals."""
    groups = [stats.groups for stats in each]
    active = _union(stats.active_by_group for stats in each)
    pending = _union(stats.pending_by_group for stats in each)
    return QueueStats(
        epoch=max(stats.epoch for stats in each),
        global_limit=each[0].global_limit,
        active_by_group=active,
        pending_by_group=pending,
        total_active=sum(stats.total_active for stats in each) - active.get(CAPACITY.id, 0),
        total_pending=sum(stats.total_pending for stats in each) - pending.get(CAPACITY.id, 0),
        groups=_union(groups),
        stale_epoch_releases=sum(stats.stale_epoch_releases for stats in each),
        unknown_releases=sum(stats.unknown_releases for stats in each),
        late_acquires=sum(stats.late_acquires for stats in each),
        renewed=sum(stats.renewed for stats in each),
        overtaken=sum(stats.overtaken for stats in each),
        next_in_line_answers=sum(stats.next_in_line_answers for stats in each),
        models=_union(stats.models for stats in each),
    )


def merged_view(each: Sequence[QueueView], version: int) -> QueueView:
    """The shards' views as one, under the merged ``version`` (see :class:`ViewVersions`)."""
    return QueueView(
        version=version,
        step_seconds=each[0].step_seconds,
        stats=merged_stats([view.stats for view in each]),
        groups=_union(view.groups for view in each),
    )


class ViewVersions:
    """The version of each merged view, and the shards' versions behind it: a page sends
    back the version it has, and the client waits for a shard's view to differ from the
    one it merged then. A version it does not know (another replica's, or forgotten)
    gets every shard's view at once."""

    def __init__(self) -> None:
        self._seen: OrderedDict[int, tuple[int, ...]] = OrderedDict()

    def of(self, version: int, count: int) -> tuple[int, ...]:
        """The shards' versions behind the merged ``version``; -1 each if not known."""
        return self._seen.get(version, (-1,) * count)

    def note(self, views: Sequence[QueueView]) -> int:
        """The merged version of the shards' ``views``: the same for the same shards'
        epochs and versions, in any process (a hash of integers is not salted)."""
        versions = tuple(view.version for view in views)
        merged = hash((tuple(view.stats.epoch for view in views), versions)) & (2**62 - 1)
        self._seen[merged] = versions
        self._seen.move_to_end(merged)
        while len(self._seen) > VIEWS_KEPT:
            self._seen.popitem(last=False)
        return merged


def _union(dicts: Iterable[Mapping[str, V]]) -> dict[str, V]:
    """Dicts of disjoint keys (each shard's own groups) as one."""
    joined: dict[str, V] = {}
    for each in dicts:
        joined.update(each)
    return joined
