"""Prometheus metrics of one bot, served at ``/metrics``.

Every bot has its own :class:`CollectorRegistry`, never the process-wide default one, so
several bots in one process (the tests run many) keep separate counts. Counters are fed
by jitcore's observer hook (:mod:`jitcore.observe`), by an azure-core pipeline policy
that sees every answer from Azure Resource Manager, and by a Slack retry handler that
sees every answer from the Slack Web API. Gauges about the state of requests are read
from the database at each scrape, so they are right whichever replica did the work.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import SecretStr
from slack_sdk import WebClient
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.request import HttpRequest as SlackHttpRequest
from slack_sdk.http_retry.response import HttpResponse as SlackHttpResponse
from slack_sdk.http_retry.state import RetryState
from sqlalchemy import func
from sqlmodel import col, select

from jitcore.azure import AzureNetwork, AzureTarget
from jitcore.azure.observing import observed
from jitcore.db import Store
from jitcore.engine import Engine
from jitcore.model import AccessRequest, RequestStatus, utcnow

log = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]

OUTCOMES = (
    "submitted",
    "rejected",
    "approved",
    "denied",
    "opened",
    "failed",
    "closed",
    "revoked",
    "expired",
)
"""Lifecycle points counted in ``jitbot_requests_total``; all are exported from the start."""

APPROVAL_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
OPEN_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
OVERDUE_STATUSES = (RequestStatus.ACTIVE, RequestStatus.CLOSING)


class Metrics:
    """The bot's metrics; also the :class:`jitcore.observe.Observer` of its engine.

    Args:
        store: the database the gauges are read from at each scrape.
        token: when set, a scrape must send ``Authorization: Bearer <token>``.
        clock: now, in UTC (the sweep lag is measured against it).
    """

    def __init__(
        self,
        store: Store,
        token: SecretStr | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._token = token
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "jitbot_requests",
            "Access requests reaching each point of their life.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        self.approval_latency = Histogram(
            "jitbot_approval_latency_seconds",
            "Time from a request's submission to its approval by a person.",
            buckets=APPROVAL_BUCKETS,
            registry=self.registry,
        )
        self.open_duration = Histogram(
            "jitbot_open_duration_seconds",
            "Time from approval to access granted (every rule written and confirmed).",
            buckets=OPEN_BUCKETS,
            registry=self.registry,
        )
        self.arm_requests = Counter(
            "jitbot_arm_requests",
            "HTTP answers from Azure Resource Manager, every attempt and poll included "
            "(status 0: no answer).",
            ["method", "status"],
            registry=self.registry,
        )
        self.arm_retries = Counter(
            "jitbot_arm_retries",
            "ARM operations jitbot retried after Azure called the failure temporary.",
            ["status", "code"],
            registry=self.registry,
        )
        self.slack_errors = Counter(
            "jitbot_slack_api_errors",
            "Slack Web API calls answered with an error (rate limits included).",
            ["method", "error"],
            registry=self.registry,
        )
        self.registry.register(DatabaseCollector(store, clock))

    # -- wiring ------------------------------------------------------------------------

    def watch_arm(self, target: AzureTarget) -> AzureTarget:
        """``target`` with every ARM answer counted; use it before clients are built."""
        return observed(target, self)

    def watch_slack(self, client: WebClient) -> WebClient:
        """Count the errors ``client`` (and Bolt's per-request copies of it) meets."""
        client.retry_handlers.insert(0, SlackErrorCounter(self.slack_errors))
        return client

    def watch_engine(self, engine: Engine, network: AzureNetwork) -> None:
        engine.observer = self
        network.nsgs.observer = self

    # -- the observer ------------------------------------------------------------------

    def request_event(self, event: str, request: AccessRequest | None) -> None:
        self.requests.labels(str(event)).inc()
        if request is None:
            return
        if event == "approved" and request.created_at and request.decided_at:
            self.approval_latency.observe(_seconds(request.created_at, request.decided_at))
        if event == "opened" and request.decided_at and request.opened_at:
            self.open_duration.observe(_seconds(request.decided_at, request.opened_at))

    def arm_response(self, method: str, status: int) -> None:
        self.arm_requests.labels(method.upper(), str(status)).inc()

    def arm_retry(self, status: int | None, code: str | None) -> None:
        self.arm_retries.labels(str(status or 0), code or "none").inc()

    # -- exposition --------------------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """The text format Prometheus scrapes, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def serve(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """The ``/metrics`` endpoint (WSGI)."""
        if self._token is not None and not _bearer_matches(environ, self._token.get_secret_value()):
            body, content_type = b"a bearer token is required", "text/plain; charset=utf-8"
            status = "401 Unauthorized"
        else:
            body, content_type = self.exposition()
            status = "200 OK"
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]


