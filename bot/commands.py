"""The ``/jit`` grammar: text typed in Slack, parsed into typed commands.

    request <vm>[,<vm>…] <ports> <duration> [from <ip|cidr>] [because <reason>]
    request                    (alone: opens the request form)
    source [set <ip|cidr> | clear]
    list
    status <vm>
    extend <id> <duration>
    revoke <id>
    why <vm> [port]
    admin map <user> <userPrincipalName | object id>
    admin unmap <user>
    policy protect <vm> | policy unprotect <vm>
    scan
    audit [<vm> | <user>] [<since>]
    help [command]

A ``<user>`` is a Slack mention as Slack escapes it (``<@U0123ABCD>`` or
``<@U0123ABCD|name>``) or a bare member id (``U0123ABCD``). The manifest sends the text
unescaped (``should_escape: false``), so a typed ``@name`` arrives as plain text, which
names nobody for sure; it is refused with a pointer to the member id.

Parsing never touches the database or Azure; what the words mean is the engine's
business. Errors say what was expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from jitcore.durations import parse_duration

MAX_REASON = 500
MAX_PORTS = 10
MAX_VMS = 5


class CommandError(ValueError):
    """The text is not a valid command; the message says what was expected."""

    def __init__(self, message: str, usage: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


@dataclass(frozen=True)
class RequestCommand:
    vm: str
    """The VM as typed: a name or resource id, or several separated by commas."""
    ports: tuple[int, ...]
    duration: timedelta
    source: str | None
    reason: str

    @property
    def vms(self) -> tuple[str, ...]:
        return parse_vms(self.vm)


@dataclass(frozen=True)
class RequestFormCommand:
    """``/jit request`` alone: open the request form."""


@dataclass(frozen=True)
class SourceCommand:
    """``/jit source``: show (``action`` "show"), ``set`` or ``clear`` the saved source."""

    action: str
    value: str | None = None


@dataclass(frozen=True)
class ListCommand:
    pass


@dataclass(frozen=True)
class RevokeCommand:
    request_id: int


@dataclass(frozen=True)
class HelpCommand:
    topic: str | None = None


@dataclass(frozen=True)
class WhyCommand:
    vm: str
    port: int | None = None


@dataclass(frozen=True)
class AdminMapCommand:
    user_id: str
    target: str


@dataclass(frozen=True)
class AdminUnmapCommand:
    user_id: str


@dataclass(frozen=True)
class StatusCommand:
    vm: str


@dataclass(frozen=True)
class ExtendCommand:
    request_id: int
    duration: timedelta


@dataclass(frozen=True)
class PolicyProtectCommand:
    vm: str


@dataclass(frozen=True)
class PolicyUnprotectCommand:
    vm: str


@dataclass(frozen=True)
class ScanCommand:
    pass


@dataclass(frozen=True)
class AuditCommand:
    """``/jit audit``: recent audit events, of one VM or one user, since a time.

    ``since`` is a look-back (``7d``) or a moment (an ISO date or time, UTC unless it
    names a zone); None means the default look-back.
    """

    vm: str | None = None
    user_id: str | None = None
    since: timedelta | datetime | None = None


AdminCommand = AdminMapCommand | AdminUnmapCommand
ProtectionCommand = PolicyProtectCommand | PolicyUnprotectCommand | ScanCommand
Command = (
    RequestCommand
    | RequestFormCommand
    | SourceCommand
    | ListCommand
    | StatusCommand
    | ExtendCommand
    | RevokeCommand
    | HelpCommand
    | WhyCommand
    | AdminCommand
    | ProtectionCommand
    | AuditCommand
)

USAGE = {
    "request": "/jit request <vm>[,<vm>…] <ports> <duration> [from <ip|cidr>] "
    "[because <reason>], or /jit request alone for a form",
    "source": "/jit source | /jit source set <ip|cidr> | /jit source clear",
    "list": "/jit list",
    "status": "/jit status <vm>",
    "extend": "/jit extend <request id> <duration>",
    "revoke": "/jit revoke <request id>",
    "why": "/jit why <vm> [port]",
    "admin": "/jit admin map <@user> <userPrincipalName or object id> | /jit admin unmap <@user>",
    "policy": "/jit policy protect <vm> | /jit policy unprotect <vm>",
    "scan": "/jit scan",
    "audit": "/jit audit [<vm> | <@user>] [<since>, like 7d or 2025-01-31]",
    "help": "/jit help [command]",
}


def parse_command(text: str) -> Command:
    words = text.split()
    if not words:
        return HelpCommand()
    verb, args = words[0].lower(), words[1:]
    if verb == "request":
        return _parse_request(args) if args else RequestFormCommand()
    if verb == "source":
        return _parse_source(args)
    if verb == "list":
        if args:
            raise CommandError("`list` takes no arguments", USAGE["list"])
        return ListCommand()
    if verb == "status":
        if len(args) != 1:
            raise CommandError("`status` needs one VM", USAGE["status"])
        return StatusCommand(args[0])
    if verb == "extend":
        return _parse_extend(args)
    if verb in ("revoke", "done", "end"):
        return RevokeCommand(_parse_request_id(args, "revoke"))
    if verb == "why":
        return _parse_why(args)
    if verb == "admin":
        return _parse_admin(args)
    if verb == "policy":
        return _parse_policy(args)
    if verb == "scan":
        if args:
            raise CommandError("`scan` takes no arguments", USAGE["scan"])
        return ScanCommand()
    if verb == "audit":
        return _parse_audit(args)
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
    parse_vms(vm)
    try:
        duration = parse_duration(duration_text)
    except ValueError as exc:
        raise CommandError(str(exc), usage) from None
    return RequestCommand(vm, parse_ports(ports_text), duration, source, reason)


def parse_vms(text: str) -> tuple[str, ...]:
    """VM names or resource ids separated by commas, each once (compared without case)."""
    vms: list[str] = []
    for part in text.split(","):
        if not part:
            raise CommandError(
                f"`{_clip(text)}` has an empty VM name; separate VMs with single commas, "
                "like vm-a,vm-b",
                USAGE["request"],
            )
        if part.lower() not in (vm.lower() for vm in vms):
            vms.append(part)
    if len(vms) > MAX_VMS:
        raise CommandError(f"at most {MAX_VMS} VMs in one request", USAGE["request"])
    return tuple(vms)


def _parse_source(args: list[str]) -> SourceCommand:
    usage = USAGE["source"]
    action = args[0].lower() if args else "show"
    if action == "show" and len(args) <= 1:
        return SourceCommand("show")
    if action == "clear" and len(args) == 1:
        return SourceCommand("clear")
    if action == "set" and len(args) == 2:
        return SourceCommand("set", args[1])
    raise CommandError("`source` takes nothing (show it), `set <ip|cidr>` or `clear`", usage)


def _parse_extend(args: list[str]) -> ExtendCommand:
    usage = USAGE["extend"]
    if len(args) != 2:
        raise CommandError(
            "`extend` needs a request id and a duration, like `extend 42 30m`", usage
        )
    request_id = _parse_request_id(args[:1], "extend")
    try:
        duration = parse_duration(args[1])
    except ValueError as exc:
        raise CommandError(str(exc), usage) from None
    return ExtendCommand(request_id, duration)


def _parse_policy(args: list[str]) -> PolicyProtectCommand | PolicyUnprotectCommand:
    usage = USAGE["policy"]
    action = args[0].lower() if args else ""
    if action == "protect" and len(args) == 2:
        return PolicyProtectCommand(args[1])
    if action == "unprotect" and len(args) == 2:
        return PolicyUnprotectCommand(args[1])
    raise CommandError("`policy` takes `protect <vm>` or `unprotect <vm>`", usage)


def _parse_audit(args: list[str]) -> AuditCommand:
    """``[<vm> | <user>] [<since>]``: with one word, a look-back or date is ``since``, a
    mention or member id a user, anything else a VM; with two, the second is ``since``."""
    usage = USAGE["audit"]
    if len(args) > 2:
        raise CommandError("`audit` takes at most a VM or user, then a since", usage)
    if not args:
        return AuditCommand()
    since = parse_since(args[-1], usage) if len(args) == 2 else _maybe_since(args[0])
    target = args[0] if len(args) == 2 or since is None else None
    if target is None:
        return AuditCommand(since=since)
    if _MENTION.fullmatch(target) or _MEMBER_ID.fullmatch(target):
        return AuditCommand(user_id=parse_user(target, usage), since=since)
    if target.startswith(("<@", "@")):
        parse_user(target, usage)  # refused with the pointer to the member id
    return AuditCommand(vm=target, since=since)


def _maybe_since(text: str) -> timedelta | datetime | None:
    try:
        return parse_since(text, None)
    except CommandError:
        return None


def parse_since(text: str, usage: str | None) -> timedelta | datetime:
    """A look-back typed like a duration (``7d``, ``12h``) or an ISO 8601 date or time."""
    try:
        return parse_duration(text)
    except ValueError:
        pass
    if text[:1].isdigit() and len(text) <= 40:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    raise CommandError(
        f"`{_clip(text)}` is not a time to look back from; use a duration like 7d or 12h, "
        "or a date like 2025-01-31",
        usage,
    )


def parse_ports(text: str) -> tuple[int, ...]:
    ports: list[int] = []
    for part in text.split(","):
        if not (part.isascii() and part.isdigit()) or len(part) > 5 or int(part) > 65535:
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
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise CommandError(
            f"`{_clip(args[0])}` is not a request id; use the number, like 42", USAGE[verb]
        )
    return int(text)


_MENTION = re.compile(r"<@([UW][A-Z0-9]{2,})(?:\|[^>]*)?>")
_MEMBER_ID = re.compile(r"[UW][A-Z0-9]{2,}")
_OBJECT_ID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_UPN = re.compile(r"[^@\s<>|]+@[^@\s<>|]+\.[^@\s<>|]+")


def _parse_why(args: list[str]) -> WhyCommand:
    if len(args) not in (1, 2):
        raise CommandError("`why` needs a VM and, optionally, one port", USAGE["why"])
    port = None
    if len(args) == 2:
        text = args[1]
        if not text.isdigit() or not 0 <= int(text) <= 65535:
            raise CommandError(f"`{_clip(text)}` is not a port from 0 to 65535", USAGE["why"])
        port = int(text)
    return WhyCommand(args[0], port)


def _parse_admin(args: list[str]) -> AdminCommand:
    usage = USAGE["admin"]
    action = args[0].lower() if args else ""
    if action == "map" and len(args) == 3:
        return AdminMapCommand(parse_user(args[1], usage), parse_principal(args[2], usage))
    if action == "unmap" and len(args) == 2:
        return AdminUnmapCommand(parse_user(args[1], usage))
    raise CommandError("`admin` takes `map <user> <principal>` or `unmap <user>`", usage)


def parse_user(text: str, usage: str | None = None) -> str:
    """A Slack member id from ``<@U…>``, ``<@U…|name>`` or a bare ``U…``."""
    mention = _MENTION.fullmatch(text)
    if mention is not None:
        return mention[1]
    if _MEMBER_ID.fullmatch(text):
        return text
    raise CommandError(
        f"`{_clip(text)}` is not a Slack member id; use one like U0123ABCD "
        "(profile → ⋮ → Copy member ID), as `@name` reaches jitbot as plain text",
        usage,
    )


def parse_principal(text: str, usage: str | None = None) -> str:
    """An Entra ID userPrincipalName or object id, as typed (Slack may wrap an address
    in ``<mailto:…|…>``, which is unwrapped)."""
    if text.startswith("<mailto:") and text.endswith(">"):
        text = text[len("<mailto:") : -1].split("|", 1)[0]
    if _OBJECT_ID.fullmatch(text) or _UPN.fullmatch(text):
        return text
    raise CommandError(
        f"`{_clip(text)}` is neither a userPrincipalName (name@example.com) nor an object id",
        usage,
    )


def _index_of(words: list[str], keyword: str) -> int | None:
    for index, word in enumerate(words):
        if word.lower() == keyword:
            return index
    return None


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
