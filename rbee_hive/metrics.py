"""The hive's own Prometheus metrics, read from the pool and provisioner at scrape time.

A collector (rather than gauges updated in many places) keeps the supervisors free of
metric bookkeeping: the numbers are derived from the state their owners already keep.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import get_args

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rbee_hive.hive import Hive
from shared.workers import WorkerState


class HiveCollector(Collector):
    def __init__(self, hive: Hive) -> None:
        self.hive = hive

    def collect(self) -> Iterator[Metric]:
        pool, provisioner = self.hive.pool, self.hive.provisioner
        workers = GaugeMetricFamily("rbee_workers", "Workers by state", labels=["state"])
        states = [w.state for w in pool.workers.values()]
        for state in get_args(WorkerState):
            workers.add_metric([state], states.count(state))
        yield workers
        yield CounterMetricFamily(
            "rbee_worker_restarts", "Restarts of crashed workers", value=pool.restarts_total
        )
        yield CounterMetricFamily(
            "rbee_downloads", "Model downloads started", value=provisioner.downloads_started
        )
        yield CounterMetricFamily(
            "rbee_downloaded_bytes", "Bytes fetched by downloads", value=provisioner.bytes_fetched
        )