class DatabaseCollector(Collector):
    """Gauges read from the database when Prometheus scrapes.

    ``jitbot_sweep_lag_seconds`` is how long the oldest grant past its end has been
    waiting to be closed: zero while expiry keeps up, growing when it does not (the
    scheduler stopped, Azure refuses the deletes, the write budget is spent).
    """

    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.clock = clock

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        up, active, pending, lag = self._families()
        try:
            values = self._read()
        except Exception:
            log.warning("metrics: the database did not answer the scrape's queries")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        active.add_metric([], values[0])
        pending.add_metric([], values[1])
        lag.add_metric([], values[2])
        yield from (up, active, pending, lag)

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("jitbot_database_up", "1 when the database answered the scrape."),
            GaugeMetricFamily("jitbot_active_grants", "Requests whose access is open now."),
            GaugeMetricFamily("jitbot_pending_requests", "Requests waiting for a decision."),
            GaugeMetricFamily(
                "jitbot_sweep_lag_seconds",
                "Seconds since the end of the oldest grant that is still not closed.",
            ),
        )

    def _read(self) -> tuple[int, int, float]:
        now = self.clock()
        with self.store.session() as session:
            active = session.exec(_count_with_status(RequestStatus.ACTIVE)).one()
            pending = session.exec(_count_with_status(RequestStatus.PENDING)).one()
            oldest = session.exec(
                select(func.min(AccessRequest.ends_at))
                .where(col(AccessRequest.status).in_(OVERDUE_STATUSES))
                .where(col(AccessRequest.ends_at) <= now)
            ).one()
        lag = _seconds(oldest, now) if oldest is not None else 0.0
        return int(active), int(pending), max(lag, 0.0)


class SlackErrorCounter(RetryHandler):
    """Counts Slack answers that are errors; never asks for a retry itself.

    slack_sdk shows every answer to the client's retry handlers in turn, so the first
    handler sees all of them; the rate-limit handler after it still does the retrying.
    """

    def __init__(self, counter: Counter) -> None:
        super().__init__(max_retry_count=0)
        self._counter = counter

    def __deepcopy__(self, memo: dict[int, Any]) -> SlackErrorCounter:
        """Bolt deep-copies a request (its client included) for lazy listeners; the copy
        must count into the same registry, and a counter's lock cannot be copied."""
        return self

    def can_retry(
        self,
        *,
        state: RetryState,
        request: SlackHttpRequest,
        response: SlackHttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        failure = _slack_failure(response, error)
        if failure is not None:
            method = request.url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
            self._counter.labels(method, failure).inc()
        return False


def _slack_failure(response: SlackHttpResponse | None, error: Exception | None) -> str | None:
    """What went wrong in one Slack answer (``None`` if nothing did)."""
    if response is None:
        return type(error).__name__ if error is not None else "no_response"
    if response.status_code == 429:
        return "ratelimited"
    if response.status_code != 200:
        return f"http_{response.status_code}"
    body: Any = response.body or {}
    if isinstance(body, dict) and body.get("ok") is False:
        return str(body.get("error") or "unknown")
    return None


def _bearer_matches(environ: dict[str, Any], token: str) -> bool:
    sent = str(environ.get("HTTP_AUTHORIZATION", ""))
    return hmac.compare_digest(sent.encode(), f"Bearer {token}".encode())


def _count_with_status(status: str) -> Any:
    return (
        select(func.count()).select_from(AccessRequest).where(col(AccessRequest.status) == status)
    )


def _seconds(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds()
