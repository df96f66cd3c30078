"""Database tables. The database is the truth about every request and every rule jitbot owns.

All timestamps are UTC. SQLite drops time zones, so :class:`UtcDateTime` stores naive
UTC and hands back aware datetimes on every engine.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, TypeDecorator, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use UTC-aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc_column(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UtcDateTime(), nullable=nullable, index=index))


class RequestStatus(enum.StrEnum):
    """States of an access request; see ``jitcore.engine`` for the transitions."""

    PENDING = "pending"
    APPROVED = "approved"
    OPENING = "opening"
    ACTIVE = "active"
    CLOSING = "closing"
    CLOSED = "closed"
    DENIED = "denied"
    EXPIRED = "expired"
    FAILED = "failed"
    REVOKED = "revoked"


FINAL_STATUSES = frozenset(
    {
        RequestStatus.CLOSED,
        RequestStatus.DENIED,
        RequestStatus.EXPIRED,
        RequestStatus.FAILED,
        RequestStatus.REVOKED,
    }
)


class GrantState(enum.StrEnum):
    """Life of one rule jitbot writes. Each state is stored before the cloud call it names."""

    CREATING = "creating"
    PRESENT = "present"
    REMOVING = "removing"
    REMOVED = "removed"


class PolicyVersion(SQLModel, table=True):
    __tablename__ = "policy_version"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    version: int
    body: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    origin: str
    created_at: datetime | None = _utc_column(nullable=False)


class AccessRequest(SQLModel, table=True):
    __tablename__ = "access_request"
    __table_args__ = (Index("ix_access_request_status_ends", "status", "ends_at"),)

    id: int | None = Field(default=None, primary_key=True)
    team_id: str
    requester_id: str = Field(index=True)
    vm_name: str
    ports: str
    protocol: str = "Tcp"
    source_prefix: str
    duration_seconds: int
    reason: str = ""
    policy_name: str
    policy_version: int
    status: str = Field(default=RequestStatus.PENDING, index=True)
    row_version: int = 0
    created_at: datetime | None = _utc_column(nullable=False)
    decided_at: datetime | None = _utc_column()
    decided_by: str | None = None
    decision_note: str | None = None
    opened_at: datetime | None = _utc_column()
    ends_at: datetime | None = _utc_column()
    closed_at: datetime | None = _utc_column()
    approval_channel: str | None = None
    approval_ts: str | None = None
    failure_reason: str | None = None
    end_reason: str | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = _utc_column()
    group_id: str | None = Field(default=None, index=True)
    """Shared by the requests one ``/jit request`` made for several VMs (one per VM)."""
    reminded_at: datetime | None = _utc_column()

    @property
    def port_list(self) -> list[int]:
        return [int(p) for p in self.ports.split(",") if p]


class Approval(SQLModel, table=True):
    """One approval counted towards a request: by a person, or by an auto-approval rule
    (``approver_id`` "auto:<rule name>", ``kind`` "auto").

    The unique pair (request, approver) is what makes a second click of the same
    approver count once, whichever replica receives it.
    """

    __tablename__ = "approval"
    __table_args__ = (UniqueConstraint("request_id", "approver_id", name="uq_approval_approver"),)

    id: int | None = Field(default=None, primary_key=True)
    request_id: int = Field(foreign_key="access_request.id", index=True)
    approver_id: str
    kind: str = "user"
    at: datetime | None = _utc_column(nullable=False, index=True)


class Grant(SQLModel, table=True):
    """One rule jitbot owns, for one request: a security rule in an NSG (``kind`` "nsg",
    ``nsg_id`` the NSG) or a DNAT rule on an Azure Firewall (``kind`` "dnat", ``nsg_id`` the
    firewall).

    ``rule`` is the rule body jitbot writes; ``baseline`` is the NSG's custom rules as
    they were just before the rule was added, used to prove the restore at the end.
    """

    __tablename__ = "grant"

    id: int | None = Field(default=None, primary_key=True)
    request_id: int = Field(foreign_key="access_request.id", index=True)
    nsg_id: str
    rule_name: str
    priority: int
    kind: str = "nsg"
    state: str = Field(default=GrantState.CREATING, index=True)
    rule: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    baseline: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime | None = _utc_column(nullable=False)
    updated_at: datetime | None = _utc_column(nullable=False)
    last_error: str | None = None


class AuditEvent(SQLModel, table=True):
    """Append-only record of everything that happened. Never updated, never deleted."""

    __tablename__ = "audit_event"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime | None = _utc_column(nullable=False, index=True)
    request_id: int | None = Field(default=None, index=True)
    actor: str
    action: str
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Protection(SQLModel, table=True):
    """A JIT deny rule jitbot owns in one NSG, protecting a VM's ports."""

    __tablename__ = "protection"

    id: int | None = Field(default=None, primary_key=True)
    vm_name: str = Field(index=True)
    nsg_id: str
    rule_name: str
    priority: int
    ports: str
    state: str = Field(default=GrantState.CREATING, index=True)
    rule: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime | None = _utc_column(nullable=False)
    updated_at: datetime | None = _utc_column(nullable=False)


