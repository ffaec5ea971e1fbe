"""Listings and management: status, hives, models, workers, the local stack."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from rbee_keeper import daemons
from rbee_keeper.context import Context
from rbee_keeper.progress import PullProgress
from shared.clients import event_error

out = Console()
COLUMNS = {
    "hives": ["id", "url", "state", "last_heartbeat"],
    "workers": ["id", "hive_id", "model", "state", "url", "slots"],
    "models": ["id", "model_ref", "state", "hive_id", "size"],
}


def _cell(value: Any) -> str:
    if isinstance(value, dict) and {"total", "busy"} <= value.keys():
        return f"{value['busy']}/{value['total']}"
    return "" if value is None else str(value)


def show(ctx: Context, kind: str, rows: list[dict[str, Any]]) -> None:
    if ctx.json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title=kind)
    columns = COLUMNS[kind]
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    out.print(table)


async def status(ctx: Context, args: Any) -> None:
    async with ctx.client() as client:
        hives, workers, models = await client.hives(), await client.workers(), await client.models()
    if ctx.json:
        print(
            json.dumps(
                {"hives": hives, "workers": workers, "models": models}, indent=2, default=str
            )
        )
        return
    show(ctx, "hives", hives)
    show(ctx, "workers", workers)
    show(ctx, "models", models)


async def listing(ctx: Context, kind: str) -> None:
    async with ctx.client() as client:
        show(ctx, kind, await client.data(f"/v2/{kind}"))


async def hive_add(ctx: Context, args: Any) -> None:
    body: dict[str, Any] = {"id": args.id}
    if args.url:
        body["url"] = args.url
    if args.ssh:
        user, _, rest = args.ssh.rpartition("@")
        host, _, port = rest.partition(":")
        body["ssh"] = {"host": host, "user": user or "root", "port": int(port or 22)}
        if args.key:
            body["ssh"]["key_path"] = args.key
    async with ctx.client(timeout=120) as client:
        created = await client.add_hive(body)
    print(json.dumps(created, default=str) if ctx.json else f"hive {args.id} added")


async def hive_remove(ctx: Context, args: Any) -> None:
    async with ctx.client() as client:
        await client.remove_hive(args.id)
    print(f"hive {args.id} removed")


HIVE_STATUS = {
    "started": "started",
    "already_running": "is already running",
    "stopped": "stopped",
    "not_running": "was not running",
    "stopping": "is stopping (it did not exit yet)",
}


async def hive_start_stop(ctx: Context, args: Any) -> None:
    async with ctx.client(timeout=120) as client:
        if args.action == "start":
            result = await client.start_hive(args.id)
        else:
            result = await client.stop_hive(args.id)
    status = str(result.get("status"))
    print(f"hive {args.id} {HIVE_STATUS.get(status, status)}")


async def worker_stop(ctx: Context, args: Any) -> None:
    async with ctx.client() as client:
        await client.stop_worker(args.id)
    print(f"worker {args.id} stopping")


async def model_remove(ctx: Context, args: Any) -> None:
    async with ctx.client() as client:
        await client.remove_model(args.id, args.hive)
    print(f"model {args.id} removed")


async def model_pull(ctx: Context, args: Any) -> None:
    body: dict[str, Any] = {"model": args.ref}
    if args.hive:
        body["hive_id"] = args.hive
    label = args.ref.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    async with ctx.client() as client, client.pull(body) as events:
        with PullProgress(label, Console(stderr=True)) as progress:
            async for event in events:
                if event.data is None or event.is_done:
                    continue
                item = event.json()
                hive = item.get("hive_id", "hive")
                if item["type"] == "progress":
                    progress.update(hive, item)
                elif item["type"] == "error":
                    raise event_error(item)
                elif item["type"] == "end":
                    model = item.get("model", {})
                    progress.print(f"pulled {model.get('id', args.ref)} on {hive}")


def up(ctx: Context, hive_port: int, *, out: TextIO | None = None) -> None:
    """Start the local stack; the base URL goes to `out` (stdout unless the command's
    stdout is for something else, as `rbee infer`'s is for the generated text)."""
    for daemon, started in daemons.up(ctx, hive_port):
        what = "started" if started else "already running"
        print(f"{daemon.command} {what} at {daemon.url}", file=sys.stderr)
    out = out or sys.stdout
    print(f"OpenAI base URL: {ctx.queen_url.rstrip('/')}/v1", file=out)
    print(f"  curl {ctx.queen_url.rstrip('/')}/v1/models", file=out)


async def down(ctx: Context, hive_port: int) -> None:
    try:
        async with ctx.client(timeout=10) as client:
            await client.shutdown(cascade=True)
    except Exception:  # the queen is already gone: stop what we started ourselves
        daemons.terminate(ctx, hive_port)
    daemons.reap(ctx, hive_port)
    print("rbee stopped", file=sys.stderr)
