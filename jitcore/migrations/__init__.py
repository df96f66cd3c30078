"""Schema migrations: Alembic revisions shipped inside the package and run at start.

:func:`upgrade` brings any jitbot database to the current schema (``create_schema`` in
``jitcore.db`` calls it):

- a fresh database gets every revision;
- a database made by ``create_all`` before jitbot had migrations (its tables, but no
  ``alembic_version``) is compared with the first release's schema and with the current
  one, stamped with the revision it matches, then upgraded; one matching neither is
  refused with the differences, and nothing is changed;
- a versioned database gets the revisions it lacks.

All of it is one transaction, applied entirely or not at all. Replicas starting together
take turns: on PostgreSQL through an advisory lock held until the commit, on SQLite
through its write lock (``BEGIN IMMEDIATE``). The one that waited finds the work done.

To add a revision after changing ``jitcore/model.py``, on a database at head::

    from alembic import command
    with engine.begin() as connection:
        command.revision(config(connection), "what changed", autogenerate=True, rev_id="0003")

then read it: new NOT NULL columns need a ``server_default`` so existing rows survive, and
SQLite needs ``batch_alter_table`` for anything but adding a column.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

import jitcore.model  # noqa: F401  (registers the tables in SQLModel.metadata)
from jitcore.errors import JitError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent
VERSION_TABLE = "alembic_version"
FIRST_RELEASE = "0001"

# One fixed key for pg_advisory_xact_lock: b"jitbot" as a number. Advisory locks are per
# database, so jitbot databases sharing a server do not wait for each other.
_LOCK_KEY = int.from_bytes(b"jitbot", "big")


class UnknownSchema(JitError):
    """The database has jitbot tables but no migration history, and its tables match no
    released schema, so there is no safe way to migrate it."""

    def __init__(self, found: list[str]) -> None:
        shown = "; ".join(found[:10]) + ("; …" if len(found) > 10 else "")
        super().__init__(
            "the database has jitbot tables but no alembic_version table, and they match "
            f"neither the first release's schema nor the current one ({shown}); restore a "
            "backup made by a released jitbot, or move the data to a fresh database"
        )
        self.found = found


def config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for jitbot's revisions, migrating over ``connection``."""
    alembic_config = Config()
    alembic_config.set_main_option("script_location", str(MIGRATIONS_DIR))
    alembic_config.set_main_option("path_separator", "os")
    alembic_config.attributes["connection"] = connection
    return alembic_config


def head() -> str:
    """The newest revision this jitbot knows."""
    revision = ScriptDirectory.from_config(config()).get_current_head()
    assert revision is not None
    return revision


def include_name(name: str | None, type_: str, _parent_names: Any) -> bool:
    """Compare only jitbot's tables: a shared database may hold others."""
    if type_ == "table":
        return name in SQLModel.metadata.tables
    return True


def differences(connection: Connection, metadata: sa.MetaData) -> list[str]:
    """How the database's jitbot tables differ from ``metadata``, one line each."""
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_name": include_name}
    )
    return [_describe(diff) for diff in compare_metadata(context, metadata)]


def current(engine: Engine) -> str | None:
    """The revision the database is stamped with, or None."""
    with engine.connect() as connection:
        return _stamped(connection)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision``, adopting a database made before migrations."""
    with _exclusive(engine) as connection:
        alembic_config = config(connection)
        _adopt_unversioned(connection, alembic_config)
        before = _stamped(connection)
        command.upgrade(alembic_config, revision)
        after = _stamped(connection)
        if before != after:
            log.info("database schema upgraded from %s to %s", before or "nothing", after)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the database back to ``revision`` (``"-1"`` for the one before)."""
    with _exclusive(engine) as connection:
        command.downgrade(config(connection), revision)


@contextmanager
def _exclusive(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction no other migrating process can enter at once.

    On SQLite, foreign keys are off meanwhile: rebuilding a table in batch mode drops the
    old one, which the rows of tables referring to it would otherwise forbid. The keys are
    checked before the commit instead.
    """
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        try:
            with connection.begin():
                if sqlite:
                    connection.exec_driver_sql("BEGIN IMMEDIATE")
                elif engine.dialect.name == "postgresql":
                    connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOCK_KEY)))
                yield connection
                if sqlite:
                    _check_foreign_keys(connection)
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


def _stamped(connection: Connection) -> str | None:
    if not sa.inspect(connection).has_table(VERSION_TABLE):
        return None
    return connection.scalar(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))


def _check_foreign_keys(connection: Connection) -> None:
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"the migration would leave rows with broken foreign keys: {broken}")


def _adopt_unversioned(connection: Connection, alembic_config: Config) -> None:
    """Stamp a database made by ``create_all`` before migrations with the revision it is."""
    tables = set(sa.inspect(connection).get_table_names())
    if VERSION_TABLE in tables or not tables & set(SQLModel.metadata.tables):
        return
    script = ScriptDirectory.from_config(alembic_config)
    first_release = script.get_revision(FIRST_RELEASE).module.first_release()
    found = differences(connection, SQLModel.metadata)
    if not found:
        revision = script.get_current_head()
    elif not differences(connection, first_release):
        revision = FIRST_RELEASE
    else:
        raise UnknownSchema(found)
    log.info("the database predates migrations and matches revision %s; stamping it", revision)
    command.stamp(alembic_config, revision)


def _describe(diff: Any) -> str:
    """One line for one entry of ``compare_metadata``'s answer."""
    if isinstance(diff, list):
        return "; ".join(_describe(item) for item in diff)
    action = diff[0]
    if action in ("add_table", "remove_table"):
        return f"{action} {diff[1].name}"
    if action in ("add_column", "remove_column"):
        return f"{action} {diff[2]}.{diff[3].name}"
    if action in ("add_index", "remove_index"):
        return f"{action} {diff[1].name} on {diff[1].table.name}"
    if action.startswith("modify_"):
        return f"{action} {diff[2]}.{diff[3]}: {diff[5]!r} -> {diff[6]!r}"
    return " ".join(str(part) for part in diff)
