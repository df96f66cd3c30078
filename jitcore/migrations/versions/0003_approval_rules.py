"""Approvals counted per request, and when a pending request's approvers were reminded.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

Existing requests keep working: ``reminded_at`` is nullable (not reminded), and a request
decided before this revision simply has no approval rows.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("access_request") as batch_op:
        batch_op.add_column(sa.Column("reminded_at", sa.DateTime(timezone=True), nullable=True))

    op.create_table(
        "approval",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("approver_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["request_id"], ["access_request.id"]),
        sa.UniqueConstraint("request_id", "approver_id", name="uq_approval_approver"),
    )
    op.create_index("ix_approval_request_id", "approval", ["request_id"])
    op.create_index("ix_approval_at", "approval", ["at"])


def downgrade() -> None:
    op.drop_index("ix_approval_at", table_name="approval")
    op.drop_index("ix_approval_request_id", table_name="approval")
    op.drop_table("approval")
    with op.batch_alter_table("access_request") as batch_op:
        batch_op.drop_column("reminded_at")
