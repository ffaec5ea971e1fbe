"""The scheduler's choices, from snapshots alone."""

from __future__ import annotations

from queen_rbee.scheduler import (
    Candidate,
    HiveOption,
    capacity_action,
    pick_hive,
    pick_worker,
    queue_has_room,
    retry_after_s,
)

GIB = 1024**3


def worker(wid: str, state: str = "idle", slots: int = 1, hive: str = "h1") -> Candidate:
    return Candidate(wid, hive, f"http://127.0.0.1/{wid}", state, slots)


def test_picks_a_ready_worker_with_the_fewest_requests_in_flight() -> None:
    workers = [worker("a", slots=4), worker("b", slots=4), worker("c", slots=4)]
    chosen = pick_worker(workers, {"a": 3, "b": 1, "c": 2}, {})
    assert chosen is not None and chosen.id == "b"


def test_full_workers_loading_workers_and_excluded_ones_are_never_picked() -> None:
    workers = [
        worker("full"),
        worker("loading", "loading"),
        worker("bad"),
        worker("gone", "failed"),
    ]
    assert pick_worker(workers, {"full": 1}, {}, {"bad"}) is None


def test_equal_workers_share_the_load_by_least_recent_use() -> None:
    workers = [worker("a"), worker("b")]
    chosen = pick_worker(workers, {}, {"a": 10.0, "b": 5.0})
    assert chosen is not None and chosen.id == "b"


def test_a_worker_without_url_is_not_ready() -> None:
    assert pick_worker([Candidate("x", "h1", None, "idle", 1)], {}, {}) is None


def test_no_worker_at_all_means_spawn() -> None:
    assert capacity_action([], set(), spawning=False, max_workers=1) == "spawn"


def test_a_loading_worker_or_a_running_spawn_means_wait() -> None:
    assert capacity_action([worker("a", "loading")], set(), False, 1) == "wait"
    assert capacity_action([], set(), spawning=True, max_workers=1) == "wait"


def test_all_busy_below_the_worker_limit_spawns_another_and_at_the_limit_waits() -> None:
    busy = [worker("a", "busy")]
    assert capacity_action(busy, set(), False, max_workers=2) == "spawn"
    assert capacity_action(busy, set(), False, max_workers=1) == "none"


def test_only_excluded_workers_left_means_spawn() -> None:
    assert capacity_action([worker("a")], {"a"}, False, 1) == "spawn"


def test_cold_start_prefers_the_hive_that_has_the_model_on_disk() -> None:
    options = [HiveOption("big", False, 64 * GIB, 0), HiveOption("disk", True, 2 * GIB, 0)]
    chosen = pick_hive(options, 1 * GIB)
    assert chosen is not None and chosen.id == "disk"


def test_cold_start_otherwise_takes_the_most_free_memory_that_fits() -> None:
    options = [
        HiveOption("small", False, 1 * GIB, 0),
        HiveOption("gpu", False, 2 * GIB, 24 * GIB),
        HiveOption("ram", False, 16 * GIB, 0),
    ]
    chosen = pick_hive(options, 10 * GIB)
    assert chosen is not None and chosen.id == "gpu"


def test_no_hive_fits_a_model_that_needs_more_than_ram_times_1_2() -> None:
    options = [HiveOption("small", False, 11 * GIB, 0)]
    assert pick_hive(options, 10 * GIB) is None
    assert pick_hive([], None) is None


def test_the_queue_is_bounded_and_retry_after_grows_with_it() -> None:
    assert queue_has_room(63, 64) and not queue_has_room(64, 64)
    assert not queue_has_room(0, 0)
    assert 1 <= retry_after_s(0, 1) < retry_after_s(20, 1) <= 30
