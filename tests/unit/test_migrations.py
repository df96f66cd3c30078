"""The Alembic migrations on SQLite and PostgreSQL: they build exactly the models' schema,
step back and forth without losing rows, adopt databases made before migrations, and
run once when several replicas start together."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from jitcore import migrations
from jitcore.db import create_schema, make_engine

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    made = make_engine(database_url)
    try:
        yield made
    finally:
        made.dispose()


def first_release() -> sa.MetaData:
    """The schema revision 0001 creates, as the first release's ``create_all`` made it."""
    script = ScriptDirectory.from_config(migrations.config())
    return script.get_revision(migrations.FIRST_RELEASE).module.first_release()


def differences(engine: Engine, metadata: sa.MetaData | None = None) -> list[str]:
    with engine.connect() as connection:
        return migrations.differences(connection, metadata or SQLModel.metadata)


def insert_active_grant(engine: Engine, kind: str | None = None) -> None:
    """An active request and its rule, in plain SQL: the first release's columns, plus
    ``grant.kind`` when given."""
    utc = sa.DateTime(timezone=True)
    request = sa.text(
        "INSERT INTO access_request (id, team_id, requester_id, vm_name, ports, protocol,"
        " source_prefix, duration_seconds, reason, policy_name, policy_version, status,"
        " row_version, created_at, opened_at, ends_at) VALUES (1, 'T0TEAM', 'U0REQ12345',"
        " 'vm-web01', '22', 'Tcp', '203.0.113.7/32', 3600, 'deploy', 'web-admin', 1, 'active',"
        " 3, :at, :at, :ends)"
    ).bindparams(sa.bindparam("at", type_=utc), sa.bindparam("ends", type_=utc))
    columns, values = (", kind", ", :kind") if kind else ("", "")
    grant = sa.text(
        'INSERT INTO "grant" (id, request_id, nsg_id, rule_name, priority, state, rule,'
        f" baseline, created_at, updated_at{columns}) VALUES (1, 1, '/subscriptions/s/nsg-web01',"
        f" 'jitbot-allow-r1', 999, 'present', :rule, :baseline, :at, :at{values})"
    ).bindparams(
        sa.bindparam("rule", type_=sa.JSON),
        sa.bindparam("baseline", type_=sa.JSON),
        sa.bindparam("at", type_=utc),
    )
    with engine.begin() as connection:
        connection.execute(request, {"at": NOW, "ends": NOW + timedelta(hours=1)})
        grant_values = {"rule": {"priority": 999}, "baseline": [], "at": NOW}
        connection.execute(grant, grant_values | ({"kind": kind} if kind else {}))


def rows(engine: Engine, table: str, *columns: str) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        query = f'SELECT {", ".join(columns)} FROM "{table}" ORDER BY 1'
        return [tuple(row) for row in connection.exec_driver_sql(query)]


def test_a_fresh_database_gets_exactly_the_models_schema(engine: Engine) -> None:
    create_schema(engine)

    assert migrations.current(engine) == migrations.head()
    assert differences(engine) == []


def test_create_schema_on_a_database_at_head_changes_nothing(engine: Engine) -> None:
    create_schema(engine)
    insert_active_grant(engine)

    create_schema(engine)

    assert migrations.current(engine) == migrations.head()
    assert rows(engine, "grant", "id", "state") == [(1, "present")]


def test_the_revisions_downgrade_to_the_first_release_and_upgrade_again_keeping_the_rows(
    engine: Engine,
) -> None:
    create_schema(engine)
    insert_active_grant(engine)

    migrations.downgrade(engine, migrations.FIRST_RELEASE)

    assert migrations.current(engine) == migrations.FIRST_RELEASE
    assert differences(engine, first_release()) == []
    assert rows(engine, "grant", "id", "request_id", "state") == [(1, 1, "present")]

    migrations.upgrade(engine)

    assert migrations.current(engine) == migrations.head()
    assert differences(engine) == []
    assert rows(engine, "grant", "id", "kind", "state") == [(1, "nsg", "present")]
    assert rows(engine, "access_request", "id", "status", "lease_owner") == [(1, "active", None)]


