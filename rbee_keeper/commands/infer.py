"""`rbee infer` and `rbee chat`: tokens to stdout as they come.

Progress of a cold start (download, spawn, load) goes to stderr, so stdout carries the
generated text alone. Ctrl+C cancels the job at the queen first, then exits 130.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from rbee_keeper.context import Context
from shared.clients import event_error
from shared.queen_client import QueenClient

stderr = Console(stderr=True)


@dataclass
class TaskOutcome:
    text: str
    end: dict[str, Any]


class Interrupted(Exception):
    """Ctrl+C during a task, after the job was cancelled."""


async def run_task(client: QueenClient, body: dict[str, Any], *, echo: bool = True) -> TaskOutcome:
    """Stream one native task; raises the typed error of an `error` event."""
    pieces: list[str] = []
    job_id: str | None = None
    loop = asyncio.get_running_loop()
    current = asyncio.current_task()
    assert current is not None
    loop.add_signal_handler(signal.SIGINT, current.cancel)
    try:
        async with client.task(body) as events:
            async for event in events:
                if event.data is None or event.is_done:
                    continue
                item = event.json()
                kind = item.get("type")
                if kind == "started":
                    job_id = item["job_id"]
                elif kind == "token":
                    pieces.append(item["t"])
                    if echo:
                        sys.stdout.write(item["t"])
                        sys.stdout.flush()
                elif kind in ("loading", "queued"):
                    _progress(item)
                elif kind == "error":
                    raise event_error(item)
                elif kind == "end":
                    return TaskOutcome("".join(pieces), item)
    except asyncio.CancelledError:
        if job_id is not None:
            await client.cancel_task(job_id)
        raise Interrupted() from None
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    raise RuntimeError("the queen ended the stream without a result")


def _progress(event: dict[str, Any]) -> None:
    if not sys.stderr.isatty():
        return
    if event["type"] == "queued":
        stderr.print(f"[dim]queued, position {event['position']}[/dim]")
    else:
        stderr.print(
            f"[dim]{event['stage'].replace('_', ' ')} {event['progress'] * 100:.0f}%[/dim]"
        )


def infer_body(ctx_args: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": ctx_args.model,
        "prompt": ctx_args.prompt,
        "max_tokens": ctx_args.max_tokens,
        "temperature": ctx_args.temperature,
    }
    if ctx_args.hive:
        body["hive_id"] = ctx_args.hive
    return body


async def infer(ctx: Context, args: Any) -> None:
    async with ctx.client() as client:
        await run_task(client, infer_body(args))
    sys.stdout.write("\n")


async def chat(ctx: Context, args: Any) -> None:
    """A terminal conversation through the queen's OpenAI chat endpoint (so the model's
    chat template applies); the whole history goes with every turn."""
    messages: list[dict[str, str]] = []
    async with ctx.client() as client:
        while True:
            try:
                line = await asyncio.to_thread(input, "you> ")
            except EOFError:
                return
            if line.strip() in ("/exit", "/quit"):
                return
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line})
            sys.stdout.write("rbee> ")
            reply = await _chat_turn(client, args, messages)
            sys.stdout.write("\n")
            messages.append({"role": "assistant", "content": reply})


async def _chat_turn(client: QueenClient, args: Any, messages: list[dict[str, str]]) -> str:
    body = {
        "model": args.model,
        "messages": messages,
        "stream": True,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
    }
    pieces: list[str] = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as events:
        async for event in events:
            if event.data is None or event.is_done:
                continue
            chunk = event.json()
            if "error" in chunk:
                raise event_error(chunk["error"])
            for choice in chunk.get("choices", []):
                text = choice.get("delta", {}).get("content") or ""
                pieces.append(text)
                sys.stdout.write(text)
                sys.stdout.flush()
    return "".join(pieces)
