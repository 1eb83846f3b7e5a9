"""``GET /v1/models``: the models the key's tenant may call, each with its servers
and fallbacks (see :func:`serve.wire.model_object`): the settings' own, those the
servers list (see providers.discovery), and the embedded ones."""

from __future__ import annotations

from fastapi import APIRouter

from providers.llamacpp import EMBEDDED_MODELS
from serve.errors import documented
from serve.guard import TenantAsking
from serve.replica import ThisReplica
from serve.tenants import may_use
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
