"""Expiry precision: many live grants over many NSGs, all ending within one minute.

The fleet (``bench.fleet``) is written to the database and the ARM stand-in, then the
bot starts on it, as after a restart (the time to ``/readyz`` is measured too). For each
grant, the ARM stand-in's request log gives the moment its rule's DELETE was first
issued and the moment one was accepted; the delay is measured from the grant's end.

It runs twice: with the stand-in's per-subscription write budget (burst 200, 10 writes
per second refilled, as Azure Resource Manager throttles) and without it, so that what
the budget costs is told apart from what the engine costs.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench import fleet as fleets
from bench.stack import BenchStack, start_standins, start_until_ready
from bench.stats import ms, percentile, table
from jitcore.model import AccessRequest, RequestStatus, utcnow

log = logging.getLogger(__name__)

VMS = 50
WINDOW = 60.0
LEAD = 20.0
"""Seconds between writing the fleet and the first end: enough to start the bot."""
DRAIN = 120.0
"""Seconds after the last end that the run waits for the closings to finish."""
TARGET_P99 = 2.0
RULE = re.compile(r"/securityRules/jitbot-allow-r(\d+)$")
ACCEPTED = frozenset({200, 202, 204})


def run(workdir: Path, quick: bool, database_url: str | None) -> dict[str, Any]:
    """Both runs use a fresh SQLite file each (the fleet is written straight into it)."""
    grants, window = (200, 20.0) if quick else (1000, WINDOW)
    results = {}
    for label, throttled in (("write budget", True), ("no throttling", False)):
        results[label] = _one_run(workdir / label.replace(" ", "-"), grants, window, throttled)
    _print(results, grants, window)
    return results


def _one_run(workdir: Path, grants: int, window: float, throttled: bool) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    database_url = f"sqlite:///{workdir / 'jitbot.db'}"
    fleet = fleets.Fleet(vms=VMS, grants=grants)
    first_end = utcnow() + timedelta(seconds=LEAD)
    ends = fleets.spread_ends(grants, first_end, window)
    seed, policy = fleets.build(fleet, workdir, database_url, ends)
    options = ["--seed", str(seed)] + ([] if throttled else ["--no-throttling"])
    standins = start_standins(workdir / "standins", *options)
    stack = BenchStack(workdir, standins.info, policy_file=policy, database_url=database_url)
    try:
        rss_before = _rss_kib()
        ready = start_until_ready(stack)
        slack_before_first_end = first_end.timestamp() - time.time()
        sampler = _LagSampler(stack)
        last_end = max(ends).timestamp()
        _wait_closed(stack, grants, deadline=last_end + DRAIN)
        sampler.stop()
        calls = stack.arm.requests()
        outcome = _analyse(stack, calls, ends)
        outcome.update(
            ready_s=round(ready, 2),
            max_sweep_lag_s=round(sampler.max_lag, 1),
            rss_growth_mib=round((_rss_kib() - rss_before) / 1024, 1),
            slack_before_first_end_s=round(slack_before_first_end, 1),
        )
    finally:
        _stop_bounded(stack)
        standins.stop()
    return outcome


class _LagSampler:
    """Reads jitbot_sweep_lag_seconds from the bot's registry twice a second."""

    def __init__(self, stack: BenchStack) -> None:
        self._stack = stack
        self.max_lag = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-lag", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.5):
            bot = self._stack.bot
            if bot is None or bot.metrics is None:
                continue
            lag = bot.metrics.registry.get_sample_value("jitbot_sweep_lag_seconds") or 0.0
            self.max_lag = max(self.max_lag, lag)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)


def _wait_closed(stack: BenchStack, grants: int, deadline: float) -> None:
    assert stack.bot is not None
    store = stack.bot.store
    while time.time() < deadline:
        if not store.requests_with_status((RequestStatus.ACTIVE, RequestStatus.CLOSING)):
            return
        time.sleep(1.0)


