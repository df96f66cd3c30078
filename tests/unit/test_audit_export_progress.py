"""`jitbot audit export` shows a progress bar on a terminal and keeps the export clean."""

from __future__ import annotations

import csv
import io
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot import audit
from bot.cli import main
from jitcore.db import Store, create_schema, make_engine
from jitcore.model import AuditEvent

EVENTS = 250


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def events(count: int) -> list[AuditEvent]:
    start = datetime(2025, 3, 1, tzinfo=UTC)
    return [
        AuditEvent(
            at=start + timedelta(minutes=i),
            request_id=i,
            actor="U0REQ12345",
            action="requested",
            detail={"vm": "vm-web01", "n": i},
        )
        for i in range(1, count + 1)
    ]


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "jitbot.db"
    engine = make_engine(f"sqlite:///{path}")
    create_schema(engine)
    with Store(engine).session() as session:
        session.add_all(events(EVENTS))
        session.commit()
    engine.dispose()
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    return path


def test_on_a_terminal_the_bar_goes_to_stderr_and_the_file_stays_clean(
    database: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    output = tmp_path / "audit.csv"

    assert main(["audit", "export", "--format", "csv", "--output", str(output)]) == 0

    shown = terminal.getvalue()
    assert shown.count("\rexport [") > 10
    assert f"\rexport [{'#' * 30}] {EVENTS}/{EVENTS}\n" in shown
    assert f"{EVENTS} audit event(s) written to {output}" in shown
    text = output.read_text(encoding="utf-8")
    assert "\r" not in text and "export [" not in text
    assert len(list(csv.DictReader(io.StringIO(text)))) == EVENTS


def test_exporting_to_stdout_on_a_terminal_leaves_stdout_pure_json(
    database: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)

    assert main(["audit", "export", "--format", "json"]) == 0

    rows = json.loads(capsys.readouterr().out)
    assert [row["request_id"] for row in rows] == list(range(1, EVENTS + 1))
    assert f"{EVENTS}/{EVENTS}" in terminal.getvalue()


def test_without_a_terminal_no_bar_is_drawn(
    database: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "audit.json"

    assert main(["audit", "export", "--format", "json", "--output", str(output)]) == 0

    assert capsys.readouterr().err == f"{EVENTS} audit event(s) written to {output}\n"


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_progress_is_told_about_a_hundred_times_and_ends_at_the_total(fmt: str) -> None:
    told: list[tuple[int, int]] = []

    written = audit.write(events(EVENTS), fmt, io.StringIO(), lambda d, t: told.append((d, t)))

    assert written == EVENTS
    assert told[-1] == (EVENTS, EVENTS)
    assert [done for done, _ in told] == sorted({done for done, _ in told})
    assert 50 <= len(told) <= 126
    assert all(total == EVENTS for _, total in told)


def test_an_empty_export_still_ends_its_progress() -> None:
    told: list[tuple[int, int]] = []
    out = io.StringIO()

    assert audit.write([], "json", out, lambda done, total: told.append((done, total))) == 0

    assert told == [(0, 0)] and json.loads(out.getvalue()) == []


def test_an_export_whose_reader_goes_away_stops_quietly(database: Path) -> None:
    """``jitbot audit export | head -1``: no traceback when the pipe closes early."""
    import os
    import subprocess

    engine = make_engine(f"sqlite:///{database}")
    with Store(engine).session() as session:  # far more than a pipe's buffer holds
        session.add_all(events(5000))
        session.commit()
    engine.dispose()

    export = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "audit", "export", "--format", "csv"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "DATABASE_URL": f"sqlite:///{database}"},
    )
    assert export.stdout is not None and export.stderr is not None
    assert export.stdout.readline().startswith(b"id,at,")
    export.stdout.close()  # the reader stops after the first line
    errors = export.stderr.read().decode()
    assert export.wait(timeout=60) == 1
    assert "Traceback" not in errors and "BrokenPipeError" not in errors
