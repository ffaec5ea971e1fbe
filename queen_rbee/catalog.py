"""The model catalog over all hives: the queen keeps none of its own, it asks the hives.

A listing asks every online hive in parallel and tags each entry with its `hive_id`; a
hive that does not answer is left out rather than failing the listing. A delete goes to
every hive whose catalog holds the catalog id (or only to the hive named), in parallel;
a hive's `MODEL_IN_USE` (409) or failure is passed on, and when no hive held the model
the answer is 404 `MODEL_NOT_FOUND`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from queen_rbee.control import Control
from queen_rbee.registry import Hive, Registry
from shared.catalog import CatalogEntry
from shared.errors import ModelNotFound, RbeeError


async def _entries(control: Control, hive: Hive) -> list[CatalogEntry]:
    try:
        return await control.models(hive.url or "")
    except RbeeError:  # an unreachable hive must not break the listing
        return []


async def listing(registry: Registry, control: Control) -> list[dict[str, Any]]:
    hives = [h for h in registry.online() if h.url]
    results = await asyncio.gather(*(_entries(control, h) for h in hives))
    return [
        {**entry.model_dump(mode="json"), "hive_id": hive.id}
        for hive, entries in zip(hives, results, strict=True)
        for entry in entries
    ]


async def _holders(
    registry: Registry, control: Control, model_id: str, hive_id: str | None
) -> list[Hive]:
    if hive_id is not None:
        hive = registry.get(hive_id)
        entries = await control.models(hive.url or "") if hive.url else []
        return [hive] if any(e.id == model_id for e in entries) else []
    hives = [h for h in registry.online() if h.url]
    results = await asyncio.gather(*(_entries(control, h) for h in hives))
    held = [any(e.id == model_id for e in entries) for entries in results]
    return [h for h, has in zip(hives, held, strict=True) if has]


async def _delete_on(control: Control, hive: Hive, model_id: str) -> bool:
    """True when the hive deleted it, False when it had nothing to delete."""
    try:
        await control.delete_model(hive.url or "", model_id)
    except ModelNotFound:  # listed but not on disk (a bundled model not yet assembled)
        return False
    except RbeeError as exc:
        exc.details = {**exc.details, "hive_id": hive.id}
        raise
    return True


async def delete(
    registry: Registry, control: Control, model_id: str, hive_id: str | None = None
) -> list[str]:
    """Delete a model from the disks of the hives that hold it; their ids."""
    holders = await _holders(registry, control, model_id, hive_id)
    results = await asyncio.gather(
        *(_delete_on(control, h, model_id) for h in holders), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    deleted = [h.id for h, done in zip(holders, results, strict=True) if done is True]
    if not deleted:
        where = f"hive '{hive_id}'" if hive_id else "any online hive"
        raise ModelNotFound(f"No model with catalog id '{model_id}' is on the disk of {where}.")
    return deleted
