"""/metrics, scraped over HTTP from a running sandbox stack after real requests."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from bot.metrics import Metrics
from bot.sandbox import SandboxStack
from jitcore.db import Store, create_schema, make_engine
from jitcore.model import RequestStatus
from tests.scenario.harness import Driver, wait_until, write_policy

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def stack(tmp_path: Path, database_url: str) -> Iterator[SandboxStack]:
    running = SandboxStack(
        tmp_path,
        database_url=database_url,
        policy_file=write_policy(tmp_path),
        sweep_interval=1.0,
    ).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def driver(stack: SandboxStack) -> Driver:
    return Driver(stack)


def scrape(stack: SandboxStack) -> Samples:
    with urllib.request.urlopen(stack.bot_url + "/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape_until(stack: SandboxStack, ready: Callable[[Samples], object], what: str) -> Samples:
    """Scrape until ``ready`` holds: some counts follow in background threads."""
    holder: dict[str, Samples] = {}

    def check() -> bool:
        holder["samples"] = scrape(stack)
        return bool(ready(holder["samples"]))

    wait_until(check, what=what)
    return holder["samples"]


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def request_and_approve(driver: Driver, text: str) -> int:
    status, reply = driver.command(text)
    assert status == 200, reply
    request_id = int(reply["text"].split("#", 1)[1].split()[0])
    wait_until(lambda: driver.request(request_id).approval_ts, what="the approval message")
    assert driver.click("jit_approve", request_id) == 200
    return request_id


def test_request_and_approval_are_counted_and_the_grant_is_active(
    stack: SandboxStack, driver: Driver
) -> None:
    request_id = request_and_approve(driver, "request vm-web01 22 1h from 203.0.113.7")
    driver.wait_status(request_id, RequestStatus.ACTIVE)

    samples = scrape_until(
        stack,
        lambda s: value(s, "jitbot_requests_total", outcome="opened") == 1,
        "the opened request to be counted",
    )

    assert value(samples, "jitbot_requests_total", outcome="submitted") == 1
    assert value(samples, "jitbot_requests_total", outcome="approved") == 1
    assert value(samples, "jitbot_requests_total", outcome="rejected") == 0
    assert value(samples, "jitbot_requests_total", outcome="closed") == 0
    assert value(samples, "jitbot_approval_latency_seconds_count") == 1
    assert value(samples, "jitbot_open_duration_seconds_count") == 1
    assert 0 < value(samples, "jitbot_open_duration_seconds_sum") < 10
    assert value(samples, "jitbot_active_grants") == 1
    assert value(samples, "jitbot_pending_requests") == 0
    assert value(samples, "jitbot_sweep_lag_seconds") == 0
    assert value(samples, "jitbot_database_up") == 1
    assert total(samples, "jitbot_arm_requests_total", method="PUT") >= 1
    assert total(samples, "jitbot_arm_requests_total", method="GET", status="200") >= 3
    assert total(samples, "jitbot_arm_retries_total") == 0
    assert total(samples, "jitbot_slack_api_errors_total") == 0


def test_a_request_outside_the_policy_counts_as_rejected(
    stack: SandboxStack, driver: Driver
) -> None:
    status, _reply = driver.command("request vm-web01 2222 1h from 203.0.113.7")
    assert status == 200

    samples = scrape(stack)

    assert value(samples, "jitbot_requests_total", outcome="rejected") == 1
    assert value(samples, "jitbot_requests_total", outcome="submitted") == 0
    assert value(samples, "jitbot_pending_requests") == 0


def test_expiry_is_counted_and_the_grant_leaves_the_gauge(
    stack: SandboxStack, driver: Driver
) -> None:
    request_id = request_and_approve(driver, "request vm-web01 22 2s from 203.0.113.7")

    driver.wait_status(request_id, RequestStatus.CLOSED, timeout=20)
    samples = scrape(stack)

    assert value(samples, "jitbot_requests_total", outcome="opened") == 1
    assert value(samples, "jitbot_requests_total", outcome="closed") == 1
    assert value(samples, "jitbot_active_grants") == 0
    assert total(samples, "jitbot_arm_requests_total", method="DELETE") >= 1


def test_arm_throttling_and_conflicts_are_counted_by_status(
    stack: SandboxStack, driver: Driver
) -> None:
    stack.arm.add_fault(
        method="PUT", path_contains="securityRules", status=429, retry_after=0, times=1
    )
    stack.arm.add_fault(
        method="PUT",
        path_contains="securityRules",
        status=409,
        code="AnotherOperationInProgress",
        times=1,
    )

    request_id = request_and_approve(driver, "request vm-web01 22 1h from 203.0.113.7")
    driver.wait_status(request_id, RequestStatus.ACTIVE, timeout=20)
    samples = scrape(stack)

    assert value(samples, "jitbot_arm_requests_total", method="PUT", status="429") == 1
    assert value(samples, "jitbot_arm_requests_total", method="PUT", status="409") == 1
    assert (
        value(samples, "jitbot_arm_retries_total", status="409", code="AnotherOperationInProgress")
        == 1
    )


def test_a_delete_azure_refuses_shows_as_sweep_lag(stack: SandboxStack, driver: Driver) -> None:
    stack.arm.add_fault(method="DELETE", path_contains="securityRules", status=403)
    request_id = request_and_approve(driver, "request vm-web01 22 1s from 203.0.113.7")

    driver.wait_status(request_id, RequestStatus.CLOSING, timeout=20)
    samples = scrape_until(
        stack, lambda s: value(s, "jitbot_sweep_lag_seconds") > 1, "the sweep lag to grow"
    )

    assert value(samples, "jitbot_requests_total", outcome="closed") == 0
    assert value(samples, "jitbot_arm_requests_total", method="DELETE", status="403") >= 1


def test_slack_errors_are_counted_by_method_and_error(stack: SandboxStack, driver: Driver) -> None:
    stack.slack.add_fault("chat.postMessage", error="channel_not_found", times=1)

    status, _reply = driver.command("request vm-web01 22 1h from 203.0.113.7")
    assert status == 200

    samples = scrape_until(
        stack, lambda s: total(s, "jitbot_slack_api_errors_total"), "the Slack error to be counted"
    )
    assert (
        value(
            samples,
            "jitbot_slack_api_errors_total",
            method="chat.postMessage",
            error="channel_not_found",
        )
        == 1
    )


def test_each_bot_counts_in_its_own_registry(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'jitbot.db'}")
    create_schema(engine)
    first, second = Metrics(Store(engine)), Metrics(Store(engine))

    first.request_event("rejected", None)

    assert first.registry.get_sample_value("jitbot_requests_total", {"outcome": "rejected"}) == 1
    assert second.registry.get_sample_value("jitbot_requests_total", {"outcome": "rejected"}) == 0
    engine.dispose()


def test_a_metrics_token_is_required_when_configured(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'jitbot.db'}")
    create_schema(engine)
    metrics = Metrics(Store(engine), token=SecretStr("scrape-secret"))
    statuses: list[str] = []

    def start_response(status: str, _headers: list[tuple[str, str]]) -> None:
        statuses.append(status)

    refused = b"".join(metrics.serve({}, start_response))
    wrong = {"HTTP_AUTHORIZATION": "Bearer nope"}
    b"".join(metrics.serve(wrong, start_response))
    good = {"HTTP_AUTHORIZATION": "Bearer scrape-secret"}
    body = b"".join(metrics.serve(good, start_response))

    assert statuses == ["401 Unauthorized", "401 Unauthorized", "200 OK"]
    assert b"scrape-secret" not in refused
    assert b"jitbot_requests_total" in body
    engine.dispose()
