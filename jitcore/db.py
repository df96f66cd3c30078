"""Database engine, sessions, and the compare-and-set transitions of a request."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import event, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, create_engine, select

from jitcore.model import AccessRequest, AuditEvent, PolicyVersion, utcnow

log = logging.getLogger(__name__)


def make_engine(url: str) -> Engine:
    """An engine for SQLite or PostgreSQL, with the settings each needs for many threads."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def create_schema(engine: Engine) -> None:
    SQLModel.metadata.create_all(engine)


class Store:
    """Short transactions over the database; each method opens and commits its own."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def get_request(self, request_id: int) -> AccessRequest | None:
        with self.session() as session:
            return session.get(AccessRequest, request_id)

    def transition(
        self, request_id: int, from_statuses: tuple[str, ...], to_status: str, **values: Any
    ) -> bool:
        """Move a request to ``to_status`` only if it is in one of ``from_statuses``.

        The check and the write are one UPDATE, so of two concurrent callers (a double
        click, a Slack retry, a second replica) exactly one wins.
        """
        statement = (
            update(AccessRequest)
            .where(col(AccessRequest.id) == request_id)
            .where(col(AccessRequest.status).in_(from_statuses))
            .values(status=to_status, row_version=AccessRequest.row_version + 1, **values)
        )
        with self.session() as session:
            result = session.execute(statement)
            session.commit()
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

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
