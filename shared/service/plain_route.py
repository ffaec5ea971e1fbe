"""A plain Starlette route for hot paths where FastAPI's dependency solving costs too much.

It names itself in the scope as FastAPI's routes do, so request metrics label it with its
path template instead of `unmatched`.
"""

from __future__ import annotations

from starlette.routing import Match, Route
from starlette.types import Scope


class PlainRoute(Route):
    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match != Match.NONE:
            child_scope["route"] = self
        return match, child_scope
