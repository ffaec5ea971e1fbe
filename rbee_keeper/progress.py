"""The progress bar of `rbee models pull`: bytes, rate and ETA of each hive's download.

The rate is the one the hive measured (`bytes_per_s` of its `progress` events), so it is
right from the first event, also for a download the CLI joined half-way; the ETA follows
from it. Rich draws the bar live on a terminal and prints it once at the end otherwise.
"""

from __future__ import annotations

from typing import Any

from rich import filesize
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
)
from rich.text import Text


class HiveRateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        rate = task.fields.get("bytes_per_s")
        if not rate:
            return Text("?", style="progress.data.speed")
        return Text(f"{filesize.decimal(int(rate))}/s", style="progress.data.speed")


class HiveEtaColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        rate = task.fields.get("bytes_per_s")
        if task.finished or task.total is None or not rate:
            return Text("", style="progress.remaining")
        minutes, seconds = divmod(int((task.total - task.completed) / rate), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"ETA {hours:d}:{minutes:02d}:{seconds:02d}", style="progress.remaining")


class PullProgress:
    """One bar per hive; `update` takes a hive's `progress` event."""

    def __init__(self, ref: str, console: Console) -> None:
        self.ref = ref
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            HiveRateColumn(),
            HiveEtaColumn(),
            console=console,
        )
        self._bars: dict[str, TaskID] = {}

    def __enter__(self) -> PullProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, hive_id: str, event: dict[str, Any]) -> None:
        total = event.get("total")
        if hive_id not in self._bars:
            self._bars[hive_id] = self.progress.add_task(f"{self.ref} on {hive_id}", total=total)
        self.progress.update(
            self._bars[hive_id],
            completed=event["bytes"],
            total=total,
            bytes_per_s=event.get("bytes_per_s"),
        )

    def print(self, text: str) -> None:
        self.progress.console.print(text)
