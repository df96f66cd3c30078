"""The ``jitbot`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bot.logs import configure_logging
from bot.settings import Settings

log = logging.getLogger(__name__)

SANDBOX_DIR = Path(".jitbot-sandbox")
SANDBOX_STATE = "sandbox.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jitbot", description="Just-in-time network access to Azure VMs, approved in Slack."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("serve", help="run the bot (HTTP mode) from JITBOT_* settings")
    commands.add_parser("check-config", help="validate settings and the policy file, then exit")

    for verb, text in (
        ("protect", "put JIT deny rules for a VM's policy ports in every NSG on its path"),
        ("unprotect", "remove jitbot's JIT deny rules for a VM (no other rule is touched)"),
    ):
        command = commands.add_parser(verb, help=text)
        command.add_argument("vm", help="VM name or resource id")
    commands.add_parser("scan", help="classify every VM of the subscription: exposed, protected…")
    commands.add_parser("reconcile", help="repair NSG drift once and print what was found")

    sandbox = commands.add_parser(
        "sandbox", help="run the bot against local stand-ins of Azure and Slack"
    )
    sandbox.add_argument("--port", type=int, default=3000, help="bot port (default 3000)")
    sandbox.add_argument("--dir", type=Path, default=SANDBOX_DIR, help="where state is kept")
    sandbox.add_argument("--fresh", action="store_true", help="start with an empty database")

    send = commands.add_parser(
        "send", help="sign and send a Slack request to a running `jitbot sandbox`"
    )
    send.add_argument("--dir", type=Path, default=SANDBOX_DIR)
    send.add_argument("--user", default=None, help="Slack user id sending it")
    what = send.add_subparsers(dest="what", required=True, metavar="WHAT")
    slash = what.add_parser("command", help="a /jit slash command, e.g. 'request vm-web01 22 2h'")
    slash.add_argument("text")
    for verb in ("approve", "deny"):
        click = what.add_parser(verb, help=f"click {verb.title()} on a request's approval message")
        click.add_argument("request_id", type=int)

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve()
    if args.command == "check-config":
        return _check_config()
    if args.command in ("protect", "unprotect", "scan", "reconcile"):
        return _network_command(args)
    if args.command == "sandbox":
        return _sandbox(args.port, args.dir, args.fresh)
    return _send(args)


def _load_settings() -> Settings:
    try:
        return Settings()  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = "; ".join(
            f"JITBOT_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise SystemExit(f"jitbot: invalid configuration: {problems}") from None


def _check_config() -> int:
    from jitcore.policy import PolicyError, load_policy_file

    settings = _load_settings()
    try:
        policies = load_policy_file(settings.policy_file)
    except PolicyError as exc:
        print(f"jitbot: {exc.message}", file=sys.stderr)
        return 1
    print(f"configuration valid; {len(policies)} policies in {settings.policy_file}")
    return 0


def _serve() -> int:
    from bot.app import build
    from bot.serve import HttpServer

    settings = _load_settings()
    configure_logging(settings.log_level, settings.log_format)
    bot = build(settings)
    bot.start()
    server = HttpServer(bot, settings.host, settings.port, settings.http_threads)
    _stop_on_signals(server, bot)
    server.serve_forever()
    return 0


def _network_command(args: argparse.Namespace) -> int:
    from bot.app import build
    from jitcore.errors import JitError

    settings = _load_settings()
    configure_logging("WARNING", settings.log_format)
    bot = build(settings)
    try:
        if args.command == "protect":
            outcome = bot.protector.protect(args.vm, "cli")
            created = ", ".join(outcome.created) or "none"
            print(f"{outcome.vm_name}: deny rules created in {created}")
            if outcome.already_protected:
                print(f"already protected in {', '.join(outcome.already_protected)}")
        elif args.command == "unprotect":
            removed = bot.protector.unprotect(args.vm, "cli")
            print(f"removed jitbot's deny rules from {', '.join(removed) or 'no NSG'}")
        elif args.command == "reconcile":
            findings = bot.protector.reconcile()
            for finding in findings:
                print(finding.describe())
            print(f"{len(findings)} finding(s)")
        else:
            results = bot.protector.scan(bot.network.vm_names(), progress=_progress_bar("scan"))
            for result in results:
                print(f"{result.vm_name:<40} {result.status:<15} {result.reason}")
    except JitError as exc:
        print(f"jitbot: {exc.message}", file=sys.stderr)
        return 1
    finally:
        bot.stop()
    return 0


def _progress_bar(label: str) -> Any:
    """A one-line progress bar on stderr, redrawn in place when it is a terminal."""

    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        bar = "#" * filled + "." * (width - filled)
        end = "\n" if done == total else ""
        if sys.stderr.isatty() or done == total:
            print(f"\r{label} [{bar}] {done}/{total}", end=end, file=sys.stderr, flush=True)

    return show


def _stop_on_signals(server: Any, bot: Any) -> None:
    def stop(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping", signum)
        threading.Thread(target=lambda: (server.close(), bot.stop()), daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _sandbox(port: int, workdir: Path, fresh: bool) -> int:
    from bot.sandbox import SandboxStack

    configure_logging("INFO", "text")
    workdir.mkdir(parents=True, exist_ok=True)
    stack = SandboxStack(workdir, bot_port=port, fresh=fresh, sweep_interval=5.0)
    stack.start()
    (workdir / SANDBOX_STATE).write_text(json.dumps(stack.describe(), indent=2), encoding="utf-8")
    print(stack.banner(), flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    print("stopping the sandbox…", flush=True)
    stack.stop()
    return 0


def _send(args: argparse.Namespace) -> int:
    from sandbox.slack import sender

    state_file = args.dir / SANDBOX_STATE
    if not state_file.exists():
        print(
            f"jitbot: no running sandbox found ({state_file}); start `jitbot sandbox`",
            file=sys.stderr,
        )
        return 2
    state = json.loads(state_file.read_text(encoding="utf-8"))
    secret = state["signing_secret"]
    url = state["bot_url"] + "/slack/events"
    if args.what == "command":
        user = args.user or "U0REQ12345"
        body = sender.slash_command_body(
            args.text, user_id=user, response_url=state["response_url"]
        )
    else:
        user = args.user or "U0APPROVR1"
        ts = _approval_ts(state["slack_url"], args.request_id)
        if ts is None:
            print(f"jitbot: no approval message for request #{args.request_id}", file=sys.stderr)
            return 2
        action = "jit_approve" if args.what == "approve" else "jit_deny"
        body = sender.block_action_body(
            action,
            str(args.request_id),
            user_id=user,
            message_ts=ts,
            response_url=state["response_url"],
        )
    status, _headers, text = sender.post(url, body, secret)
    print(f"HTTP {status}")
    if text:
        print(_reply_text(text))
    return 0 if status == 200 else 1


def _reply_text(text: str) -> str:
    """The text of an ack as a person would read it in Slack, or the raw body."""
    try:
        reply = json.loads(text)
    except ValueError:
        return text
    return reply.get("text", text) if isinstance(reply, dict) else text


def _approval_ts(slack_api_url: str, request_id: int) -> str | None:
    base = slack_api_url.removesuffix("/").removesuffix("/api")
    with urllib.request.urlopen(f"{base}/sandbox/calls?method=chat.postMessage", timeout=5) as resp:
        calls = json.load(resp)
    marker = f"jit-req-{request_id}-summary"
    for call in calls:
        blocks = call.get("args", {}).get("blocks") or []
        if any(block.get("block_id") == marker for block in blocks):
            return (call.get("response") or {}).get("ts")
    return None


def sandbox_signing_secret() -> str:
    return os.environ.get("JITBOT_SANDBOX_SIGNING_SECRET") or secrets.token_hex(16)


if __name__ == "__main__":
    raise SystemExit(main())
