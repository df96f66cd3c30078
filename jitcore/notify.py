"""What the engine tells the outside world. The bot implements this for Slack."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from jitcore.model import AccessRequest, Grant


@dataclass(frozen=True)
class RestoreReport:
    """How an NSG looked after jitbot removed its rules for a request.

    ``restored`` is true when every NSG holds exactly the custom rules it held before the
    grant. ``changes_by_others`` lists what differs because someone else edited the NSG
    meanwhile; jitbot reports it and leaves it alone.
    """

    restored: bool
    nsgs: tuple[str, ...] = ()
    changes_by_others: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "restored": self.restored,
            "nsgs": list(self.nsgs),
            "changes_by_others": list(self.changes_by_others),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RestoreReport:
        return cls(
            restored=bool(data.get("restored", False)),
            nsgs=tuple(data.get("nsgs", ())),
            changes_by_others=tuple(data.get("changes_by_others", ())),
        )


@dataclass(frozen=True)
class Posted:
    """Where the approval message was posted, so later events can update and thread it."""

    channel: str
    ts: str


class Notifier(Protocol):
    def request_submitted(self, request: AccessRequest) -> Posted | None: ...

    def request_approved(self, request: AccessRequest) -> None: ...

    def request_denied(self, request: AccessRequest) -> None: ...

    def request_granted(self, request: AccessRequest, grants: list[Grant]) -> None: ...

    def request_failed(self, request: AccessRequest, reason: str) -> None: ...

    def request_closed(self, request: AccessRequest, report: RestoreReport) -> None: ...

    def request_expired_unapproved(self, request: AccessRequest) -> None: ...

    def request_extended(self, request: AccessRequest, args: dict[str, Any]) -> None: ...

    def request_expiring(self, request: AccessRequest, args: dict[str, Any]) -> None: ...

    def defender_closed(self, request: AccessRequest, args: dict[str, Any]) -> None: ...

    def defender_end_pending(self, request: AccessRequest, args: dict[str, Any]) -> None: ...

    def request_partly_approved(self, request: AccessRequest, args: dict[str, Any]) -> None: ...

    def request_auto_approved(self, request: AccessRequest, rule: str) -> Posted | None: ...

    def request_reminded(self, request: AccessRequest, args: dict[str, Any]) -> None: ...

    def audit_line(self, request: AccessRequest, args: dict[str, Any]) -> None: ...


class NullNotifier:
    """Tells nobody; for tools and tests that only care about the cloud side."""

    def request_submitted(self, request: AccessRequest) -> Posted | None:
        return None

    def request_approved(self, request: AccessRequest) -> None:
        return None

    def request_denied(self, request: AccessRequest) -> None:
        return None

    def request_granted(self, request: AccessRequest, grants: list[Grant]) -> None:
        return None

    def request_failed(self, request: AccessRequest, reason: str) -> None:
        return None

    def request_closed(self, request: AccessRequest, report: RestoreReport) -> None:
        return None

    def request_expired_unapproved(self, request: AccessRequest) -> None:
        return None

    def request_extended(self, request: AccessRequest, args: dict[str, Any]) -> None:
        return None

    def request_expiring(self, request: AccessRequest, args: dict[str, Any]) -> None:
        return None

    def defender_closed(self, request: AccessRequest, args: dict[str, Any]) -> None:
        return None

    def defender_end_pending(self, request: AccessRequest, args: dict[str, Any]) -> None:
        return None

    def request_partly_approved(self, request: AccessRequest, args: dict[str, Any]) -> None:
        return None

    def request_auto_approved(self, request: AccessRequest, rule: str) -> Posted | None:
        return None

    def request_reminded(self, request: AccessRequest, args: dict[str, Any]) -> None:
        return None

    def audit_line(self, request: AccessRequest, args: dict[str, Any]) -> None:
        return None
