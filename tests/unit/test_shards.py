"""Shards: which manager decides for each group, pool and model, and the merged view."""

from __future__ import annotations

import pickle

import pytest

from actors.capacity import CAPACITY
from actors.engine import SlotEngine
from actors.errors import PoolAcrossShards
from actors.groups import ModelEntry, ServerEntry, classify
from actors.shards import Routes, ViewVersions, merged_stats, merged_view, shard_name
from tests.unit.conftest import EPOCH

SERVERS = [classify("ollama", f"http://localhost:{11000 + n}") for n in range(40)]


def pool(*ports: int) -> ModelEntry:
    return ModelEntry(
        servers=tuple(
            ServerEntry(provider="ollama", base_url=f"http://localhost:{port}") for port in ports
        )
    )


def group(port: int) -> str:
    return classify("ollama", f"http://localhost:{port}").id


def test_one_shard_decides_for_every_group() -> None:
    routes = Routes()

    assert {routes.of_group(spec.id) for spec in SERVERS} == {0}
    assert shard_name(0) == "concurrency-manager"


def test_groups_spread_over_the_shards_by_a_hash_every_process_computes_alike() -> None:
    routes = Routes(4)

    shards = [routes.of_group(spec.id) for spec in SERVERS]

    assert set(shards) == {0, 1, 2, 3}
    # Pickled into another process, it routes alike (no salted hash).
    assert [pickle.loads(pickle.dumps(routes)).of_group(spec.id) for spec in SERVERS] == shards
    assert [shard_name(n) for n in range(3)] == [
        "concurrency-manager",
        "concurrency-manager-1",
        "concurrency-manager-2",
    ]


def test_a_pools_servers_and_the_pools_sharing_one_are_decided_together() -> None:
    # Pools a and b share the server 11002, so all of 11000-11004 wait on one manager.
    models = {"a": pool(11000, 11001, 11002), "b": pool(11002, 11003, 11004)}
    routes = Routes(8, models)

    shards = {routes.of_group(group(port)) for port in range(11000, 11005)}

    assert len(shards) == 1
    assert routes.of_model("a") == routes.of_model("b") == shards.pop()


def test_a_pool_the_settings_do_not_name_may_not_span_shards() -> None:
    routes = Routes(4)
    apart = next(
        (SERVERS[0].id, spec.id)
        for spec in SERVERS
        if routes.of_group(spec.id) != routes.of_group(SERVERS[0].id)
    )

    with pytest.raises(PoolAcrossShards) as caught:
        routes.of_pool(apart)

    assert str(caught.value) == (
        f"the pool {apart[0]!r}, {apart[1]!r} spans groups that 4 manager shards decide "
        "for apart (queue.shards), so no one of them can make its calls wait once: name "
        "the pool's servers as one model's `servers` in the settings, which puts them on "
        "one shard"
    )


def test_each_model_is_one_shards_and_only_its() -> None:
    models = {f"m{n}": pool(11000 + n) for n in range(12)}
    routes = Routes(3, models)

    owned = [routes.own_models(shard) for shard in range(3)]

    assert sorted(model for each in owned for model in each) == sorted(models)
    for shard, each in enumerate(owned):
        assert all(routes.of_model(model) == shard for model in each)


def test_merged_stats_put_the_shards_groups_side_by_side_and_add_their_counts() -> None:
    first = SlotEngine(epoch=EPOCH)
    second = SlotEngine(epoch=EPOCH + 1)
    first.register(SERVERS[0])
    second.register(SERVERS[1])
    first.acquire(SERVERS[0].id, "held")
    first.acquire(SERVERS[0].id, "waits")
    second.acquire(SERVERS[1].id, "also-held")

    stats = merged_stats([first.stats(), second.stats()])

    assert stats.epoch == EPOCH + 1
    assert stats.active_by_group == {SERVERS[0].id: 1, SERVERS[1].id: 1}
    assert stats.pending_by_group == {SERVERS[0].id: 1, SERVERS[1].id: 0}
    assert (stats.total_active, stats.total_pending) == (2, 1)
    assert set(stats.groups) == {SERVERS[0].id, SERVERS[1].id}


def test_a_merged_views_version_names_the_shards_versions_behind_it() -> None:
    first, second = SlotEngine(epoch=EPOCH), SlotEngine(epoch=EPOCH)
    first.register(SERVERS[0])
    second.register(SERVERS[1])
    versions = ViewVersions()
    views = [first.view(5), second.view(5)]
    before = merged_view(views, versions.note(views))
    behind = (first.version, second.version)

    second.acquire(SERVERS[1].id, "moves-the-second")
    after = versions.note([first.view(5), second.view(5)])

    assert after != before.version
    assert versions.of(before.version, 2) == behind
    assert versions.of(after, 2) == (first.version, second.version) != behind
    # A version this client never made (another replica's): every shard's view at once.
    assert versions.of(12345, 2) == (-1, -1)
    assert set(before.groups) == {SERVERS[0].id, SERVERS[1].id}


def test_the_caps_slots_lent_between_shards_are_listed_not_counted_twice() -> None:
    first = SlotEngine(epoch=EPOCH, global_limit=4)
    second = SlotEngine(epoch=EPOCH, global_limit=4)
    first.register(CAPACITY)
    second.register(SERVERS[1])
    first.acquire(CAPACITY.id, "lent-to-the-second")
    second.acquire(SERVERS[1].id, "held-there")

    stats = merged_stats([first.stats(), second.stats()])

    assert stats.total_active == 1
    assert stats.active_by_group == {CAPACITY.id: 1, SERVERS[1].id: 1}
