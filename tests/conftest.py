from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url
from sqlmodel import SQLModel

from jitcore.db import make_engine

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test depends on the developer's JITBOT_* variables or Azure credentials."""
    keep = {"JITBOT_SHARED_DIR", "JITBOT_TEST_POSTGRES_URL"}
    for name in list(os.environ):
        if name in keep:
            continue
        if name.startswith(("JITBOT_", "AZURE_", "SLACK_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name, raising=False)


def _postgres_admin_url() -> str:
    return os.environ.get("JITBOT_TEST_POSTGRES_URL", POSTGRES_ADMIN_URL)


def _postgres_required() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("JITBOT_REQUIRE_POSTGRES") == "1"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL database for this test session.

    CI starts PostgreSQL (.ci/run) and sets CI=true: there an unreachable server fails
    the run. On a laptop without PostgreSQL these tests are skipped, saying why.
    """
    admin = make_engine(_postgres_admin_url())
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        admin.dispose()
        message = (
            f"PostgreSQL is not reachable at {make_url(_postgres_admin_url()).render_as_string()} "
            f"({type(exc).__name__}); start it or set JITBOT_TEST_POSTGRES_URL"
        )
        if _postgres_required():
            pytest.fail(message)
        pytest.skip(message)
    name = f"jitbot_test_{uuid.uuid4().hex[:10]}"
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(_postgres_admin_url()).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A fresh, empty database URL: a SQLite file, or the session's PostgreSQL database
    with its tables dropped."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'jitbot.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    _reset(engine)
    engine.dispose()
    yield url


def _reset(engine: Engine) -> None:
    import jitcore.model  # noqa: F401  (registers the tables)

    SQLModel.metadata.drop_all(engine)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
