"""What a full request/approve/expire run writes to the logs: every lifecycle step once at
INFO with its request id, and never a secret, even at DEBUG."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.logs import JsonFormatter
from bot.sandbox import SANDBOX_ARM_TOKEN, SANDBOX_BOT_TOKEN, SandboxStack
from jitcore.model import RequestStatus
from tests.scenario.harness import Driver, wait_until, write_policy

SIGNING_SECRET = "5e1f0c0ffee5ca1ab1e5ec7e75ec7e75"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[SandboxStack]:
    running = SandboxStack(
        tmp_path,
        policy_file=write_policy(tmp_path),
        signing_secret=SIGNING_SECRET,
        sweep_interval=1.0,
    ).start()
    try:
        yield running
    finally:
        running.stop()


def full_run(driver: Driver) -> int:
    status, reply = driver.command("request vm-web01 22 2s from 203.0.113.7 because logs")
    assert status == 200, reply
    request_id = int(reply["text"].split("#", 1)[1].split()[0])
    wait_until(lambda: driver.request(request_id).approval_ts, what="the approval message")
    assert driver.click("jit_approve", request_id) == 200
    driver.wait_status(request_id, RequestStatus.CLOSED, timeout=20)
    wait_until(lambda: len(driver.dms_to("U0REQ12345")) >= 2, what="the granted and closed DMs")
    return request_id


def rendered(records: list[logging.LogRecord]) -> list[str]:
    """Each record as the text and the JSON formatter would write it."""
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    json_lines = JsonFormatter()
    return [f(record) for record in records for f in (text.format, json_lines.format)]


def test_no_secret_appears_in_the_logs_of_a_full_run_even_at_debug(
    stack: SandboxStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    full_run(Driver(stack))

    lines = rendered(caplog.records)
    assert len(lines) > 20
    for secret in (SIGNING_SECRET, SANDBOX_BOT_TOKEN, SANDBOX_ARM_TOKEN):
        leaks = [line for line in lines if secret in line]
        assert not leaks, leaks[:3]


def test_each_lifecycle_step_is_one_info_line_with_the_request_id(
    stack: SandboxStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    request_id = full_run(Driver(stack))

    engine_lines = [
        record.getMessage()
        for record in caplog.records
        if record.name == "jitcore.engine" and record.levelno == logging.INFO
    ]
    for step in (
        f"request {request_id} submitted",
        f"request {request_id} approved",
        f"request {request_id}: rule jitbot-allow-r{request_id} created",
        f"request {request_id} active until",
        f"request {request_id}: rule jitbot-allow-r{request_id} removed",
        f"request {request_id} closed",
    ):
        matching = [line for line in engine_lines if line.startswith(step)]
        assert len(matching) == 1, (step, engine_lines)
