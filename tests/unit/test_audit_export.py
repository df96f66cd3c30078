"""`jitbot audit export`: the audit log as CSV or JSON, optionally from a point in time."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.cli import main
from jitcore.db import Store, create_schema, make_engine
from jitcore.model import AuditEvent


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "jitbot.db"
    engine = make_engine(f"sqlite:///{path}")
    create_schema(engine)
    with Store(engine).session() as session:
        session.add_all(
            [
                AuditEvent(
                    at=datetime(2025, 1, 30, 23, 59, tzinfo=UTC),
                    request_id=1,
                    actor="U0REQ12345",
                    action="requested",
                    detail={"vm": "vm-web01", "reason": 'fix, "quoted"'},
                ),
                AuditEvent(
                    at=datetime(2025, 1, 31, 8, 0, tzinfo=UTC),
                    request_id=1,
                    actor="U0APPROVR1",
                    action="approved",
                    detail={},
                ),
                AuditEvent(
                    at=datetime(2025, 1, 31, 8, 0, 2, tzinfo=UTC),
                    request_id=1,
                    actor="jitbot",
                    action="rule_created",
                    detail={"rule": "jitbot-allow-r1", "priority": 999},
                ),
            ]
        )
        session.commit()
    engine.dispose()
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    return path


def test_csv_export_writes_every_event_with_detail_as_json(
    database: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "export", "--format", "csv"]) == 0

    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["action"] for row in rows] == ["requested", "approved", "rule_created"]
    assert rows[0]["at"] == "2025-01-30T23:59:00+00:00"
    assert rows[0]["request_id"] == "1"
    assert json.loads(rows[0]["detail"]) == {"vm": "vm-web01", "reason": 'fix, "quoted"'}


def test_json_export_since_a_time_goes_to_a_file(
    database: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "audit.json"

    code = main(
        ["audit", "export", "--format", "json", "--since", "2025-01-31", "--output", str(output)]
    )

    assert code == 0
    events = json.loads(output.read_text(encoding="utf-8"))
    assert [e["action"] for e in events] == ["approved", "rule_created"]
    assert events[1]["detail"] == {"rule": "jitbot-allow-r1", "priority": 999}
    assert "2 audit event(s) written" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("since", "count"),
    [
        pytest.param("2025-01-31T08:00:01Z", 1, id="utc-designator"),
        pytest.param("2025-01-31T09:00:00+01:00", 2, id="offset"),
        pytest.param("2025-01-31T08:00:00", 2, id="naive-is-utc"),
    ],
)
def test_since_accepts_iso_times_with_or_without_a_zone(
    database: Path, capsys: pytest.CaptureFixture[str], since: str, count: int
) -> None:
    assert main(["audit", "export", "--format", "json", "--since", since]) == 0

    assert len(json.loads(capsys.readouterr().out)) == count


def test_a_bad_since_is_refused_with_an_example(
    database: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "export", "--since", "yesterday"]) == 2

    assert "e.g. 2025-01-31" in capsys.readouterr().err


def test_a_missing_sqlite_database_is_reported_not_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{missing}")

    assert main(["audit", "export"]) == 1

    assert f"there is no database at {missing}" in capsys.readouterr().err
    assert not missing.exists()