class Notification(SQLModel, table=True):
    """An event to tell people about, stored in the same transaction as the state change
    it reports, and delivered from here (at least once) even if the process dies first."""

    __tablename__ = "notification"

    id: int | None = Field(default=None, primary_key=True)
    request_id: int = Field(index=True)
    event: str
    args: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime | None = _utc_column(nullable=False)
    sent_at: datetime | None = _utc_column(index=True)
    claimed_by: str | None = None
    claimed_until: datetime | None = _utc_column()
    attempts: int = 0
    last_error: str | None = None
    steps_done: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    """The messages of this notification already sent (``dm#1``, ``thread#1``…), so that a
    redelivery after a crash mid-way does not send them again."""


class PrincipalMapping(SQLModel, table=True):
    """An admin's word on who a Slack user is in Entra ID (``/jit admin map``).

    ``target`` is what the admin typed, a userPrincipalName or an object id; it is looked
    up again whenever the cached ``Principal`` runs out.
    """

    __tablename__ = "principal_mapping"

    slack_user_id: str = Field(primary_key=True)
    target: str
    set_by: str
    set_at: datetime | None = _utc_column(nullable=False)


class Principal(SQLModel, table=True):
    """The Entra ID user a Slack user was last resolved to, how, and when (a cache)."""

    __tablename__ = "principal"

    slack_user_id: str = Field(primary_key=True)
    object_id: str = Field(index=True)
    upn: str
    source: str  # "admin" | "policy" | "email"
    resolved_at: datetime | None = _utc_column(nullable=False)


class SeenSignature(SQLModel, table=True):
    """Signatures of Slack requests already handled, kept for the 5-minute replay window."""

    __tablename__ = "seen_signature"

    signature: str = Field(primary_key=True, max_length=80)
    seen_at: datetime | None = _utc_column(nullable=False, index=True)


class SavedSource(SQLModel, table=True):
    """A user's default source address (``/jit source set``), used when a request names
    none. Checked against the policy of each request, not only when saved."""

    __tablename__ = "saved_source"

    slack_user_id: str = Field(primary_key=True)
    source: str
    set_at: datetime | None = _utc_column(nullable=False)


class SourceLink(SQLModel, table=True):
    """A one-time "use my current IP" link: the request waiting for its source address.

    Only the SHA-256 of the link's token is stored. ``draft`` holds what was asked (VMs,
    ports, duration, reason); the request is recorded when the link is used, once.
    """

    __tablename__ = "source_link"

    token_hash: str = Field(primary_key=True, max_length=64)
    slack_user_id: str = Field(index=True)
    team_id: str
    draft: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime | None = _utc_column(nullable=False)
    expires_at: datetime | None = _utc_column(nullable=False)
    used_at: datetime | None = _utc_column()
