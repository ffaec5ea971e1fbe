"""Placement decisions as pure functions: no I/O, no clock, no shared state.

The dispatcher gathers a snapshot (candidate workers, the queen's in-flight counts, hive
resources) and asks these functions what to do; they answer from the snapshot alone, which
is what makes them easy to test. SPEC section 6 rules:

* a ready worker with a free slot, fewest requests in flight first (then the one used
  least recently, so equal workers share the load);
* otherwise wait for a loading worker;
* otherwise cold start on the hive that has the model on disk, else the hive with the most
  free memory that fits it (RAM x 1.2 of the file size on CPU, VRAM on CUDA).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

READY_STATES = frozenset({"idle", "busy"})
LOADING_STATES = frozenset({"downloading", "loading"})
RAM_FACTOR = 1.2


@dataclass(frozen=True, slots=True)
class Candidate:
    """A worker as the scheduler sees it."""

    id: str
    hive_id: str
    url: str | None
    state: str
    slots_total: int

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES and bool(self.url)

    @property
    def loading(self) -> bool:
        return self.state in LOADING_STATES


@dataclass(frozen=True, slots=True)
class HiveOption:
    """An online hive that might host a new worker."""

    id: str
    has_model: bool
    ram_free_bytes: int
    vram_free_bytes: int  # largest free VRAM of one CUDA device; 0 without CUDA


def pick_worker(
    candidates: Sequence[Candidate],
    in_flight: Mapping[str, int],
    last_used: Mapping[str, float],
    excluded: frozenset[str] | set[str] = frozenset(),
) -> Candidate | None:
    """The ready worker with a free slot and the fewest requests in flight."""
    free = [
        c
        for c in candidates
        if c.ready and c.id not in excluded and in_flight.get(c.id, 0) < max(1, c.slots_total)
    ]
    if not free:
        return None
    return min(free, key=lambda c: (in_flight.get(c.id, 0), last_used.get(c.id, 0.0), c.id))


Action = Literal["wait", "spawn", "none"]


def capacity_action(
    candidates: Sequence[Candidate],
    excluded: frozenset[str] | set[str],
    spawning: bool,
    max_workers: int,
) -> Action:
    """What to do when no worker has a free slot.

    `spawn` when no usable worker exists at all, or when all are busy and the model has
    fewer workers than `max_workers`; `wait` while a worker loads or a spawn is under way;
    `none` only to say that waiting for a busy worker is the answer.
    """
    usable = [c for c in candidates if c.id not in excluded and (c.ready or c.loading)]
    if spawning:
        return "wait"
    if not usable:
        return "spawn"
    if any(c.loading for c in usable):
        return "wait"
    return "spawn" if len(usable) < max_workers else "none"


def pick_hive(options: Sequence[HiveOption], size_bytes: int | None) -> HiveOption | None:
    """Where to cold start: the model on disk first, then the most free memory that fits."""
    if not options:
        return None
    with_model = [o for o in options if o.has_model]
    if with_model:
        return max(with_model, key=_memory)
    need = int(size_bytes * RAM_FACTOR) if size_bytes else 0
    fitting = [o for o in options if _memory(o) >= need]
    return max(fitting, key=lambda o: (_memory(o), o.id)) if fitting else None


def _memory(option: HiveOption) -> int:
    return max(option.ram_free_bytes, option.vram_free_bytes)


def queue_has_room(waiting: int, limit: int) -> bool:
    return waiting < limit


def retry_after_s(waiting: int, workers: int) -> int:
    """A rough hint for `Retry-After`: longer queues, longer waits."""
    return max(1, min(30, 1 + waiting // max(1, workers)))
