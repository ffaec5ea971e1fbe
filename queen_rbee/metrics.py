"""The queen's Prometheus metrics (SPEC section 9), in the app's own registry.

Histograms and counters are updated where things happen; gauges (queue depth, workers,
hives, slots, GPU memory) are computed at scrape time from the registry and the
dispatcher by a custom collector, so no second copy of that state exists.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from queen_rbee.dispatcher import Dispatcher
from queen_rbee.registry import Registry

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_SMALL = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class QueenMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, ["model"], registry=registry, buckets=buckets)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ("model",)) -> Counter:
            return Counter(name, doc, list(labels), registry=registry)

        self.ttft = histogram("rbee_time_to_first_token_seconds", "Time to first token", _LATENCY)
        self.itl = histogram("rbee_inter_token_latency_seconds", "Between stream chunks", _SMALL)
        self.queue_wait = histogram("rbee_queue_wait_seconds", "Time waiting for a slot", _LATENCY)
        self.e2e = histogram("rbee_e2e_latency_seconds", "Request end to end", _LATENCY)
        self.overhead = histogram("rbee_queen_overhead_seconds", "Queen's own time", _SMALL)
        self.tokens_in = counter("rbee_tokens_in_total", "Prompt tokens")
        self.tokens_out = counter("rbee_tokens_out_total", "Generated tokens")
        self.cancellations = counter("rbee_cancellations_total", "Cancelled requests")
        self.failovers = counter("rbee_failovers_total", "Retries on another worker")
        self.restarts = counter(
            "rbee_worker_restarts_total", "Worker restarts seen in heartbeats", ("hive_id",)
        )
        self.downloads = counter("rbee_downloads_total", "Model pulls through the queen")
        self.downloaded_bytes = counter("rbee_downloaded_bytes_total", "Bytes pulled")


class StateCollector(Collector):
    """Gauges read from the registry and the dispatcher when Prometheus scrapes."""

    def __init__(self, registry: Registry, dispatcher: Dispatcher) -> None:
        self.registry = registry
        self.dispatcher = dispatcher

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        hives = GaugeMetricFamily("rbee_hives", "Hives by state", labels=["state"])
        states = Tally(self.registry.state_of(h, now) for h in self.registry.hives())
        for state in ("online", "stale", "offline"):
            hives.add_metric([state], states.get(state, 0))
        workers = GaugeMetricFamily("rbee_workers", "Workers by state", labels=["state"])
        busy = GaugeMetricFamily("rbee_slots_busy", "Slots in use", labels=["hive_id"])
        total = GaugeMetricFamily("rbee_slots_total", "Slots", labels=["hive_id"])
        used = GaugeMetricFamily(
            "rbee_gpu_memory_used_bytes", "GPU memory used", labels=["hive_id"]
        )
        free = GaugeMetricFamily(
            "rbee_gpu_memory_free_bytes", "GPU memory free", labels=["hive_id"]
        )
        by_state: Tally[str] = Tally()
        for hive in self.registry.hives():
            by_state.update(w.state for w in hive.workers)
            busy.add_metric([hive.id], sum(w.slots.busy for w in hive.workers))
            total.add_metric([hive.id], sum(w.slots.total for w in hive.workers))
            vram_total = vram_free = 0
            for backend in hive.capabilities.backends if hive.capabilities else []:
                for dev in backend.devices:
                    vram_total += getattr(dev, "vram_total_bytes", 0)
                    vram_free += getattr(dev, "vram_free_bytes", 0)
            used.add_metric([hive.id], vram_total - vram_free)
            free.add_metric([hive.id], vram_free)
        for state in ("downloading", "loading", "idle", "busy", "draining", "failed"):
            workers.add_metric([state], by_state.get(state, 0))
        depth = GaugeMetricFamily("rbee_queue_depth", "Waiting requests", labels=["model"])
        for model, queue in self.dispatcher.queues.items():
            depth.add_metric([model], len(queue))
        yield from (hives, workers, busy, total, used, free, depth)
