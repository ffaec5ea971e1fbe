"""The registry's model index and its write-behind heartbeat times, on a real SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from queen_rbee.dispatcher import Dispatcher
from queen_rbee.registry import Registry
from shared.hives import Heartbeat
from shared.workers import Slots, WorkerInfo


def worker(wid: str, model: str, state: str = "idle") -> WorkerInfo:
    return WorkerInfo(
        id=wid, state=state, url=f"http://{wid}:8001", model=model, slots=Slots(total=1, busy=0)
    )


def beat(*workers: WorkerInfo, models: tuple[str, ...] = ()) -> Heartbeat:
    return Heartbeat(url="http://127.0.0.1:9", workers=list(workers), models=list(models))


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` with a deadline of 5 s."""
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110  # a polled condition, no event to wait on
            await asyncio.sleep(0.02)


def dispatcher(registry: Registry) -> Dispatcher:
    return Dispatcher(
        registry,
        control=None,  # type: ignore[arg-type]  # these decisions never call a hive
        queue_size=4,
        max_workers_per_model=1,
        cold_start_timeout_s=5,
        quarantine_s=5,
    )


async def test_decisions_follow_each_heartbeat_as_the_whole_truth(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "queen.db", stale_after=60, offline_after=120)
    await registry.open()
    try:
        await registry.heartbeat("h1", beat(worker("a", "m1"), worker("b", "m2")))
        await registry.heartbeat("h2", beat(worker("c", "m1")))
        d = dispatcher(registry)
        assert sorted(c.id for c in d.candidates("m1")) == ["a", "c"]
        assert [c.id for c in d.candidates("m1", hive_id="h2")] == ["c"]
        # h1 no longer runs `a`, and `b` moved from model m2 to m1
        await registry.heartbeat("h1", beat(worker("b", "m1")))
        assert sorted(c.id for c in d.candidates("m1")) == ["b", "c"]
        assert d.candidates("m2") == []
        assert registry.model_names() == ["m1"]
        registry.forget_worker("c")
        assert [c.id for c in d.candidates("m1")] == ["b"]
        await registry.remove("h1")
        assert d.candidates("m1") == [] and registry.model_names() == []
        lease = d.try_lease("m1", set())
        assert lease is None
    finally:
        await registry.close()


async def test_workers_of_a_hive_that_went_stale_are_not_offered(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "queen.db", stale_after=0.2, offline_after=0.4)
    await registry.open()
    try:
        await registry.heartbeat("h1", beat(worker("a", "m"), models=("on-disk",)))
        d = dispatcher(registry)
        assert [c.id for c in d.candidates("m")] == ["a"] and registry.any_online()
        await until(lambda: not registry.any_online())
        assert d.candidates("m") == [] and not registry.any_online("h1")
        assert registry.has_model("on-disk")  # stale hives still list their models
        await until(lambda: not registry.has_model("on-disk"))
        assert registry.model_names() == []  # offline ones do not
    finally:
        await registry.close()


async def test_heartbeat_times_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "queen.db"
    registry = Registry(path, stale_after=60, offline_after=120, flush_interval_s=0.05)
    await registry.open()
    await registry.heartbeat("h1", beat())
    first = registry.get("h1").last_heartbeat
    await asyncio.sleep(0.01)
    await registry.heartbeat("h1", beat())  # only the time changed: written behind
    second = registry.get("h1").last_heartbeat
    assert first is not None and second is not None and second > first
    await registry.close()

    again = Registry(path, stale_after=60, offline_after=120)
    await again.open()
    try:
        assert again.get("h1").last_heartbeat == second
        assert again.state_of(again.get("h1")) == "online"
    finally:
        await again.close()
