"""Jobs in flight at the queen, so `DELETE /v2/tasks/{id}` can reach them.

Written only by the request that owns the job (add on start, drop in its `finally`);
a cancel marks the job and either stops its wait (no worker yet) or asks the worker to
cancel (the worker then ends the stream itself, `stop_reason: cancelled`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class Job:
    id: str
    task: asyncio.Task[object] | None = None
    worker_url: str | None = None
    cancelled: bool = False


class Jobs:
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}

    def add(self, job_id: str) -> Job:
        job = self._jobs[job_id] = Job(job_id)
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def drop(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def __len__(self) -> int:
        return len(self._jobs)
