"""The first released schema: access_request, grant, policy_version, audit_event.

Revision ID: 0001
Revises:
Create Date: 2026-12-04 (the schema of commit 6743427)

The tables are exactly those ``SQLModel.metadata.create_all`` made in the first release,
before jitbot had migrations. :func:`first_release` is also what
:func:`jitcore.migrations.upgrade` compares an unversioned database with, to recognise
one made by that release.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def first_release() -> sa.MetaData:
    """The first release's tables, columns and indexes, frozen here for good."""
    metadata = sa.MetaData()
    sa.Table(
        "access_request",
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("team_id", sa.String(), nullable=False),
        sa.Column("requester_id", sa.String(), nullable=False),
        sa.Column("vm_name", sa.String(), nullable=False),
        sa.Column("ports", sa.String(), nullable=False),
        sa.Column("protocol", sa.String(), nullable=False),
        sa.Column("source_prefix", sa.String(), nullable=False),
        sa.Column("duration_seconds", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("policy_name", sa.String(), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("row_version", sa.Integer(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("decided_at", _utc(), nullable=True),
        sa.Column("decided_by", sa.String(), nullable=True),
        sa.Column("decision_note", sa.String(), nullable=True),
        sa.Column("opened_at", _utc(), nullable=True),
        sa.Column("ends_at", _utc(), nullable=True),
        sa.Column("closed_at", _utc(), nullable=True),
        sa.Column("approval_channel", sa.String(), nullable=True),
        sa.Column("approval_ts", sa.String(), nullable=True),
        sa.Column("failure_reason", sa.String(), nullable=True),
        sa.Column("end_reason", sa.String(), nullable=True),
        sa.Index("ix_access_request_requester_id", "requester_id"),
        sa.Index("ix_access_request_status", "status"),
        sa.Index("ix_access_request_status_ends", "status", "ends_at"),
    )
    sa.Table(
        "audit_event",
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Index("ix_audit_event_at", "at"),
        sa.Index("ix_audit_event_request_id", "request_id"),
    )
    sa.Table(
        "policy_version",
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("origin", sa.String(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Index("ix_policy_version_name", "name"),
    )
    sa.Table(
        "grant",
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("request_id", sa.Integer(), sa.ForeignKey("access_request.id"), nullable=False),
        sa.Column("nsg_id", sa.String(), nullable=False),
        sa.Column("rule_name", sa.String(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("rule", sa.JSON(), nullable=False),
        sa.Column("baseline", sa.JSON(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Index("ix_grant_request_id", "request_id"),
        sa.Index("ix_grant_state", "state"),
    )
    return metadata


def upgrade() -> None:
    first_release().create_all(op.get_bind())


def downgrade() -> None:
    first_release().drop_all(op.get_bind())