def test_the_request_forms_revision_downgrades_and_upgrades_keeping_requests(
    engine: Engine,
) -> None:
    create_schema(engine)
    insert_active_grant(engine)

    migrations.downgrade(engine, "0003")

    assert migrations.current(engine) == "0003"
    assert "group_id" not in {c["name"] for c in sa.inspect(engine).get_columns("access_request")}
    migrations.upgrade(engine)
    assert differences(engine) == []
    assert rows(engine, "access_request", "id", "status", "group_id") == [(1, "active", None)]


def test_the_notification_steps_revision_downgrades_and_upgrades_keeping_notices(
    engine: Engine,
) -> None:
    create_schema(engine)
    insert_active_grant(engine)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO notification (request_id, event, args, created_at, attempts)"
                " VALUES (1, 'request_granted', '{}', :at, 0)"
            ).bindparams(sa.bindparam("at", type_=sa.DateTime(timezone=True))),
            {"at": NOW},
        )

    migrations.downgrade(engine, "-1")

    assert migrations.current(engine) == "0004"
    assert "steps_done" not in {c["name"] for c in sa.inspect(engine).get_columns("notification")}
    migrations.upgrade(engine)
    assert differences(engine) == []
    assert rows(engine, "notification", "id", "event", "steps_done") == [
        (1, "request_granted", None)
    ]


def test_a_database_made_by_the_first_release_is_stamped_then_upgraded(engine: Engine) -> None:
    first_release().create_all(engine)
    insert_active_grant(engine)

    create_schema(engine)

    assert migrations.current(engine) == migrations.head()
    assert differences(engine) == []
    assert rows(engine, "grant", "id", "kind", "state") == [(1, "nsg", "present")]


def test_a_database_made_at_head_before_migrations_is_only_stamped(engine: Engine) -> None:
    SQLModel.metadata.create_all(engine)
    insert_active_grant(engine, kind="dnat")

    create_schema(engine)

    assert migrations.current(engine) == migrations.head()
    assert rows(engine, "grant", "id", "kind", "state") == [(1, "dnat", "present")]


def test_a_database_matching_no_release_is_refused_and_left_as_it_was(engine: Engine) -> None:
    schema = first_release()
    schema.remove(schema.tables["audit_event"])
    schema.create_all(engine)

    with pytest.raises(migrations.UnknownSchema) as raised:
        create_schema(engine)

    assert "add_table audit_event" in raised.value.found
    assert "alembic_version" in str(raised.value)
    assert migrations.current(engine) is None
    assert "protection" not in sa.inspect(engine).get_table_names()


def test_tables_of_others_in_the_database_are_left_alone(engine: Engine) -> None:
    other = sa.Table("other_app", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
    other.create(engine)
    try:
        create_schema(engine)

        assert migrations.current(engine) == migrations.head()
        assert differences(engine) == []
        assert "other_app" in sa.inspect(engine).get_table_names()
    finally:
        other.drop(engine)


def test_replicas_starting_together_migrate_once(database_url: str) -> None:
    replicas = 4
    engines = [make_engine(database_url) for _ in range(replicas)]
    start = threading.Barrier(replicas)
    errors: list[BaseException] = []

    def start_replica(engine: Engine) -> None:
        start.wait()
        try:
            create_schema(engine)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start_replica, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    try:
        assert errors == []
        assert migrations.current(engines[0]) == migrations.head()
        assert rows(engines[0], "alembic_version", "version_num") == [(migrations.head(),)]
        assert differences(engines[0]) == []
    finally:
        for engine in engines:
            engine.dispose()


def test_the_approval_revision_downgrades_and_upgrades_again_keeping_the_requests(
    engine: Engine,
) -> None:
    create_schema(engine)
    insert_active_grant(engine)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO approval (request_id, approver_id, kind, at)"
                " VALUES (1, 'U0APPROVR1', 'user', :at)"
            ).bindparams(sa.bindparam("at", type_=sa.DateTime(timezone=True))),
            {"at": NOW},
        )

    migrations.downgrade(engine, "0002")

    assert "approval" not in sa.inspect(engine).get_table_names()
    assert rows(engine, "access_request", "id", "status") == [(1, "active")]

    migrations.upgrade(engine)

    assert differences(engine) == []
    assert rows(engine, "access_request", "id", "reminded_at") == [(1, None)]
    assert rows(engine, "approval", "request_id") == []