def _analyse(stack: BenchStack, calls: list[dict[str, Any]], ends: list[Any]) -> dict[str, Any]:
    end_of = {k + 1: end.timestamp() for k, end in enumerate(ends)}
    first: dict[int, float] = {}
    accepted: dict[int, float] = {}
    for call in calls:
        found = RULE.search(call["path"]) if call["method"] == "DELETE" else None
        if found is None:
            continue
        request_id = int(found.group(1))
        first.setdefault(request_id, call["time"])
        if call["status"] in ACCEPTED:
            accepted.setdefault(request_id, call["time"])
    issue_delays = [first[k] - end_of[k] for k in first]
    accept_delays = [accepted[k] - end_of[k] for k in accepted]
    writes = [c for c in calls if c["method"] in ("PUT", "DELETE", "POST", "PATCH")]
    statuses = Counter(c["status"] for c in writes)
    assert stack.bot is not None
    closed, audit = _database_outcome(stack)
    close_delays = [r.closed_at.timestamp() - end_of[r.id] for r in closed if r.closed_at and r.id]
    grants = len(ends)
    return {
        "grants": grants,
        "closed": len(closed),
        "deletes_accepted": len(accepted),
        "issue_p50_s": round(percentile(issue_delays, 50), 3),
        "issue_p99_s": round(percentile(issue_delays, 99), 3),
        "issue_max_s": round(max(issue_delays, default=float("nan")), 3),
        "accepted_p50_s": round(percentile(accept_delays, 50), 3),
        "accepted_p99_s": round(percentile(accept_delays, 99), 3),
        "accepted_max_s": round(max(accept_delays, default=float("nan")), 3),
        "closed_p99_s": round(percentile(close_delays, 99), 3),
        "writes": len(writes),
        "writes_per_grant": round(len(writes) / grants, 2),
        "accepted_writes_per_grant": round(
            sum(n for s, n in statuses.items() if s in ACCEPTED) / grants, 2
        ),
        "throttled_429": sum(1 for c in calls if c["status"] == 429),
        "arm_calls": len(calls),
        "arm_calls_per_grant": round(len(calls) / grants, 1),
        "remove_failed_audits": audit.get("rule_remove_failed", 0),
    }


def _database_outcome(stack: BenchStack) -> tuple[list[AccessRequest], Counter[str]]:
    assert stack.bot is not None
    store = stack.bot.store
    closed = store.requests_with_status((RequestStatus.CLOSED,))
    return closed, Counter(event.action for event in store.audit_events())


def _stop_bounded(stack: BenchStack, timeout: float = 60.0) -> None:
    """Stop the bot, but do not let work stuck in retries hold the benchmark forever."""
    stopper = threading.Thread(target=stack.stop_bot, name="bench-stop", daemon=True)
    stopper.start()
    stopper.join(timeout)
    if stopper.is_alive():
        log.warning("the bot did not stop within %.0fs; leaving it to exit with the run", timeout)


def _rss_kib() -> int:
    try:
        with open(f"/proc/{os.getpid()}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _print(results: dict[str, dict[str, Any]], grants: int, window: float) -> None:
    print(f"{grants} live grants over {VMS} NSGs, ends spread over {window:.0f} s")
    headers = ["", *results]
    rows = [
        ["bot start to /readyz", *(f"{r['ready_s']} s" for r in results.values())],
        ["DELETE issued after end, p50", *(_s(r["issue_p50_s"]) for r in results.values())],
        ["DELETE issued after end, p99", *(_s(r["issue_p99_s"]) for r in results.values())],
        ["DELETE accepted after end, p50", *(_s(r["accepted_p50_s"]) for r in results.values())],
        ["DELETE accepted after end, p99", *(_s(r["accepted_p99_s"]) for r in results.values())],
        ["DELETE accepted after end, max", *(_s(r["accepted_max_s"]) for r in results.values())],
        ["request closed after end, p99", *(_s(r["closed_p99_s"]) for r in results.values())],
        ["closed / grants", *(f"{r['closed']} / {r['grants']}" for r in results.values())],
        ["ARM writes per grant (sent)", *(r["writes_per_grant"] for r in results.values())],
        [
            "ARM writes per grant (accepted)",
            *(r["accepted_writes_per_grant"] for r in results.values()),
        ],
        ["429 answers", *(r["throttled_429"] for r in results.values())],
        ["ARM calls per grant (all)", *(r["arm_calls_per_grant"] for r in results.values())],
        ["rule_remove_failed", *(r["remove_failed_audits"] for r in results.values())],
        ["max jitbot_sweep_lag_seconds", *(r["max_sweep_lag_s"] for r in results.values())],
        [
            "RSS growth of the bot process",
            *(f"{r['rss_growth_mib']} MiB" for r in results.values()),
        ],
    ]
    print(table(headers, rows))
    print(f"target: DELETE issued p99 < {TARGET_P99:.0f} s")


def _s(seconds: float) -> str:
    return ms(seconds) if seconds < 1 else f"{seconds:.2f} s"
