"""Which messages of a notification were already sent, so a redelivery skips them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

``notification.steps_done`` is nullable: a notification queued before this revision has
no steps recorded and is delivered in full, as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notification") as batch_op:
        batch_op.add_column(sa.Column("steps_done", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notification") as batch_op:
        batch_op.drop_column("steps_done")
