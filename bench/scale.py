"""Scale: the planner on NSGs holding up to 1,000 rules, and a restart with many live grants.

The planner is pure (``jitcore.planner``), so it is timed alone, including the
conversion of the NSG's ARM JSON that the engine does before each plan. The NSGs are
the planner's worst case: every priority between the JIT deny and the free one below it
is taken, so the search walks past all of them.
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import fleet as fleets
from bench.stack import BenchStack, start_standins, start_until_ready
from bench.stats import table
from jitcore.model import utcnow
from jitcore.planner import MAX_RULES_PER_NSG, AllowSpec, Rule, differences, plan_allow

SIZES = (10, 100, 500, MAX_RULES_PER_NSG - 1)
RESTART_GRANTS = (1_000, 10_000)
VMS = 50
SPEC = AllowSpec(
    request_id=424242,
    vm_name="vm-big",
    source_prefix="203.0.113.7/32",
    destination="10.0.0.4",
    ports=(22,),
    protocol="Tcp",
    ends_at=datetime(2030, 1, 1, tzinfo=UTC),
)


def run(workdir: Path, quick: bool, database_url: str | None) -> dict[str, Any]:
    planner = [_plan_timing(size, repeats=20 if quick else 200) for size in SIZES]
    restarts = [
        _restart(workdir / f"restart-{n}", n)
        for n in (RESTART_GRANTS[:1] if quick else RESTART_GRANTS)
    ]
    _print(planner, restarts)
    return {"planner": planner, "restart": restarts}


def big_nsg(size: int) -> list[dict[str, Any]]:
    """``size`` custom rules: the JIT deny at 4000 and allows on every priority below it."""
    rules = [
        {
            "name": "jitbot-deny-vm-big",
            "properties": {
                "protocol": "*",
                "sourcePortRange": "*",
                "destinationPortRanges": ["22", "3389"],
                "sourceAddressPrefix": "*",
                "destinationAddressPrefix": "10.0.0.4",
                "access": "Deny",
                "priority": 4000,
                "direction": "Inbound",
            },
        }
    ]
    for k in range(size - 1):
        rules.append(
            {
                "name": f"allow-app-{k}",
                "properties": {
                    "description": f"application rule {k}",
                    "protocol": "Tcp",
                    "sourcePortRange": "*",
                    "destinationPortRanges": [str(8000 + k % 500), "443"],
                    "sourceAddressPrefixes": [f"10.{k % 200}.{k // 200}.0/24", "192.0.2.0/24"],
                    "destinationAddressPrefix": "10.0.0.0/24",
                    "access": "Allow",
                    "priority": 3999 - k,
                    "direction": "Inbound",
                },
            }
        )
    return rules


def _plan_timing(size: int, repeats: int) -> dict[str, Any]:
    rules = big_nsg(size)
    plan_times, diff_times = [], []
    planned = None
    for _ in range(repeats):
        started = time.perf_counter()
        planned = plan_allow([Rule.from_arm(r) for r in rules], SPEC)
        plan_times.append(time.perf_counter() - started)
    assert planned is not None
    after = [*rules, {"name": planned.name, "properties": planned.to_arm_properties()}]
    for _ in range(repeats):
        started = time.perf_counter()
        differences(rules, after)
        diff_times.append(time.perf_counter() - started)
    tracemalloc.start()
    plan_allow([Rule.from_arm(r) for r in rules], SPEC)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "rules": size,
        "plan_us": round(statistics.median(plan_times) * 1e6),
        "compare_us": round(statistics.median(diff_times) * 1e6),
        "peak_kib": round(peak / 1024),
        "priority": planned.priority,
    }


def _restart(workdir: Path, grants: int) -> dict[str, Any]:
    """Start the bot on ``grants`` live grants twice: once timed, once under tracemalloc."""
    workdir.mkdir(parents=True, exist_ok=True)
    database_url = f"sqlite:///{workdir / 'jitbot.db'}"
    fleet = fleets.Fleet(vms=VMS, grants=grants)
    ends = fleets.spread_ends(grants, utcnow() + timedelta(hours=1), 3600)
    seed, policy = fleets.build(fleet, workdir, database_url, ends)
    standins = start_standins(workdir / "standins", "--seed", str(seed))
    try:
        ready = _timed_start(workdir, standins, policy, database_url)
        tracemalloc.start()
        _timed_start(workdir, standins, policy, database_url)
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        standins.stop()
    return {"grants": grants, "ready_s": round(ready, 2), "peak_mib": round(peak / 2**20, 1)}


def _timed_start(workdir: Path, standins: Any, policy: Path, database_url: str) -> float:
    stack = BenchStack(workdir, standins.info, policy_file=policy, database_url=database_url)
    try:
        return start_until_ready(stack)
    finally:
        stack.stop_bot()


def _print(planner: list[dict[str, Any]], restarts: list[dict[str, Any]]) -> None:
    rows = [
        [p["rules"], f"{p['plan_us']} µs", f"{p['compare_us']} µs", f"{p['peak_kib']} KiB"]
        for p in planner
    ]
    print(table(["rules in NSG", "plan one grant", "compare snapshots", "peak memory"], rows))
    rows = [[r["grants"], f"{r['ready_s']} s", f"{r['peak_mib']} MiB"] for r in restarts]
    print(table(["live grants", "bot start to /readyz", "peak traced memory"], rows))
