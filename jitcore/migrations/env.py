"""Alembic's entry point, run by :func:`jitcore.migrations.upgrade` and friends.

It migrates over the connection handed in through ``config.attributes["connection"]``,
inside the transaction (and lock) its caller holds, so no ``alembic.ini`` or database
URL is needed here.
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import jitcore.model  # noqa: F401  (registers the tables in SQLModel.metadata)
from jitcore.migrations import include_name

if context.is_offline_mode():
    raise RuntimeError("jitbot migrations run online only, over a connection it hands in")

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "no connection was handed in; run migrations through jitcore.migrations.upgrade()"
    )

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    include_name=include_name,
    render_as_batch=True,
    compare_type=True,
    # Every migration runs in the one transaction jitcore.migrations opens, on SQLite too.
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
