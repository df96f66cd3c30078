"""Requests for several VMs at once, saved source addresses and one-time source links.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

``access_request.group_id`` is nullable: existing requests each stand alone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("access_request") as batch_op:
        batch_op.add_column(sa.Column("group_id", sa.String(), nullable=True))
        batch_op.create_index("ix_access_request_group_id", ["group_id"])

    op.create_table(
        "saved_source",
        sa.Column("slack_user_id", sa.String(), primary_key=True),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("set_at", _utc(), nullable=False),
    )

    op.create_table(
        "source_link",
        sa.Column("token_hash", sa.String(length=64), primary_key=True),
        sa.Column("slack_user_id", sa.String(), nullable=False),
        sa.Column("team_id", sa.String(), nullable=False),
        sa.Column("draft", sa.JSON(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("expires_at", _utc(), nullable=False),
        sa.Column("used_at", _utc(), nullable=True),
    )
    op.create_index("ix_source_link_slack_user_id", "source_link", ["slack_user_id"])


def downgrade() -> None:
    op.drop_table("source_link")
    op.drop_table("saved_source")
    with op.batch_alter_table("access_request") as batch_op:
        batch_op.drop_index("ix_access_request_group_id")
        batch_op.drop_column("group_id")
