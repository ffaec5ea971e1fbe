"""Dependency aliases for the routes: the hive's parts, taken from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from rbee_hive.hive import Hive


async def get_hive(request: Request) -> Hive:
    hive: Hive = request.app.state.hive
    return hive


HiveDep = Annotated[Hive, Depends(get_hive)]
