"""HTTP probes of a worker: liveness (`/health`) and readiness (`/v1/ready`).

A health check fails when `/health` gives no 2xx within the timeout (a loading worker
answers 200). Readiness carries slots and state; 503 is a valid answer (loading or
draining) with the same body. Transport errors are answers too: unhealthy, unknown.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from shared.workers import Readiness

TokenSource = Callable[[], str | None]


class WorkerProbe:
    def __init__(self, client: httpx.AsyncClient, token: TokenSource, timeout_s: float) -> None:
        self.client = client
        self.token = token
        self.timeout_s = timeout_s

    async def healthy(self, url: str) -> bool:
        try:
            response = await self.client.get(url + "/health", timeout=self.timeout_s)
        except httpx.HTTPError:
            return False
        return response.is_success

    async def readiness(self, url: str) -> Readiness | None:
        token = self.token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = await self.client.get(
                url + "/v1/ready", headers=headers, timeout=self.timeout_s
            )
        except httpx.HTTPError:
            return None
        if response.status_code not in (200, 503):
            return None
        try:
            return Readiness.model_validate(response.json())
        except ValueError:
            return None
