"""``jitbot audit export``: the append-only audit log as CSV or JSON, for auditors and SIEMs."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.engine import make_url

from jitcore.db import Store
from jitcore.model import AuditEvent

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
