"""What route handlers get: the queen's resources and the caller, as `Annotated` aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from queen_rbee.control import Control
from queen_rbee.dispatcher import Dispatcher
from queen_rbee.hostctl import HiveHosts
from queen_rbee.inference import Inference
from queen_rbee.jobs import Jobs
from queen_rbee.metrics import QueenMetrics
from queen_rbee.registry import Registry
from queen_rbee.relay import Upstream
from queen_rbee.settings import QueenSettings
from shared.auth import Principal, Role


@dataclass
class Queen:
    """Every long-lived resource, opened by the lifespan and closed after it."""

    settings: QueenSettings
    registry: Registry
    control: Control
    upstream: Upstream
    dispatcher: Dispatcher
    jobs: Jobs
    metrics: QueenMetrics
    inference: Inference
    hosts: HiveHosts


async def get_queen(request: Request) -> Queen:
    queen: Queen = request.app.state.queen
    return queen


async def is_operator(request: Request) -> bool:
    """Dev mode has no principal: everything is allowed on loopback."""
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    return principal is None or principal.role is Role.OPERATOR


QueenDep = Annotated[Queen, Depends(get_queen)]
OperatorDep = Annotated[bool, Depends(is_operator)]
