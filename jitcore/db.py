"""Database engine, sessions, and the compare-and-set transitions of a request."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import delete, event, func, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, create_engine, select

from jitcore.model import (
    AccessRequest,
    Approval,
    AuditEvent,
    Notification,
    PolicyVersion,
    RequestStatus,
    SeenSignature,
    utcnow,
)

log = logging.getLogger(__name__)

SYSTEM_ACTOR = "jitbot"
AUDIT_LINE_EVENT = "audit_line"
AUDIT_CHANNEL_ACTIONS = frozenset(
    {
        "requested",
        "approval_recorded",
        "approved",
        "auto_approved",
        "denied",
        "opened",
        "extended",
        "expiry_warned",
        "closed",
        "failed",
        "reminded",
        "expired_unapproved",
    }
)
"""Audit actions that are lifecycle events of a request, told to the audit channel."""


def make_engine(url: str) -> Engine:
    """An engine for SQLite or PostgreSQL, with the settings each needs for many threads."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout=30000")
            _set_wal(cursor)
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def _set_wal(cursor: Any) -> None:
    """Switch a SQLite file to write-ahead logging, so readers do not block the writer.

    Switching needs a moment alone with the file, and SQLite does not wait for it the way
    it waits for other locks, so processes starting together retry briefly.
    """
    for _ in range(100):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(0.05)
    cursor.execute("PRAGMA journal_mode=WAL")


def create_schema(engine: Engine) -> None:
    """Bring the database to the current schema by running the migrations (see
    ``jitcore.migrations``): a fresh database gets every revision, an older one the
    revisions it lacks, and one made before migrations is recognised and adopted."""
    from jitcore.migrations import upgrade

    upgrade(engine)


