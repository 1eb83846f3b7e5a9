"""Tenants: whose key a request shows, at what priority it is served, what it may call."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from actors.options import CallLabels
from actors.settings import ServeSettings, Settings, TenantSettings
from pipelines.__main__ import parse
from pipelines.job import run_options
from serve.page import COOKIE, session_token
from serve.quota import TenantQuotas
from serve.tenants import (
    OTHERS,
    Tenant,
    Tenants,
    may_use,
    served_priority,
    stats_seen_by,
    view_seen_by,
)
from tests.unit.conftest import LOCAL_OLLAMA, Harness

A_KEY, B_KEY, OLD_KEY = "sk-team-a-0123", "sk-team-b-4567", "sk-default-89"
SERVE = ServeSettings(
    api_keys=(SecretStr(OLD_KEY),),
    tenants={
        "team-a": TenantSettings(keys=(SecretStr(A_KEY),), weight=2, max_priority=3),
        "team-b": TenantSettings(keys=(SecretStr(B_KEY),), priority=7, models=("local",)),
    },
)


def test_each_key_finds_its_tenant_and_the_old_api_keys_are_the_default_tenant() -> None:
    tenants = Tenants(SERVE)

    found = {key: tenants.by_key(key) for key in (A_KEY, B_KEY, OLD_KEY, "sk-nobody", "")}

    assert {key: h.tenant.name if h else None for key, h in found.items()} == {
        A_KEY: "team-a",
        B_KEY: "team-b",
        OLD_KEY: "default",
        "sk-nobody": None,
        "": None,
    }
    assert found[A_KEY] is not None
    assert found[A_KEY].tenant.flow == "tenant:team-a"


def test_the_pages_session_finds_the_tenant_of_the_key_it_stands_for() -> None:
    tenants = Tenants(SERVE)
    token = session_token(SecretStr(B_KEY))

    held = tenants.by_session(f"theme=dark; {COOKIE}={token}")

    assert held is not None
    assert held.tenant.name == "team-b"
    assert tenants.by_session(f"{COOKIE}={B_KEY}") is None  # the key itself is no session
    assert tenants.by_session("") is None
    assert tenants.by_session('broken="; =;') is None
    without_b = ServeSettings(api_keys=(SecretStr(OLD_KEY),))
    assert Tenants(without_b).by_session(f"{COOKIE}={token}") is None  # its key was removed


def test_a_request_is_served_at_its_tenants_default_and_never_above_its_ceiling() -> None:
    tenants = Tenants(SERVE)
    a = tenants.by_key(A_KEY)
    b = tenants.by_key(B_KEY)
    assert a is not None
    assert b is not None

    assert [served_priority(a.tenant, asked) for asked in (None, 1, 3, 10)] == [3, 1, 3, 3]
    assert [served_priority(b.tenant, asked) for asked in (None, 2, 10)] == [7, 2, 10]
    assert [served_priority(None, asked) for asked in (None, 9)] == [5, 9]  # auth off


def test_a_tenant_may_call_only_its_models() -> None:
    tenants = Tenants(SERVE)
    a, b = tenants.by_key(A_KEY), tenants.by_key(B_KEY)
    assert a is not None
    assert b is not None

    assert may_use(a.tenant, "local")
    assert may_use(a.tenant, "openai/gpt-4o")
    assert may_use(b.tenant, "local")
    assert not may_use(b.tenant, "openai/gpt-4o")
    assert may_use(None, "openai/gpt-4o")  # serve.auth off: no tenants


def test_tenant_settings_refuse_a_shared_key_a_default_above_the_ceiling_and_two_defaults() -> None:
    shared = TenantSettings(keys=(SecretStr(A_KEY),))
    with pytest.raises(ValidationError, match="a key of tenant 'two' is also a key of 'one'"):
        ServeSettings(tenants={"one": shared, "two": shared})
    with pytest.raises(ValidationError, match="priority 8 is above max_priority 4"):
        TenantSettings(keys=(SecretStr(A_KEY),), priority=8, max_priority=4)
    with pytest.raises(ValidationError, match="tenant 'default': name it once"):
        ServeSettings(api_keys=(SecretStr(OLD_KEY),), tenants={"default": shared})
    with pytest.raises(ValidationError, match="tenant name 'a:b'"):
        ServeSettings(tenants={"a:b": shared})
    with pytest.raises(ValidationError, match="weight"):
        TenantSettings(keys=(SecretStr(A_KEY),), weight=0)


def test_no_key_shows_in_the_settings_repr_or_their_errors() -> None:
    assert A_KEY not in repr(SERVE)
    with pytest.raises(ValidationError) as refused:
        ServeSettings(tenants={"one": {"keys": [A_KEY]}, "two": {"keys": [A_KEY]}})
    assert A_KEY not in str(refused.value)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def quota(**bounds: int) -> TenantSettings:
    return TenantSettings(keys=(SecretStr(A_KEY),), **bounds)


def test_a_tenant_over_its_requests_per_minute_waits_for_its_oldest_to_leave_the_minute() -> None:
    clock = Clock()
    quotas = TenantQuotas(clock=clock)
    bounds = quota(rpm=3)
    for _ in range(3):
        assert quotas.admit("team-a", bounds) is None
        quotas.answered("team-a", 0)
        clock.now += 10

    over = quotas.admit("team-a", bounds)

    assert over is not None
    assert (over.bound, over.retry_after) == ("rpm of 3", 30.0)
    assert quotas.admit("team-b", bounds) is None  # nobody else's requests are touched
    clock.now += 30
    assert quotas.admit("team-a", bounds) is None


def test_a_tenant_over_its_tokens_per_minute_waits_until_enough_tokens_age_out() -> None:
    clock = Clock()
    quotas = TenantQuotas(clock=clock)
    bounds = quota(tpm=1_000)
    for tokens in (600, 300, 200):  # 1,100 in the minute once the third is answered
        assert quotas.admit("team-a", bounds) is None
        quotas.answered("team-a", tokens)
        clock.now += 5

    over = quotas.admit("team-a", bounds)

    # Below 1,000 once the first answer's 600 leave, 60 s after it (15 s ago).
    assert over is not None
    assert (over.bound, over.retry_after) == ("tpm of 1000", 45.0)
    clock.now += 45
    assert quotas.admit("team-a", bounds) is None


def test_a_tenant_at_its_pending_bound_gets_a_place_when_one_of_its_requests_ends() -> None:
    quotas = TenantQuotas(clock=Clock())
    bounds = quota(max_pending=2)
    assert quotas.admit("team-a", bounds) is None
    assert quotas.admit("team-a", bounds) is None

    over = quotas.admit("team-a", bounds)

    assert over is not None
    assert over.bound == "max_pending of 2"
    assert "team-a" in over.message("team-a")
    quotas.answered("team-a", 10)
    assert quotas.admit("team-a", bounds) is None


def test_each_replica_admits_its_share_so_the_tenant_never_exceeds_its_quota() -> None:
    clock = Clock()
    replicas = [TenantQuotas(3, clock=clock) for _ in range(3)]
    bounds = quota(rpm=10, max_pending=7)

    # Requests land on the replicas in turn: each admits 3 a minute (10 // 3).
    admitted = [quotas.admit("team-a", bounds) is None for _ in range(4) for quotas in replicas]

    assert sum(admitted) == 6  # max_pending 7 // 3 = 2 at once at each replica, nothing answered
    for quotas in replicas:
        for _ in range(2):
            quotas.answered("team-a", 0)
    assert sum(quotas.admit("team-a", bounds) is None for quotas in replicas for _ in range(2)) == 3
    over = replicas[0].admit("team-a", bounds)
    assert over is not None
    assert over.bound == "rpm of 10 (its share at each of 3 replicas)"


def test_a_quota_below_the_replicas_cannot_be_split_among_them() -> None:
    tenant = {"keys": [A_KEY], "rpm": 2}
    with pytest.raises(ValidationError, match=r"serve.tenants.team-a.rpm: 2 is less than "):
        ServeSettings.model_validate({"tenants": {"team-a": tenant}, "replicas": 3})
    ServeSettings.model_validate({"tenants": {"team-a": tenant}, "replicas": 2})


def test_a_run_of_the_main_job_asks_as_the_tenant_it_names() -> None:
    settings = Settings(serve=SERVE)

    as_team = run_options(4, "team-a", settings)
    as_unknown = run_options(4, "newcomer", settings)
    as_driver = run_options(4, None, settings)

    assert (as_team.priority, as_team.flow, as_team.weight) == (4, "tenant:team-a", 2.0)
    assert (as_unknown.flow, as_unknown.weight) == ("tenant:newcomer", 1.0)
    assert as_driver.flow is None  # stamped with the driver's Ray job where the call starts
    assert parse(["run", "in.jsonl", "--out", "o.jsonl", "--tenant", "team-a"]).tenant == "team-a"


def tenant(key: str) -> Tenant:
    holder = Tenants(SERVE).by_key(key)
    assert holder is not None
    return holder.tenant


def test_a_tenant_sees_its_own_flow_and_calls_by_name_and_everyone_elses_summed() -> None:
    harness = Harness(group_limits={LOCAL_OLLAMA.id: 1})
    harness.ask(LOCAL_OLLAMA, "b-runs", flow="tenant:team-b")
    harness.ask(LOCAL_OLLAMA, "a-waits", flow="tenant:team-a", labels=CallLabels("map", "svc-a"))
    harness.ask(LOCAL_OLLAMA, "b-waits", flow="tenant:team-b", labels=CallLabels("map", "svc-b"))
    harness.ask(LOCAL_OLLAMA, "job-waits", flow="job:01000000")
    engine = harness.engine

    flows = stats_seen_by(tenant(A_KEY), engine.stats()).groups[LOCAL_OLLAMA.id].flows
    view = view_seen_by(tenant(A_KEY), engine.view(50))

    assert {name: (f.waiting, f.running) for name, f in flows.items()} == {
        "tenant:team-a": (1, 0),
        OTHERS: (2, 1),
    }
    shown = view.groups[LOCAL_OLLAMA.id].waiting
    assert [(c.position, c.flow, c.service_id) for c in shown] == [
        (1, "tenant:team-a", "svc-a"),
        (2, OTHERS, ""),
        (3, OTHERS, ""),
    ]
    assert {c.request_id for c in shown[1:]}.isdisjoint({"b-waits", "job-waits"})
    assert view.stats.groups[LOCAL_OLLAMA.id].flows == flows
    # The operator's keys, and no keys at all, see every flow and call.
    assert view_seen_by(tenant(OLD_KEY), engine.view(50)) == engine.view(50)
    assert view_seen_by(None, engine.view(50)) == engine.view(50)
    assert set(stats_seen_by(tenant(OLD_KEY), engine.stats()).groups[LOCAL_OLLAMA.id].flows) == {
        "tenant:team-a",
        "tenant:team-b",
        "job:01000000",
    }
