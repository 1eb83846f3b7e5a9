"""Who asks: the tenant a request's key belongs to, and what it may ask for.

Each tenant of ``serve.tenants`` (and ``serve.api_keys``' holders, the tenant
``default``) is a flow of the manager's fair share (see
:mod:`actors.waitqueue`): at one priority, each waiting tenant gets its
weight's share of a group, however many requests another one sends. A
tenant's requests get its default priority when they name none and never
more than its ceiling, and may call only its models; another model answers
404 as an unknown one does, without naming the others.

Of the queue, a tenant sees its own flow and waiting calls by name, and the
rest summed as one flow, ``others``, whose waiting calls keep their place,
priority, age and ETA but not their request ids or labels, and of the models
(pools, fallbacks) those it may call; a tenant with
``sees_all`` (``serve.api_keys``' holders, the operator's) sees everything,
as does every caller with ``serve.auth`` off.

A key is compared with every key configured, each in constant time, and the
lookup does not stop at the first match: how long it takes says nothing
about which key, or whose, came close.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import SecretStr

from actors.options import CallOptions, tenant_flow
from actors.queueview import QueueView, WaitingCall
from actors.settings import ServeSettings, TenantSettings
from actors.stats import FlowStats, QueueStats
from actors.waitqueue import DEFAULT_PRIORITY
from serve.page import session_in, session_token

# The flow that everyone else's calls are summed into for a tenant without sees_all.
OTHERS = "others"
# Keys the digests that stand for others' request ids: stable in this process, and
# no use for guessing an id.
_ID_MASK = secrets.token_bytes(16)


@dataclass(frozen=True)
class Tenant:
    name: str
    settings: TenantSettings

    @property
    def flow(self) -> str:
        """The tenant's flow id in the manager's queue."""
        return tenant_flow(self.name)

    def priority(self, asked: int | None) -> int:
        """The priority a request that asked for ``asked`` (None: named none) is served at."""
        default = self.settings.priority or DEFAULT_PRIORITY
        return min(default if asked is None else asked, self.settings.max_priority)


@dataclass(frozen=True)
class Holder:
    """A key and the tenant it belongs to."""

    key: SecretStr
    tenant: Tenant


class Tenants:
    def __init__(self, serve: ServeSettings) -> None:
        self._holders = [
            Holder(key, Tenant(name, tenant))
            for name, tenant in serve.tenant_list()
            for key in tenant.keys
        ]

    def by_key(self, given: str) -> Holder | None:
        """Who holds the bearer key ``given``, if anyone."""
        return self._find(given.encode(), lambda key: key.get_secret_value().encode())

    def by_session(self, cookie_header: str) -> Holder | None:
        """Whose session the ``Cookie`` header carries (see :mod:`serve.page`), if anyone's."""
        token = session_in(cookie_header)
        if token is None:
            return None
        return self._find(token.encode(), lambda key: session_token(key).encode())

    def _find(self, given: bytes, form: Callable[[SecretStr], bytes]) -> Holder | None:
        found = None
        for holder in self._holders:
            if hmac.compare_digest(given, form(holder.key)):
                found = holder
        return found


def may_use(tenant: Tenant | None, model: str) -> bool:
    """Whether ``tenant`` may call ``model`` (without tenants, ``serve.auth`` off: any)."""
    return tenant is None or tenant.settings.models is None or model in tenant.settings.models


def sees(tenant: Tenant | None, flow: str) -> bool:
    """Whether ``tenant`` is shown the calls of ``flow`` by name (without tenants: all)."""
    return sees_all(tenant) or (tenant is not None and flow == tenant.flow)


def sees_all(tenant: Tenant | None) -> bool:
    """Whether ``tenant`` is shown every flow by name: one with ``sees_all``, or anyone
    with ``serve.auth`` off (no tenant)."""
    return tenant is None or tenant.settings.sees_all


def served_priority(tenant: Tenant | None, asked: int | None) -> int:
    """The priority a request that asked for ``asked`` (None: named none) is served at:
    its tenant's say, or as asked where there are no tenants (``serve.auth`` off)."""
    if tenant is not None:
        return tenant.priority(asked)
    return DEFAULT_PRIORITY if asked is None else asked


def asking(tenant: Tenant | None, priority: int) -> CallOptions:
    """A call of ``tenant`` at ``priority``: its flow and weight (without a tenant, the
    flow is stamped with the caller's Ray job where the call starts)."""
    if tenant is None:
        return CallOptions(priority=priority)
    return CallOptions(priority=priority, flow=tenant.flow, weight=tenant.settings.weight)


def owner_of(tenant: Tenant | None) -> str:
    """Whose pipeline runs ``tenant`` sees: its own, or everyone's without tenants."""
    return tenant.name if tenant is not None else ""


def jobs_owner(tenant: Tenant | None) -> str | None:
    """Whose pipeline jobs ``tenant`` sees and may cancel or retry: its own, or every
    tenant's (None) for a tenant that sees all, or anyone with ``serve.auth`` off."""
    return None if sees_all(tenant) else owner_of(tenant)


def no_such_model(model: str) -> str:
    """What a tenant that may not call ``model`` is told: what OpenAI says of a model that
    does not exist or that the key has no access to."""
    return f"The model `{model}` does not exist or you do not have access to it."


def stats_seen_by(tenant: Tenant | None, stats: QueueStats) -> QueueStats:
    """``stats`` as ``tenant`` may see them (see the module)."""
    if sees_all(tenant):
        return stats
    groups = {
        gid: group.model_copy(update={"flows": _flows_seen_by(tenant, group.flows)})
        for gid, group in stats.groups.items()
    }
    models = {m: model for m, model in stats.models.items() if may_use(tenant, m)}
    return stats.model_copy(update={"groups": groups, "models": models})


def view_seen_by(tenant: Tenant | None, view: QueueView) -> QueueView:
    """``view`` as ``tenant`` may see it (see the module)."""
    if sees_all(tenant):
        return view
    groups = {
        gid: activity.model_copy(
            update={"waiting": [_seen_call(tenant, call) for call in activity.waiting]}
        )
        for gid, activity in view.groups.items()
    }
    return view.model_copy(update={"stats": stats_seen_by(tenant, view.stats), "groups": groups})


def _flows_seen_by(tenant: Tenant | None, flows: Mapping[str, FlowStats]) -> dict[str, FlowStats]:
    seen = {flow: stats for flow, stats in flows.items() if sees(tenant, flow)}
    others = [stats for flow, stats in flows.items() if not sees(tenant, flow)]
    if others:
        seen[OTHERS] = FlowStats(
            **{name: sum(getattr(o, name) for o in others) for name in FlowStats.model_fields}
        )
    return seen


def _seen_call(tenant: Tenant | None, call: WaitingCall) -> WaitingCall:
    if sees(tenant, call.flow):
        return call
    digest = hashlib.blake2b(call.request_id.encode(), key=_ID_MASK, digest_size=8)
    unnamed = dict.fromkeys(("run", "service_id", "stage"), "")
    return call.model_copy(update={"request_id": digest.hexdigest(), "flow": OTHERS, **unnamed})
