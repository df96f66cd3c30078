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
import time
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from bot.logs import configure_logging
from bot.messages import FOLLOW_UP_MARK
from bot.settings import DatabaseSettings, Settings
from bot.settings import problems as settings_problems

log = logging.getLogger(__name__)

SANDBOX_DIR = Path(".jitbot-sandbox")
SANDBOX_STATE = "sandbox.json"


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(argv)
    except BrokenPipeError:
        # The reader went away (`jitbot audit export | head`): stop quietly, and keep
        # Python from failing again while flushing standard output at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="jitbot", description="Just-in-time network access to Azure VMs, approved in Slack."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser(
        "serve",
        help="run the bot from JITBOT_* settings (Socket Mode when JITBOT_SLACK_APP_TOKEN is set)",
    )
    commands.add_parser("check-config", help="validate settings and the policy file, then exit")

    for verb, text in (
        ("protect", "put JIT deny rules for a VM's policy ports in every NSG on its path"),
        ("unprotect", "remove jitbot's JIT deny rules for a VM (no other rule is touched)"),
    ):
        command = commands.add_parser(verb, help=text)
        command.add_argument("vm", help="VM name or resource id")
    commands.add_parser("scan", help="classify every VM of the subscription: exposed, protected…")
    commands.add_parser("reconcile", help="repair NSG drift once and print what was found")

    audit = commands.add_parser("audit", help="read the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="WHAT")
    export = audit_commands.add_parser(
        "export",
        help="write the audit log as CSV or JSON (needs only DATABASE_URL)",
        description=(
            "Write every audit event, oldest first, as CSV or JSON. Needs only DATABASE_URL "
            "and never writes to the database. On a terminal a progress bar is drawn on "
            "standard error; the export itself stays clean."
        ),
        epilog="example: jitbot audit export --format json --since 2025-01-01 --output a.json",
    )
    export.add_argument(
        "--format", choices=("csv", "json"), default="csv", help="csv (default) or json"
    )
    export.add_argument(
        "--since",
        metavar="WHEN",
        help="only events at or after this ISO 8601 date or time (UTC unless it names a zone)",
    )
    export.add_argument(
        "--output", type=Path, metavar="FILE", help="file to write (default: standard output)"
    )

    sandbox = commands.add_parser(
        "sandbox", help="run the bot against local stand-ins of Azure and Slack"
    )
    sandbox.add_argument("--port", type=int, default=3000, help="bot port (default 3000)")
    sandbox.add_argument("--dir", type=Path, default=SANDBOX_DIR, help="where state is kept")
    sandbox.add_argument(
        "--keep",
        action="store_true",
        help="keep the database of the last run (the stand-ins always start from the seed)",
    )
    sandbox.add_argument(
        "--socket-mode",
        action="store_true",
        help="Slack reaches the bot over Socket Mode (a WebSocket the bot opens) instead of HTTP",
    )

    send = commands.add_parser(
        "send",
        help="sign and send a Slack request to a running `jitbot sandbox`",
        description=(
            "Send a slash command or a button click to a running `jitbot sandbox`, as Slack "
            "would: a signed HTTP request, or an envelope on the Socket Mode link when the "
            "sandbox runs with --socket-mode."
        ),
    )
    send.add_argument("--dir", type=Path, default=SANDBOX_DIR)
    send.add_argument("--user", default=None, help="Slack user id sending it")
    what = send.add_subparsers(dest="what", required=True, metavar="WHAT")
    slash = what.add_parser("command", help="a /jit slash command, e.g. 'request vm-web01 22 2h'")
    slash.add_argument("text")
    for verb in ("approve", "deny"):
        click = what.add_parser(verb, help=f"click {verb.title()} on a request's approval message")
        click.add_argument("request_id", type=int)
    deny = what.choices["deny"]
    deny.add_argument("--reason", default="", help="what to type in the deny form")

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve()
    if args.command == "check-config":
        return _check_config()
    if args.command in ("protect", "unprotect", "scan", "reconcile"):
        return _network_command(args)
    if args.command == "audit":
        return _audit_export(args.format, args.since, args.output)
    if args.command == "sandbox":
        return _sandbox(args.port, args.dir, args.keep, args.socket_mode)
    return _send(args)


def _load_settings() -> Settings:
    try:
        return Settings()  # type: ignore[call-arg]
    except ValidationError as exc:
        lines = "\n".join(f"  {line}" for line in settings_problems(exc))
        raise SystemExit(f"jitbot: invalid configuration:\n{lines}") from None


def _check_config() -> int:
    """Report every invalid setting by its variable, and the policy file's first error."""
    from jitcore.policy import PolicyError, load_policy_file

    try:
        settings: Settings | None = Settings()  # type: ignore[call-arg]
        failures: list[str] = []
    except ValidationError as exc:
        settings, failures = None, settings_problems(exc)
    policy_file = settings.policy_file if settings else Path(_policy_file_setting())
    try:
        policies = load_policy_file(policy_file)
    except PolicyError as exc:
        failures.append(f"JITBOT_POLICY_FILE: {exc.message}")
        policies = []
    if failures:
        print(f"jitbot: {len(failures)} problem(s) in the configuration:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"configuration valid; {len(policies)} policies in {policy_file}")
    return 0


def _policy_file_setting() -> str:
    default = Settings.model_fields["policy_file"].default
    return os.environ.get("JITBOT_POLICY_FILE") or str(default)


def _audit_export(fmt: str, since_text: str | None, output: Path | None) -> int:
    from bot import audit
    from jitcore.db import Store, make_engine

    try:
        database = DatabaseSettings()
        since = audit.parse_since(since_text) if since_text else None
    except ValidationError as exc:
        print(f"jitbot: {settings_problems(exc)[0]}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"jitbot: {exc}", file=sys.stderr)
        return 2
    missing = audit.missing_sqlite_file(database.database_url)
    if missing is not None:
        print(f"jitbot: there is no database at {missing}", file=sys.stderr)
        return 1
    engine = make_engine(database.database_url)
    try:
        events = audit.events_since(Store(engine), since)
    except SQLAlchemyError as exc:
        print(f"jitbot: cannot read the audit log: {type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    # The bar goes to stderr, and only on a terminal: the export itself stays clean.
    progress = _progress_bar("export") if sys.stderr.isatty() else None
    if output is None:
        audit.write(events, fmt, sys.stdout, progress)
        return 0
    with output.open("w", encoding="utf-8", newline="") as out:
        count = audit.write(events, fmt, out, progress)
    print(f"{count} audit event(s) written to {output}", file=sys.stderr)
    return 0


def _serve() -> int:
    from bot.app import build
    from bot.serve import HttpServer
    from bot.socket_mode import SocketModeRefused

    settings = _load_settings()
    configure_logging(settings.log_level, settings.log_format)
    bot = build(settings)
    try:
        bot.start()
    except SocketModeRefused as exc:
        bot.stop()
        print(f"jitbot: {exc}", file=sys.stderr)
        return 1
    server = HttpServer(bot, settings.host, settings.port, settings.http_threads)
    _stop_on_signals(server)
    try:
        server.serve_forever()
    finally:
        server.close()
        bot.stop()
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


def _stop_on_signals(server: Any) -> None:
    """SIGTERM or SIGINT ends the serving loop; the caller then stops the bot cleanly."""

    def stop(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping", signum)
        server.stop_serving()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _sandbox(port: int, workdir: Path, keep: bool, socket_mode: bool = False) -> int:
    from bot.sandbox import SandboxStack, sandbox_request_settings

    configure_logging("INFO", "text")
    workdir.mkdir(parents=True, exist_ok=True)
    stack = SandboxStack(
        workdir,
        bot_port=port,
        fresh=not keep,
        sweep_interval=5.0,
        socket_mode=socket_mode,
        settings=sandbox_request_settings(port),
    )
    stack.start()
    state_file = workdir / SANDBOX_STATE
    state_file.write_text(json.dumps(stack.describe(), indent=2), encoding="utf-8")
    print(stack.banner(), flush=True)
    done = threading.Event()
    restart = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGHUP, lambda *_: (restart.set(), done.set()))
    while True:
        done.wait()
        if not restart.is_set():
            break
        restart.clear()
        done.clear()
        print("restarting the bot (the stand-ins and the database stay)…", flush=True)
        stack.stop_bot()
        stack.start_bot()
        print(f"bot ready again at {stack.bot_url}", flush=True)
    print("stopping the sandbox…", flush=True)
    stack.stop()
    state_file.unlink(missing_ok=True)
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
    response_url = f"{state['response_url']}-{secrets.token_hex(4)}"
    if args.what == "command":
        user = args.user or "U0REQ12345"
        body = sender.slash_command_body(args.text, user_id=user, response_url=response_url)
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
    deliver = _socket_delivery(state) if state.get("mode") == "socket" else None
    try:
        before = len(_ephemerals_to(state["slack_url"], user))
        status, _headers, text = deliver(body) if deliver else sender.post(url, body, secret)
    except OSError as exc:
        print(
            f"jitbot: no sandbox answers at {url} ({exc}); start `jitbot sandbox`", file=sys.stderr
        )
        return 2
    print(f"HTTP {status}")
    if args.what == "deny" and status == 200:
        status = _submit_deny_form(url, secret, user, args.request_id, args.reason, deliver)
        print(f"deny form submitted: HTTP {status}")
    if args.what != "command":
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            answers = _ephemerals_to(state["slack_url"], user)[before:]
            if answers:
                print("\n".join(answers))
                break
            time.sleep(0.2)
    if text:
        print(_reply_text(text))
        if _reply_text(text).startswith(FOLLOW_UP_MARK):
            print(_follow_up(state["slack_url"], response_url.rsplit("/", 1)[-1]))
    return 0 if status == 200 else 1


def _socket_delivery(state: dict[str, Any]) -> Any:
    """For a sandbox in Socket Mode: push a body through the Slack stand-in's WebSocket
    and answer like ``sender.post`` (status, headers, the ack's payload as JSON text)."""
    from sandbox.slack import sender

    slack_base = state["slack_url"].removesuffix("/").removesuffix("/api")

    def deliver(body: str) -> tuple[int, dict[str, str], str]:
        status, answer = sender.push(slack_base, body)
        ack = answer.get("ack") if status == 200 else answer
        return status, {}, json.dumps(ack) if ack is not None else ""

    return deliver


def _submit_deny_form(
    url: str, secret: str, user: str, request_id: int, reason: str, deliver: Any = None
) -> int:
    """Submit the reason form a Deny click opens, as the clicker would in Slack."""
    from bot.messages import DENY_REASON_CALLBACK, REASON_BLOCK, REASON_INPUT
    from sandbox.slack import sender

    body = sender.view_submission_body(
        DENY_REASON_CALLBACK,
        {REASON_BLOCK: {REASON_INPUT: reason}},
        user_id=user,
        private_metadata=json.dumps({"request_id": request_id, "channel": None}),
    )
    status, _headers, _text = deliver(body) if deliver else sender.post(url, body, secret)
    return status


def _ephemerals_to(slack_api_url: str, user: str) -> list[str]:
    """Private answers the bot has given ``user`` so far (refusals, late clicks)."""
    base = slack_api_url.removesuffix("/").removesuffix("/api")
    url = f"{base}/sandbox/calls?method=chat.postEphemeral"
    with urllib.request.urlopen(url, timeout=5) as response:
        calls = json.load(response)
    return [c["args"].get("text", "") for c in calls if c.get("args", {}).get("user") == user]


def _follow_up(slack_api_url: str, name: str, timeout: float = 15.0) -> str:
    """The answer the bot sent later to the command's response_url (the sandbox records it)."""
    base = slack_api_url.removesuffix("/").removesuffix("/api")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{base}/sandbox/calls?method=response_url", timeout=5) as r:
            calls = json.load(r)
        for call in calls:
            if call.get("name") == name:
                return _with_links(call.get("args", {}))
        time.sleep(0.2)
    return f"(no answer at the response_url within {timeout:.0f}s)"


def _with_links(message: dict[str, Any]) -> str:
    """A message's text, then the address of each link button in its blocks (which a
    terminal cannot click)."""
    lines = [str(message.get("text", ""))]
    for block in message.get("blocks") or []:
        for element in block.get("elements", []) if isinstance(block, dict) else []:
            if isinstance(element, dict) and element.get("url"):
                label = (element.get("text") or {}).get("text", "link")
                lines.append(f"[{label}] {element['url']}")
    return "\n".join(lines)


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
