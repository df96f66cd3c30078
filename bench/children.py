"""Servers the benchmarks run in child processes, so that the load generator (or the
bot) does not share a GIL with what it measures.

The parent starts a child with :meth:`Child.start`; the child writes what the parent
needs (URLs, the signing secret) as JSON to ``--out`` and serves until its standard
input closes, which also happens when the parent dies, so no server outlives a run.

    python -m bench.children bot --workdir W --out W/bot.json --standins S/standins.json
    python -m bench.children bare --out W/bare.json
    python -m bench.children standins --workdir W --out W/standins.json --seed seed.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from waitress.server import create_server

from bot.logs import configure_logging
from bot.sandbox import SANDBOX_ARM_TOKEN, SANDBOX_BOT_TOKEN

HTTP_THREADS = 8
"""waitress threads of both the bot and the bare Bolt app (the bot's default)."""


class Child:
    """One child process and the JSON it wrote once ready."""

    def __init__(self, process: subprocess.Popen[bytes], info: dict[str, Any]) -> None:
        self.process = process
        self.info = info

    @classmethod
    def start(cls, kind: str, workdir: Path, *options: str, timeout: float = 60) -> Child:
        workdir.mkdir(parents=True, exist_ok=True)
        out = workdir / f"{kind}.json"
        out.unlink(missing_ok=True)
        log = (workdir / f"{kind}.log").open("ab")
        command = [sys.executable, "-m", "bench.children", kind, "--out", str(out)]
        command += ["--workdir", str(workdir), *options]
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not out.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the {kind} child did not start; see {workdir / kind}.log")
            time.sleep(0.05)
        return cls(process, json.loads(out.read_text(encoding="utf-8")))

    def stop(self, timeout: float = 30) -> None:
        """Close its standard input (its signal to stop) and wait; kill it if it hangs."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


# -- the children ----------------------------------------------------------------------


def _serve_bot(args: argparse.Namespace) -> None:
    """The bot as ``jitbot sandbox`` runs it, wired to stand-ins in another child."""
    from bench.stack import BenchStack

    standins = json.loads(Path(args.standins).read_text(encoding="utf-8"))
    stack = BenchStack(
        args.workdir,
        standins,
        database_url=args.database_url,
        policy_file=Path(args.policy) if args.policy else None,
    ).start()
    if args.no_pending_cap and stack.bot is not None:
        # One seeded user sends every request of the load; the cap on a requester's
        # pending requests would refuse all but the first few.
        stack.bot.engine.max_pending_per_requester = 1_000_000
    try:
        _ready(args.out, {**stack.describe(), "pid": os.getpid()})
    finally:
        stack.stop()


def _serve_bare(args: argparse.Namespace) -> None:
    """A Bolt app whose ``/jit`` listener only acks, on the same waitress settings.

    Its client points at a local Slack stand-in, as the bot's does: Bolt calls
    ``auth.test`` once before the first listener runs, and that must stay on 127.0.0.1.
    """
    from slack_bolt import Ack, App
    from slack_bolt.adapter.wsgi import SlackRequestHandler
    from slack_sdk import WebClient

    from sandbox.slack.server import SlackServer

    slack = SlackServer(bot_token=SANDBOX_BOT_TOKEN).start()
    signing_secret = secrets.token_hex(16)
    bolt = App(
        signing_secret=signing_secret,
        client=WebClient(token=SANDBOX_BOT_TOKEN, base_url=slack.url, timeout=10),
        token_verification_enabled=False,
        process_before_response=False,
        logger=logging.getLogger("bench.bare"),
    )

    def only_ack(ack: Ack) -> None:
        ack()

    bolt.command("/jit")(only_ack)
    handler = SlackRequestHandler(bolt, path="/slack/events")
    server: Any = create_server(
        handler, host="127.0.0.1", port=0, threads=HTTP_THREADS, ident="bare-bolt"
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    host, port = server.socket.getsockname()[:2]
    info = {
        "bot_url": f"http://{host}:{port}",
        "signing_secret": signing_secret,
        "response_url": slack.response_url("bench"),
    }
    try:
        _ready(args.out, info)
    finally:
        server.close()
        slack.stop()


def _serve_standins(args: argparse.Namespace) -> None:
    """The ARM and Slack stand-ins alone, for a bot running in the benchmark process."""
    from bot.sandbox import seed_file
    from sandbox.arm.server import ArmServer
    from sandbox.slack.server import SlackServer

    arm = ArmServer(
        seed=args.seed or seed_file("default.json"),
        workdir=args.workdir,
        token=SANDBOX_ARM_TOKEN,
        lro_polls=1,
        retry_after=0,
        throttling=not args.no_throttling,
        write_burst=args.write_burst,
        write_refill_per_second=args.write_refill,
    ).start()
    slack = SlackServer(bot_token=SANDBOX_BOT_TOKEN).start()
    info = {
        "arm_url": arm.url,
        "ca_path": arm.ca_path,
        "subscription_id": arm.subscription_id,
        "slack_url": slack.url,
        "slack_base": slack.base,
        "response_url": slack.response_url("bench"),
    }
    try:
        _ready(args.out, info)
    finally:
        slack.stop()
        arm.stop()


def _ready(out: str, info: dict[str, Any]) -> None:
    """Tell the parent we are up, then serve until our standard input closes."""
    partial = Path(out + ".partial")
    partial.write_text(json.dumps(info), encoding="utf-8")
    partial.replace(out)
    sys.stdin.read()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.children")
    parser.add_argument("kind", choices=("bot", "bare", "standins"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--database-url")
    parser.add_argument("--policy")
    parser.add_argument("--seed")
    parser.add_argument("--standins", help="the JSON a standins child wrote")
    parser.add_argument("--no-pending-cap", action="store_true")
    parser.add_argument("--no-throttling", action="store_true")
    parser.add_argument("--write-burst", type=int, default=200)
    parser.add_argument("--write-refill", type=float, default=10.0)
    args = parser.parse_args(argv)
    configure_logging("INFO", "text")
    logging.getLogger("jitcore").setLevel(logging.INFO)
    {"bot": _serve_bot, "bare": _serve_bare, "standins": _serve_standins}[args.kind](args)


if __name__ == "__main__":
    main()
