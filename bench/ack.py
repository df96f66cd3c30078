"""Slash-command ack latency over real HTTP, jitbot against a bare Bolt app.

Both run in their own child process behind waitress with the same settings, the ARM and
Slack stand-ins in a third, and the load generator in this one. ``help`` touches no
database; a request for a port outside the policy is refused in the ack itself, from
the policy alone. A valid ``request`` is acked at once ("checking…"); identity and RBAC checks,
recording the request and posting it to the approvers follow in background threads of
the bot, which compete with the acks for the same CPU: how long that backlog takes to
clear after each load is reported too.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select

from bench.children import Child
from bench.load import SLACK_DEADLINE, LoadResult, run_load
from bench.stack import RemoteArm, call_kind, start_standins
from bench.stats import ms, percentile, table
from jitcore.db import make_engine
from jitcore.model import AccessRequest
from sandbox.slack import sender

REQUESTER = "U0REQ12345"
RATE = 100.0
SUSTAINABLE_RATE = 25.0
TARGET_P99 = 0.050


def run(workdir: Path, quick: bool, database_url: str | None) -> dict[str, Any]:
    duration = 3.0 if quick else 10.0
    database_url = database_url or f"sqlite:///{workdir / 'jitbot' / 'jitbot.db'}"
    standins = start_standins(workdir / "standins")
    jitbot = Child.start(
        "bot",
        workdir / "jitbot",
        "--standins",
        str(workdir / "standins" / "standins.json"),
        "--database-url",
        database_url,
        "--no-pending-cap",
    )
    bare = Child.start("bare", workdir / "bare")
    try:
        requests_from = time.time()
        results, drains = _measure(jitbot.info, bare.info, duration, database_url)
        calls = [c for c in RemoteArm(standins.info).requests() if c["time"] >= requests_from]
    finally:
        jitbot.stop()
        bare.stop()
        standins.stop()
    sent = sum(r.sent for r in results if r.label == "jitbot: request")
    per_request = Counter(f"{c['method']} {call_kind(c['path'])}" for c in calls)
    _print(results, drains)
    print(
        f"ARM and Graph calls per valid request: {len(calls) / sent:.2f} ("
        + ", ".join(f"{kind} {n}" for kind, n in per_request.most_common())
        + f" in {sent} requests)"
    )
    summary = _summary(results, drains)
    summary["arm_calls_per_request"] = round(len(calls) / sent, 3)
    return summary


def _measure(
    jitbot: dict[str, Any], bare: dict[str, Any], duration: float, database_url: str
) -> tuple[list[LoadResult], list[float]]:
    help_text = "help"
    request_text = "request vm-web01 22 2h from 198.51.100.{n} because bench"
    refused_text = "request vm-web01 2222 2h from 198.51.100.{n}"
    for target in (jitbot, bare):
        _load("warm-up", target, help_text, 10, 50, 2.0)
    results, drains = [], []
    for senders in (50, 200):
        results.append(_load("bare Bolt: help", bare, help_text, senders, RATE, duration))
        results.append(_load("jitbot: help", jitbot, help_text, senders, RATE, duration))
    results.append(_load("jitbot: bad port", jitbot, refused_text, 200, RATE, duration))
    results.append(_load("jitbot: request", jitbot, request_text, 50, SUSTAINABLE_RATE, duration))
    drains.append(_follow_up_drain(database_url))
    for senders in (50, 200):
        results.append(_load("jitbot: request", jitbot, request_text, senders, RATE, duration))
        drains.append(_follow_up_drain(database_url))
    return results, drains


def _follow_up_drain(database_url: str, timeout: float = 120.0) -> float:
    """Seconds after a load until every request it made is recorded and posted to the
    approvers: the work the ack leaves to background threads."""
    engine = make_engine(database_url)
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            with engine.connect() as connection:
                unposted = connection.execute(
                    select(func.count())
                    .select_from(AccessRequest)
                    .where(col(AccessRequest.approval_ts).is_(None))
                ).scalar_one()
            if unposted == 0:
                return time.monotonic() - started
            time.sleep(0.2)
        return float("nan")
    finally:
        engine.dispose()


def _load(
    label: str, target: dict[str, Any], text: str, senders: int, rate: float, duration: float
) -> LoadResult:
    """Run one load; every response_url points at the target's own Slack stand-in."""

    def body_for(n: int) -> str:
        return sender.slash_command_body(
            text.format(n=n % 250 + 1), user_id=REQUESTER, response_url=target["response_url"]
        )

    url = target["bot_url"] + "/slack/events"
    return run_load(label, url, target["signing_secret"], body_for, senders, rate, duration)


def _print(results: list[LoadResult], drains: list[float]) -> None:
    rows = [
        [
            r.label,
            r.senders,
            r.sent,
            f"{r.achieved_rate:.0f} of {r.rate:.0f}/s",
            ms(percentile(r.latencies, 50)),
            ms(percentile(r.latencies, 99)),
            ms(max(r.latencies, default=float("nan"))),
            r.over_deadline,
            r.sent - r.statuses.get(200, 0),
        ]
        for r in results
    ]
    headers = ["target: command", "senders", "sent", "rate", "p50", "p99", "max"]
    headers += [f"> {SLACK_DEADLINE:.0f} s", "not 200"]
    print(table(headers, rows))
    for senders in (50, 200):
        bare, jitbot = _pair(results, senders)
        print(
            f"jitbot/bare at {senders} senders, {RATE:.0f} req/s: "
            f"p50 x{_ratio(jitbot, bare, 50):.2f}, p99 x{_ratio(jitbot, bare, 99):.2f}"
        )
    requests = [r for r in results if r.label == "jitbot: request"]
    for load, drain in zip(requests, drains, strict=True):
        print(
            f"request, {load.senders} senders at {load.rate:.0f}/s: every request recorded and "
            f"posted to the approvers {drain:.1f} s after the load ended"
        )


def _pair(results: list[LoadResult], senders: int) -> tuple[LoadResult, LoadResult]:
    bare = next(r for r in results if r.label.startswith("bare") and r.senders == senders)
    jitbot = next(r for r in results if r.label == "jitbot: help" and r.senders == senders)
    return bare, jitbot


def _ratio(jitbot: LoadResult, bare: LoadResult, pct: float) -> float:
    return percentile(jitbot.latencies, pct) / percentile(bare.latencies, pct)


def _summary(results: list[LoadResult], drains: list[float]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for r in results:
        summary[f"{r.label} @{r.senders} x {r.rate:.0f}/s"] = {
            "sent": r.sent,
            "rate": round(r.achieved_rate, 1),
            "p50_ms": round(percentile(r.latencies, 50) * 1000, 2),
            "p99_ms": round(percentile(r.latencies, 99) * 1000, 2),
            "max_ms": round(max(r.latencies, default=float("nan")) * 1000, 2),
            "over_deadline": r.over_deadline,
            "not_200": r.sent - r.statuses.get(200, 0),
        }
    for senders in (50, 200):
        bare, jitbot = _pair(results, senders)
        summary[f"ratio @{senders}"] = {
            "p50": round(_ratio(jitbot, bare, 50), 2),
            "p99": round(_ratio(jitbot, bare, 99), 2),
        }
    summary["follow_up_drain_s"] = [round(d, 1) for d in drains]
    summary["target_p99_ms"] = TARGET_P99 * 1000
    return summary
