"""``GET /v1/models``: the models the key's tenant may call, each with its servers
and fallbacks (see :func:`serve.wire.model_object`): the settings' own, those the
servers list (see providers.discovery), and the embedded ones. ``GET
/v1/models/{id}``: one of them, and what a new call of it would meet now."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import APIRouter, Query

from actors.errors import ClassificationError
from actors.groups import ModelEntry, model_entry
from actors.ops import OutlookOf
from actors.stats import Outlook
from actors.waitqueue import MAX_PRIORITY, MIN_PRIORITY
from providers.llamacpp import EMBEDDED_MODELS
from serve.errors import Refused, answer_for, documented
from serve.guard import TenantAsking, check_model
from serve.replica import ThisReplica
from serve.tenants import asking, may_use, served_priority
from serve.wire import model_object

router = APIRouter()


@router.get("/v1/models", responses=documented())
async def models(tenant: TenantAsking, replica: ThisReplica) -> dict[str, object]:
    """The models this key's tenant may call, each with its servers and fallbacks (see
    serve.wire.model_object)."""
    manager = replica.manager
    groups = None if manager is None else (await manager.stats()).groups
    configured = replica.settings.models
    known = await replica.catalog.models()
    embedded = [model.id for model in EMBEDDED_MODELS.values() if model.installed]
    every = [*configured, *(i for i in known if i not in configured), *embedded]
    listed = [
        model_object(i, known.get(i), groups, discovered=i not in configured)
        for i in every
        if may_use(tenant, i)
    ]
    return {"object": "list", "data": listed}


@router.get("/v1/models/{model_id:path}", responses=documented(400, 404, 422))
async def model(
    model_id: str,
    tenant: TenantAsking,
    replica: ThisReplica,
    priority: Annotated[int | None, Query(ge=MIN_PRIORITY, le=MAX_PRIORITY)] = None,
) -> dict[str, object]:
    """One model as ``GET /v1/models`` lists it, and its ``outlook``: what a new call of
    it at ``priority`` (as this key's tenant would be served it) would meet now: whether
    it runs at once, the slots free, the calls waiting by priority, its estimated wait
    (none with the queue off)."""
    check_model(tenant, model_id)
    known = await replica.catalog.models()
    entry = _entry(known, model_id)
    manager = replica.manager
    groups = None if manager is None else (await manager.stats()).groups
    discovered = model_id in known and model_id not in replica.settings.models
    shown = model_object(model_id, entry, groups, discovered=discovered)
    if manager is None:
        return shown | {"outlook": None}
    options = asking(tenant, served_priority(tenant, priority))
    outlook: Outlook
    if entry is None:  # an embedded model: its group is its server's, once it runs
        provider, _ = await replica.provider(model_id)
        outlook = await manager.ask(OutlookOf(await provider.group_id(), options))
    else:
        outlook = await manager.outlook(model_id, options, models=known)
    return shown | {"outlook": outlook.model_dump(mode="json")}


def _entry(known: Mapping[str, ModelEntry], model_id: str) -> ModelEntry | None:
    """The model's entry; None for an embedded model; the 404 or 400 of one there is not."""
    if model_id in EMBEDDED_MODELS and EMBEDDED_MODELS[model_id].installed:
        return None
    try:
        return model_entry(known, model_id)
    except ClassificationError as exc:
        raise Refused(answer_for(exc)) from exc
