"""`rbee`: what a person types. An HTTP client of the queen that may start local daemons.

Errors are one line on stderr and exit status 1; Ctrl+C during a task cancels the job
first and exits 130.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

import httpx

from rbee_keeper import daemons
from rbee_keeper.commands import infer as infer_cmd
from rbee_keeper.commands import manage
from rbee_keeper.commands import token as token_cmd
from rbee_keeper.context import DEFAULT_HIVE_PORT, DEFAULT_QUEEN_URL, Context
from shared.auth import Audience, Role
from shared.errors import RbeeError

EXIT_INTERRUPTED = 130


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rbee", description="Run LLMs on machines you own.")
    parser.add_argument(
        "--queen-url",
        default=os.environ.get("RBEE_QUEEN_URL", DEFAULT_QUEEN_URL),
        help="queen base URL (env RBEE_QUEEN_URL)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("RBEE_TOKEN"), help="API key or JWT (env RBEE_TOKEN)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start a local queen and hive in the background")
    _stack_options(up)
    up.add_argument("--model", help="pull this model once the stack is up")
    up.add_argument("--host", default=None, help="bind address (default loopback)")
    up.add_argument("--port", type=int, default=None, help="queen port (default 8080)")
    down = sub.add_parser("down", help="stop what `rbee up` started")
    _stack_options(down)

    infer = sub.add_parser("infer", help="stream a completion to stdout")
    infer.add_argument("-m", "--model", default=os.environ.get("RBEE_DEFAULT_MODEL", "gemma3-270m"))
    infer.add_argument("-p", "--prompt", required=True)
    infer.add_argument("--max-tokens", type=int, default=256)
    infer.add_argument("--temperature", type=float, default=0.7)
    infer.add_argument("--hive", default=None, help="run on this hive")
    _stack_options(infer)

    chat = sub.add_parser("chat", help="interactive chat")
    chat.add_argument("-m", "--model", default=os.environ.get("RBEE_DEFAULT_MODEL", "gemma3-270m"))
    chat.add_argument("--max-tokens", type=int, default=512)
    chat.add_argument("--temperature", type=float, default=0.7)

    status = sub.add_parser("status", help="hives, workers and models")
    status.add_argument("--json", action="store_true")

    hive = sub.add_parser("hive", help="manage hives").add_subparsers(dest="action", required=True)
    add = hive.add_parser("add")
    add.add_argument("id")
    where = add.add_mutually_exclusive_group(required=True)
    where.add_argument("--url")
    where.add_argument("--ssh", help="user@host[:port]")
    add.add_argument("--key", help="SSH private key path")
    add.add_argument("--json", action="store_true")
    hive.add_parser("list").add_argument("--json", action="store_true")
    for action in ("remove", "start", "stop"):
        hive.add_parser(action).add_argument("id")

    models = sub.add_parser("models", help="manage models").add_subparsers(
        dest="action", required=True
    )
    pull = models.add_parser("pull")
    pull.add_argument("ref")
    pull.add_argument("--hive", default=None)
    models.add_parser("list").add_argument("--json", action="store_true")
    rm = models.add_parser("rm")
    rm.add_argument("id")
    rm.add_argument("--hive", default=None)

    workers = sub.add_parser("workers", help="manage workers").add_subparsers(
        dest="action", required=True
    )
    workers.add_parser("list").add_argument("--json", action="store_true")
    workers.add_parser("stop").add_argument("id")

    token = sub.add_parser("token", help="mint tokens").add_subparsers(dest="action", required=True)
    create = token.add_parser("create")
    create.add_argument("--role", choices=[r.value for r in Role], default="client")
    create.add_argument("--ttl", default="30d", help="3600, 90m, 12h, 30d")
    create.add_argument(
        "--audience", choices=[a.value for a in Audience], default=Audience.QUEEN.value
    )
    create.add_argument("--subject", default="rbee-cli")
    create.add_argument("--jwt-secret-file", default=None)
    return parser


def _stack_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hive-port", type=int, default=_env_int("RBEE_HIVE_PORT", DEFAULT_HIVE_PORT)
    )


def _context(args: argparse.Namespace) -> Context:
    url = args.queen_url
    if args.command == "up" and (args.port or args.host):
        host = args.host or "127.0.0.1"
        url = f"http://{host}:{args.port or 8080}"
    return Context(url, args.token, json=bool(getattr(args, "json", False)))


def dispatch(args: argparse.Namespace) -> Coroutine[Any, Any, None] | None:
    ctx = _context(args)
    command, action = str(args.command), str(getattr(args, "action", ""))
    if command == "up":
        manage.up(ctx, args.hive_port)
        return manage.model_pull(ctx, _ref(args.model)) if args.model else None
    if command == "down":
        return manage.down(ctx, args.hive_port)
    if command == "infer":
        if ctx.queen_is_local and not daemons.healthy(ctx.queen_url.rstrip("/")):
            manage.up(ctx, args.hive_port, out=sys.stderr)  # stdout carries the text alone
        return infer_cmd.infer(ctx, args)
    if command == "chat":
        return infer_cmd.chat(ctx, args)
    if command == "status":
        return manage.status(ctx, args)
    if command == "token":
        print(token_cmd.create(args))
        return None
    if action == "list":
        return manage.listing(ctx, f"{command}s" if command == "hive" else command)
    handlers = {
        ("hive", "add"): manage.hive_add,
        ("hive", "remove"): manage.hive_remove,
        ("hive", "start"): manage.hive_start_stop,
        ("hive", "stop"): manage.hive_start_stop,
        ("models", "pull"): manage.model_pull,
        ("models", "rm"): manage.model_remove,
        ("workers", "stop"): manage.worker_stop,
    }
    return handlers[(command, action)](ctx, args)


def _ref(model: str) -> argparse.Namespace:
    return argparse.Namespace(ref=model, hive=None)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        work = dispatch(args)
        if work is not None:
            asyncio.run(work)
        return 0
    except (infer_cmd.Interrupted, KeyboardInterrupt):
        print("\nrbee: cancelled", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RbeeError as exc:
        print(f"rbee: {exc.code}: {exc.message}", file=sys.stderr)
    except httpx.ConnectError:
        print(
            f"rbee: cannot reach the queen at {args.queen_url}: is it running? "
            "Start it with `rbee up`.",
            file=sys.stderr,
        )
    except httpx.HTTPError as exc:
        print(f"rbee: the queen at {args.queen_url} failed: {type(exc).__name__}", file=sys.stderr)
    except (daemons.StackError, token_cmd.TokenError) as exc:
        print(f"rbee: {exc}", file=sys.stderr)
    return 1
