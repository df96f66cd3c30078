"""What the engine tells the outside world. The bot implements this for Slack."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from jitcore.model import AccessRequest, Grant

log = logging.getLogger(__name__)


class DeliverySteps:
    """The messages one notification sends, each sent at most once across redeliveries.

    A notifier method may send several messages (a DM, a post in the approval thread).
    When the process dies after some of them, the notification is delivered again; the
    steps recorded as done are skipped then. Steps are named by kind and order within the
    delivery (``dm#1``), so the same notifier code names them the same way every time.
    """

    def __init__(self, done: set[str], record: Callable[[str], object]) -> None:
        self._done = set(done)
        self._record = record
        self._counts: dict[str, int] = {}

    def once(self, kind: str, send: Callable[[], object]) -> None:
        """Run ``send`` unless this step was done by an earlier delivery; then record it.

        A failure to record is logged and not raised: the message is out, and failing
        the notification for it would only send it again.
        """
        self._counts[kind] = self._counts.get(kind, 0) + 1
        step = f"{kind}#{self._counts[kind]}"
        if step in self._done:
            log.info("skipping %s: sent by an earlier delivery", step)
            return
        send()
        self._done.add(step)
        try:
            self._record(step)
        except Exception as exc:
            log.warning("could not record that %s was sent: %s", step, type(exc).__name__)


current_delivery: ContextVar[DeliverySteps | None] = ContextVar("current_delivery", default=None)
"""The steps of the notification being delivered in this thread, if any."""


def send_once(kind: str, send: Callable[[], object]) -> None:
    """Send through the current delivery's steps (see DeliverySteps), or simply send when
    no notification is being delivered."""
    steps = current_delivery.get()
    if steps is None:
        send()
    else:
        steps.once(kind, send)


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
