"""The append-only audit log, read back: ``jitbot audit export`` (CSV or JSON, for auditors
and SIEMs) and ``/jit audit`` (recent events of a VM or a user, in chat)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.engine import make_url
from sqlmodel import col, select

from jitcore.db import Store
from jitcore.model import AccessRequest, AuditEvent

FIELDS = ("id", "at", "request_id", "actor", "action", "detail")
FORMATS = ("csv", "json")


def parse_since(text: str) -> datetime:
    """An ISO 8601 date or time; without a zone it is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {text!r} is not an ISO 8601 date or time, e.g. 2025-01-31 or "
            "2025-01-31T08:00:00Z"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def missing_sqlite_file(database_url: str) -> Path | None:
    """The SQLite file the URL names, if it does not exist (opening it would create it)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    path = Path(url.database)
    return None if path.exists() else path


def events_since(store: Store, since: datetime | None) -> list[AuditEvent]:
    events = store.audit_events()
    if since is None:
        return events
    return [event for event in events if event.at is not None and event.at >= since]


def row(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": event.at.isoformat() if event.at else None,
        "request_id": event.request_id,
        "actor": event.actor,
        "action": event.action,
        "detail": event.detail,
    }


def write(
    events: Iterable[AuditEvent],
    fmt: str,
    out: TextIO,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write ``events`` to ``out`` in ``fmt``; return how many were written.

    CSV holds one line per event with ``detail`` as a JSON object in its column; JSON is
    one array of objects. Times are UTC in ISO 8601. Rows are written one by one, and
    ``progress(done, total)`` is told as they go (about a hundred times in all, and once
    at the end), so a long export can show a progress bar.
    """
    rows = [row(event) for event in events]
    total = len(rows)
    step = max(1, total // 100)
    if fmt == "json":
        out.write("[" if rows else "[]")
    else:
        writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
    for done, item in enumerate(rows, start=1):
        if fmt == "json":
            text = json.dumps(item, indent=1, sort_keys=True).replace("\n", "\n ")
            out.write(("\n " if done == 1 else ",\n ") + text)
        else:
            writer.writerow({**item, "detail": json.dumps(item["detail"], sort_keys=True)})
        if progress is not None and (done % step == 0 or done == total):
            progress(done, total)
    if fmt == "json":
        out.write("\n]\n" if rows else "\n")
    if progress is not None and total == 0:
        progress(0, 0)
    return total


@dataclass(frozen=True)
class AuditEntry:
    """An audit event with what it concerns: the VM and requester of its request, or
    the VM and user its detail names (protection, mapping and scan events)."""

    event: AuditEvent
    vm_name: str | None
    requester_id: str | None


def recent_events(
    store: Store,
    since: datetime,
    vm: str | None = None,
    user_id: str | None = None,
    visible: Callable[[str | None], bool] | None = None,
) -> list[AuditEntry]:
    """Events at or after ``since``, newest first, about ``vm`` (any case) and involving
    ``user_id`` (as actor, requester or subject) when given; ``visible`` keeps only the
    events about VMs it accepts (what a non-admin approver may see)."""
    query = (
        select(AuditEvent, AccessRequest.vm_name, AccessRequest.requester_id)
        .join(AccessRequest, col(AccessRequest.id) == col(AuditEvent.request_id), isouter=True)
        .where(col(AuditEvent.at) >= since)
        .order_by(col(AuditEvent.id).desc())
    )
    with store.session() as session:
        rows = list(session.exec(query))
    entries = []
    for event, vm_name, requester_id in rows:
        detail = event.detail if isinstance(event.detail, dict) else {}
        about_vm = (
            vm_name or _text_or_none(detail.get("vm")) or _text_or_none(detail.get("vm_name"))
        )
        entry = AuditEntry(event, about_vm, requester_id)
        if vm is not None and (about_vm or "").lower() != vm.lower():
            continue
        if user_id is not None and user_id not in (
            event.actor,
            requester_id,
            detail.get("slack_user"),
        ):
            continue
        if visible is not None and not visible(about_vm):
            continue
        entries.append(entry)
    return entries


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