class Store:
    """Short transactions over the database; each method opens and commits its own."""

    def __init__(self, engine: Engine, audit_feed: bool = False) -> None:
        self.engine = engine
        self.audit_feed = audit_feed
        """Queue an audit-channel line with every lifecycle audit record (see
        :func:`_queue_audit_lines`)."""

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            if self.audit_feed:
                event.listen(session, "before_flush", _queue_audit_lines)
            yield session

    def get_request(self, request_id: int) -> AccessRequest | None:
        with self.session() as session:
            return session.get(AccessRequest, request_id)

    def transition(
        self,
        request_id: int,
        from_statuses: tuple[str, ...],
        to_status: str,
        notify: tuple[str, dict[str, Any]] | None = None,
        audit: tuple[str, str, dict[str, Any]] | None = None,
        **values: Any,
    ) -> bool:
        """Move a request to ``to_status`` only if it is in one of ``from_statuses``.

        The check and the write are one UPDATE, so of two concurrent callers (a double
        click, a Slack retry, a second replica) exactly one wins. ``notify`` (an event and
        its arguments) is queued in the same transaction, so a state change is never
        recorded without the news of it; ``audit`` (action, actor, detail) likewise, so the
        audit log holds exactly the transitions that happened.
        """
        statement = (
            update(AccessRequest)
            .where(col(AccessRequest.id) == request_id)
            .where(col(AccessRequest.status).in_(from_statuses))
            .values(status=to_status, row_version=AccessRequest.row_version + 1, **values)
        )
        with self.session() as session:
            result = session.execute(statement)
            moved = bool(result.rowcount == 1)  # type: ignore[attr-defined]
            if moved and notify is not None:
                session.add(self.notification(request_id, *notify))
            if moved and audit is not None:
                action, actor, detail = audit
                session.add(
                    AuditEvent(
                        at=utcnow(),
                        request_id=request_id,
                        actor=actor,
                        action=action,
                        detail=detail,
                    )
                )
            session.commit()
            return moved

    @staticmethod
    def notification(request_id: int, event: str, args: dict[str, Any]) -> Notification:
        return Notification(request_id=request_id, event=event, args=args, created_at=utcnow())

    def pending_notifications(self, request_id: int | None = None) -> list[Notification]:
        with self.session() as session:
            query = select(Notification).where(col(Notification.sent_at).is_(None))
            if request_id is not None:
                query = query.where(Notification.request_id == request_id)
            return list(session.exec(query.order_by(col(Notification.id))))

    def claim_notification(
        self, notification_id: int, owner: str, now: datetime, until: datetime
    ) -> bool:
        """Take a notification to deliver; of several workers, one gets it."""
        statement = (
            update(Notification)
            .where(col(Notification.id) == notification_id)
            .where(col(Notification.sent_at).is_(None))
            .where(
                or_(
                    col(Notification.claimed_until).is_(None),
                    col(Notification.claimed_until) < now,
                )
            )
            .values(claimed_by=owner, claimed_until=until, attempts=Notification.attempts + 1)
        )
        with self.session() as session:
            result = session.execute(statement)
            session.commit()
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def finish_notification(
        self,
        notification_id: int,
        now: datetime,
        error: str | None = None,
        give_up: bool = False,
        owner: str | None = None,
    ) -> None:
        """Record a delivery: sent (or given up), or failed and free to be tried again.

        With ``owner``, only while that worker still holds the claim (a late record must
        not free a notification another worker has claimed since)."""
        values: dict[str, Any] = {"last_error": error, "claimed_until": None}
        if error is None or give_up:
            values["sent_at"] = now
        statement = update(Notification).where(col(Notification.id) == notification_id)
        if owner is not None:
            statement = statement.where(col(Notification.claimed_by) == owner)
        with self.session() as session:
            session.execute(statement.values(**values))
            session.commit()

    def record_notification_step(self, notification_id: int, owner: str, step: str) -> bool:
        """Note that ``step`` of a notification was sent, while ``owner`` holds its claim.
        False if another worker has claimed it since (the note is then not written)."""
        with self.session() as session:
            note = session.get(Notification, notification_id, with_for_update=True)
            if note is None or note.claimed_by != owner:
                return False
            note.steps_done = [*(note.steps_done or []), step]
            session.add(note)
            session.commit()
            return True

    def notifications(self, request_id: int) -> list[Notification]:
        with self.session() as session:
            query = select(Notification).where(Notification.request_id == request_id)
            return list(session.exec(query.order_by(col(Notification.id))))

    def take_lease(self, request_id: int, owner: str, now: datetime, until: datetime) -> bool:
        """Claim a request for one worker until ``until``, unless another holds it.

        Replicas sharing a database use this so that only one of them works on a request
        at a time; a lease left by a replica that died runs out and can be taken over.
        """
        statement = (
            update(AccessRequest)
            .where(col(AccessRequest.id) == request_id)
            .where(
                or_(
                    col(AccessRequest.lease_owner).is_(None),
                    col(AccessRequest.lease_owner) == owner,
                    col(AccessRequest.lease_until) < now,
                )
            )
            .values(lease_owner=owner, lease_until=until)
        )
        with self.session() as session:
            result = session.execute(statement)
            session.commit()
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def release_lease(self, request_id: int, owner: str) -> None:
        statement = (
            update(AccessRequest)
            .where(col(AccessRequest.id) == request_id)
            .where(col(AccessRequest.lease_owner) == owner)
            .values(lease_owner=None, lease_until=None)
        )
        with self.session() as session:
            session.execute(statement)
            session.commit()

    def first_sighting(self, signature: str, now: datetime) -> bool:
        """Record a request signature; False if it was recorded before (a replay)."""
        with self.session() as session:
            session.add(SeenSignature(signature=signature[:80], seen_at=now))
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                return False
        return True

    def forget_signatures(self, before: datetime) -> None:
        statement = delete(SeenSignature).where(col(SeenSignature.seen_at) < before)
        with self.session() as session:
            session.execute(statement)
            session.commit()

    def update_request(self, request_id: int, **values: Any) -> None:
        statement = (
            update(AccessRequest).where(col(AccessRequest.id) == request_id).values(**values)
        )
        with self.session() as session:
            session.execute(statement)
            session.commit()

    def audit(self, action: str, actor: str, request_id: int | None = None, **detail: Any) -> None:
        with self.session() as session:
            session.add(
                AuditEvent(
                    at=utcnow(), request_id=request_id, actor=actor, action=action, detail=detail
                )
            )
            session.commit()

    def audit_events(self, request_id: int | None = None) -> list[AuditEvent]:
        with self.session() as session:
            query = select(AuditEvent).order_by(col(AuditEvent.id))
            if request_id is not None:
                query = query.where(AuditEvent.request_id == request_id)
            return list(session.exec(query))

    # -- approvals -----------------------------------------------------------------------

    def add_approval(
        self,
        request_id: int,
        approver_id: str,
        kind: str,
        now: datetime,
        required: int,
        partial: tuple[str, dict[str, Any]] | None = None,
    ) -> tuple[Approval, int] | None:
        """Count one approval; None if this approver was already counted for the request.

        Returns the row and how many approvals the request has, as seen inside the
        transaction. When that is still below ``required``, ``partial`` (a notification
        event and its arguments) is queued with an ``approval_recorded`` audit record in
        the same transaction, so the approval is never stored without the news of it.
        """
        with self.session() as session:
            approval = Approval(request_id=request_id, approver_id=approver_id, kind=kind, at=now)
            session.add(approval)
            try:
                session.flush()
            except IntegrityError:
                session.rollback()
                return None
            count = self._approval_count(session, request_id)
            if count < required and partial is not None:
                event_name, args = partial
                session.add(self.notification(request_id, event_name, args))
                session.add(
                    AuditEvent(
                        at=now,
                        request_id=request_id,
                        actor=approver_id,
                        action="approval_recorded",
                        detail={"approvals": f"{count}/{required}"},
                    )
                )
            session.commit()
            return approval, count

    @staticmethod
    def _approval_count(session: Session, request_id: int) -> int:
        query = select(func.count()).select_from(Approval).where(Approval.request_id == request_id)
        return int(session.exec(query).one())

    def approvals(self, request_id: int) -> list[Approval]:
        with self.session() as session:
            query = select(Approval).where(Approval.request_id == request_id)
            return list(session.exec(query.order_by(col(Approval.id))))

    def remove_approval(self, approval_id: int) -> None:
        """Take back an approval that did not take effect (the request moved on)."""
        with self.session() as session:
            session.execute(delete(Approval).where(col(Approval.id) == approval_id))
            session.commit()

    def auto_approvals_until(
        self, approval: Approval, requester_id: str, policy_name: str, since: datetime
    ) -> int:
        """How many approvals by ``approval``'s rule the requester got since ``since``,
        counting only rows up to this one: of racing requests, the earlier rows win."""
        query = (
            select(func.count())
            .select_from(Approval)
            .join(AccessRequest, col(AccessRequest.id) == col(Approval.request_id))
            .where(Approval.approver_id == approval.approver_id)
            .where(Approval.kind == "auto")
            .where(AccessRequest.requester_id == requester_id)
            .where(AccessRequest.policy_name == policy_name)
            .where(col(Approval.at) >= since)
            .where(col(Approval.id) <= approval.id)
        )
        with self.session() as session:
            return int(session.exec(query).one())

    def mark_reminded(
        self, request_id: int, now: datetime, notify: tuple[str, dict[str, Any]]
    ) -> bool:
        """Record that a pending request's approvers were reminded, once: a compare-and-set
        on ``reminded_at``, with the notice and the audit record in the same transaction."""
        statement = (
            update(AccessRequest)
            .where(col(AccessRequest.id) == request_id)
            .where(col(AccessRequest.status) == RequestStatus.PENDING)
            .where(col(AccessRequest.reminded_at).is_(None))
            .values(reminded_at=now)
        )
        with self.session() as session:
            if session.execute(statement).rowcount != 1:  # type: ignore[attr-defined]
                session.rollback()
                return False
            session.add(self.notification(request_id, *notify))
            session.add(
                AuditEvent(
                    at=now,
                    request_id=request_id,
                    actor=SYSTEM_ACTOR,
                    action="reminded",
                    detail=dict(notify[1]),
                )
            )
            session.commit()
            return True

    def requests_with_status(
        self, statuses: tuple[str, ...], ends_before: datetime | None = None
    ) -> list[AccessRequest]:
        with self.session() as session:
            query = select(AccessRequest).where(col(AccessRequest.status).in_(statuses))
            if ends_before is not None:
                query = query.where(col(AccessRequest.ends_at) <= ends_before)
            return list(session.exec(query.order_by(col(AccessRequest.id))))

    def save_policy_versions(
        self, bodies: dict[str, dict[str, Any]], origin: str
    ) -> dict[str, int]:
        """Store each policy body that differs from its latest version; return the versions."""
        versions: dict[str, int] = {}
        with self.session() as session:
            for name, body in bodies.items():
                latest = session.exec(
                    select(PolicyVersion)
                    .where(PolicyVersion.name == name)
                    .order_by(col(PolicyVersion.version).desc())
                ).first()
                if latest is not None and latest.body == body:
                    versions[name] = latest.version
                    continue
                version = (latest.version + 1) if latest else 1
                session.add(
                    PolicyVersion(
                        name=name, version=version, body=body, origin=origin, created_at=utcnow()
                    )
                )
                versions[name] = version
            session.commit()
        return versions


def _queue_audit_lines(session: Session, _context: Any, _instances: Any) -> None:
    """Queue an audit-channel line for each new lifecycle audit record being flushed.

    It runs inside the flush, so the line is stored in the same transaction as the
    record (and the state change it belongs to), and is delivered through the
    notification outbox like every other message: retried when Slack fails.
    """
    for item in list(session.new):
        if not isinstance(item, AuditEvent) or item.request_id is None:
            continue
        if item.action not in AUDIT_CHANNEL_ACTIONS:
            continue
        args = {"action": item.action, "actor": item.actor, "detail": dict(item.detail or {})}
        session.add(Store.notification(item.request_id, AUDIT_LINE_EVENT, args))
