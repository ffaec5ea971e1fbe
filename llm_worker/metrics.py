"""The worker's own Prometheus series, next to the request counters every service has."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llm_worker.engine import Finished
from llm_worker.runtime import WorkerRuntime


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry, runtime: WorkerRuntime) -> None:
        self.tokens_in = Counter(
            "rbee_tokens_in_total", "Prompt tokens processed", registry=registry
        )
        self.tokens_out = Counter("rbee_tokens_out_total", "Tokens generated", registry=registry)
        self.cancellations = Counter(
            "rbee_cancellations_total", "Generations cancelled", registry=registry
        )
        self.ttft = Histogram(
            "rbee_time_to_first_token_seconds",
            "Time to first token",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.inter_token = Histogram(
            "rbee_inter_token_latency_seconds",
            "Mean time between tokens of a request",
            registry=registry,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
        )
        slots_busy = Gauge("rbee_slots_busy", "Slots serving a request", registry=registry)
        slots_busy.set_function(lambda: runtime.slots_busy)
        slots_total = Gauge("rbee_slots_total", "Slots of this worker", registry=registry)
        slots_total.set_function(lambda: runtime.slots_total)

    def observe(self, finished: Finished) -> None:
        self.tokens_in.inc(finished.tokens_in)
        self.tokens_out.inc(finished.tokens_out)
        if finished.stop_reason == "cancelled":
            self.cancellations.inc()
        if finished.tokens_out:
            self.ttft.observe(finished.ttft_ms / 1000)
        if finished.tokens_out > 1:
            self.inter_token.observe(finished.decode_ms / 1000 / (finished.tokens_out - 1))
