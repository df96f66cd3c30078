"""The ``/jit`` grammar: text typed in Slack, parsed into typed commands.

    request <vm> <ports> <duration> [from <ip|cidr>] [because <reason>]
    list
    revoke <id>
    help [command]

Parsing never touches the database or Azure; what the words mean is the engine's
business. Errors say what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from jitcore.durations import parse_duration

MAX_REASON = 500
MAX_PORTS = 10


class CommandError(ValueError):
    """The text is not a valid command; the message says what was expected."""

    def __init__(self, message: str, usage: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


@dataclass(frozen=True)
class RequestCommand:
    vm: str
    ports: tuple[int, ...]
    duration: timedelta
    source: str | None
    reason: str


@dataclass(frozen=True)
class ListCommand:
    pass


@dataclass(frozen=True)
class RevokeCommand:
    request_id: int


@dataclass(frozen=True)
class HelpCommand:
    topic: str | None = None


Command = RequestCommand | ListCommand | RevokeCommand | HelpCommand

USAGE = {
    "request": "/jit request <vm> <ports> <duration> [from <ip|cidr>] [because <reason>]",
    "list": "/jit list",
    "revoke": "/jit revoke <request id>",
    "help": "/jit help [command]",
}


def parse_command(text: str) -> Command:
    words = text.split()
    if not words:
        return HelpCommand()
    verb, args = words[0].lower(), words[1:]
    if verb == "request":
        return _parse_request(args)
    if verb == "list":
        if args:
            raise CommandError("`list` takes no arguments", USAGE["list"])
        return ListCommand()
    if verb in ("revoke", "done", "end"):
        return RevokeCommand(_parse_request_id(args, "revoke"))
    if verb == "help":
        topic = args[0].lower() if args else None
        return HelpCommand(topic if topic in USAGE else None)
    raise CommandError(
        f"`{_clip(words[0])}` is not a /jit command; commands: " + ", ".join(sorted(USAGE))
    )


def _parse_request(args: list[str]) -> RequestCommand:
    usage = USAGE["request"]
    reason_at = _index_of(args, "because")
    reason = " ".join(args[reason_at + 1 :]) if reason_at is not None else ""
    head = args[:reason_at] if reason_at is not None else args
    if reason_at is not None and not reason:
        raise CommandError("`because` must be followed by a reason", usage)
    if len(reason) > MAX_REASON:
        raise CommandError(f"the reason is {len(reason)} characters; at most {MAX_REASON}", usage)

    source = None
    from_at = _index_of(head, "from")
    if from_at is not None:
        rest = head[from_at + 1 :]
        if len(rest) != 1:
            raise CommandError("`from` must be followed by exactly one IP address or CIDR", usage)
        source = rest[0]
        head = head[:from_at]

    if len(head) != 3:
        raise CommandError("a request needs a VM, ports and a duration, in that order", usage)
    vm, ports_text, duration_text = head
    try:
        duration = parse_duration(duration_text)
    except ValueError as exc:
        raise CommandError(str(exc), usage) from None
    return RequestCommand(vm, parse_ports(ports_text), duration, source, reason)


def parse_ports(text: str) -> tuple[int, ...]:
    ports: list[int] = []
    for part in text.split(","):
        if not part.isdigit() or not 0 <= int(part) <= 65535:
            raise CommandError(
                f"`{_clip(text)}` is not a port list; "
                "use numbers from 0 to 65535, like 22 or 22,3389",
                USAGE["request"],
            )
        if int(part) not in ports:
            ports.append(int(part))
    if len(ports) > MAX_PORTS:
        raise CommandError(f"at most {MAX_PORTS} ports in one request", USAGE["request"])
    return tuple(ports)


def _parse_request_id(args: list[str], verb: str) -> int:
    if len(args) != 1:
        raise CommandError(f"`{verb}` needs one request id", USAGE[verb])
    text = args[0].lstrip("#")
    if not text.isdigit() or len(text) > 12:
        raise CommandError(
            f"`{_clip(args[0])}` is not a request id; use the number, like 42", USAGE[verb]
        )
    return int(text)


def _index_of(words: list[str], keyword: str) -> int | None:
    for index, word in enumerate(words):
        if word.lower() == keyword:
            return index
    return None


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
