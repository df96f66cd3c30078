"""Request leases, firewall grants, protection, the notification outbox, principals and
seen signatures.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 (the schema of commit 8e24b44)

Existing rows keep working: every new ``access_request`` column is nullable (no lease),
and ``grant.kind`` is filled with "nsg", the only kind the first release wrote.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("access_request") as batch_op:
        batch_op.add_column(sa.Column("lease_owner", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("lease_until", _utc(), nullable=True))

    with op.batch_alter_table("grant") as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(), nullable=False, server_default="nsg"))

    op.create_table(
        "protection",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("vm_name", sa.String(), nullable=False),
        sa.Column("nsg_id", sa.String(), nullable=False),
        sa.Column("rule_name", sa.String(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("ports", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("rule", sa.JSON(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
    )
    op.create_index("ix_protection_state", "protection", ["state"])
    op.create_index("ix_protection_vm_name", "protection", ["vm_name"])

    op.create_table(
        "notification",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("sent_at", _utc(), nullable=True),
        sa.Column("claimed_by", sa.String(), nullable=True),
        sa.Column("claimed_until", _utc(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(), nullable=True),
    )
    op.create_index("ix_notification_request_id", "notification", ["request_id"])
    op.create_index("ix_notification_sent_at", "notification", ["sent_at"])

    op.create_table(
        "principal_mapping",
        sa.Column("slack_user_id", sa.String(), primary_key=True),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("set_by", sa.String(), nullable=False),
        sa.Column("set_at", _utc(), nullable=False),
    )

    op.create_table(
        "principal",
        sa.Column("slack_user_id", sa.String(), primary_key=True),
        sa.Column("object_id", sa.String(), nullable=False),
        sa.Column("upn", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("resolved_at", _utc(), nullable=False),
    )
    op.create_index("ix_principal_object_id", "principal", ["object_id"])

    op.create_table(
        "seen_signature",
        sa.Column("signature", sa.String(length=80), primary_key=True),
        sa.Column("seen_at", _utc(), nullable=False),
    )
    op.create_index("ix_seen_signature_seen_at", "seen_signature", ["seen_at"])


def downgrade() -> None:
    op.drop_table("seen_signature")
    op.drop_table("principal")
    op.drop_table("principal_mapping")
    op.drop_table("notification")
    op.drop_table("protection")

    with op.batch_alter_table("grant") as batch_op:
        batch_op.drop_column("kind")

    with op.batch_alter_table("access_request") as batch_op:
        batch_op.drop_column("lease_until")
        batch_op.drop_column("lease_owner")
