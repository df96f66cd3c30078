"""Approval click to "granted": what jitbot adds over the SDK call that creates the rule.

Each round, in the same run and against the same ARM stand-in (a child process):

- raw: ``security_rules.begin_create_or_update(...).result()`` with azure-mgmt-network,
  configured exactly as jitbot configures it (same client factory, polling interval);
- jitbot: a signed Approve click on a pending request, until the request is ``active``
  (``opened_at``, stored once the long-running operation succeeded).

Rounds alternate so that drift in the machine hits both alike. Each jitbot grant is
revoked (and each raw rule deleted) before the next round, outside the timing.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.stack import BenchStack, call_kind, start_standins
from bench.stats import ms, percentile, table
from bot.sandbox import SANDBOX_ARM_TOKEN
from jitcore.azure.clients import (
    NETWORK_API_VERSION,
    AzureTarget,
    StaticTokenCredential,
    network_client,
)
from jitcore.model import RequestStatus
from sandbox.slack import sender

REQUESTER = "U0REQ12345"
APPROVER = "U0APPROVR1"
RESOURCE_GROUP = "rg-jit-demo"
NSG = "nsg-web01"
POLICY = """
policies:
  - name: web-admin
    vms: [vm-web01]
    ports:
      - {port: 22, protocol: Tcp, max_duration: 3h}
    min_duration: 1m
    approvers: [U0APPROVR1, U0APPROVR2]
    approval_channel: C0OPS12345
"""
REQUEST_ID = re.compile(r"#(\d+)")
TARGET_RATIO = 1.10
TARGET_SLACK_MS = 5.0

log = logging.getLogger(__name__)


def run(workdir: Path, quick: bool, database_url: str | None) -> dict[str, Any]:
    rounds = 5 if quick else 25
    standins = start_standins(workdir / "standins")
    policy = workdir / "policies.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    stack = BenchStack(
        workdir / "bot", standins.info, policy_file=policy, database_url=database_url, fresh=True
    )
    try:
        stack.start()
        raw_client = _raw_client(stack)
        raw, jitbot = _rounds(stack, raw_client, rounds)
        breakdown = _breakdown(stack, jitbot)
        raw_client.close()
    finally:
        stack.stop()
        standins.stop()
    return _report(raw, jitbot, breakdown)


def _raw_client(stack: BenchStack) -> Any:
    target = AzureTarget(
        subscription_id=stack.arm.subscription_id,
        credential=StaticTokenCredential(SANDBOX_ARM_TOKEN),
        base_url=stack.arm.url,
        ca_bundle=stack.arm.ca_path,
        polling_interval=stack.settings().arm_polling_interval,
    )
    return network_client(target)


def _rounds(
    stack: BenchStack, raw_client: Any, rounds: int
) -> tuple[list[float], list[dict[str, Any]]]:
    raw: list[float] = []
    jitbot: list[dict[str, Any]] = []
    _raw_round(raw_client, -1)  # warm-up: connections, TLS, first planner run
    _jitbot_round(stack, -1)
    for n in range(rounds):
        if n % 2:
            jitbot.append(_jitbot_round(stack, n))
            raw.append(_raw_round(raw_client, n))
        else:
            raw.append(_raw_round(raw_client, n))
            jitbot.append(_jitbot_round(stack, n))
    return raw, jitbot


def _raw_round(client: Any, n: int) -> float:
    name = f"bench-raw-{n + 1}"
    rule = {
        "properties": {
            "description": f"bench raw {n}",
            "protocol": "Tcp",
            "access": "Allow",
            "direction": "Inbound",
            "priority": 990,
            "sourceAddressPrefix": "192.0.2.10",
            "destinationAddressPrefix": "10.0.1.4",
            "destinationPortRange": "22",
            "sourcePortRange": "*",
        }
    }
    started = time.perf_counter()
    client.security_rules.begin_create_or_update(
        RESOURCE_GROUP, NSG, name, rule, api_version=NETWORK_API_VERSION
    ).result()
    elapsed = time.perf_counter() - started
    client.security_rules.begin_delete(
        RESOURCE_GROUP, NSG, name, api_version=NETWORK_API_VERSION
    ).result()
    return elapsed


def _jitbot_round(stack: BenchStack, n: int) -> dict[str, Any]:
    """Submit (untimed), click Approve (timed until active), revoke (untimed)."""
    bot = stack.bot
    assert bot is not None
    request_id = _submit(stack, n)
    pending = _wait(lambda: (r := bot.store.get_request(request_id)) and r.approval_ts and r)
    body = sender.block_action_body(
        "jit_approve",
        str(request_id),
        user_id=APPROVER,
        message_ts=pending.approval_ts,
        response_url=stack.slack.response_url(f"click-{request_id}"),
    )
    clicked = time.time()
    status, _headers, _text = sender.post(
        stack.bot_url + "/slack/events", body, stack.signing_secret
    )
    acked = time.time()
    done = _wait(
        lambda: (
            (r := bot.store.get_request(request_id))
            and r.status in (RequestStatus.ACTIVE, RequestStatus.FAILED)
            and r
        )
    )
    if done.status != RequestStatus.ACTIVE or done.opened_at is None:
        raise RuntimeError(f"request {request_id} ended {done.status}: {done.failure_reason}")
    _wait(lambda: bot.engine.revoke(request_id, REQUESTER))  # once the opening is let go
    return {
        "id": request_id,
        "status": status,
        "clicked": clicked,
        "ack": acked - clicked,
        "granted": done.opened_at.timestamp() - clicked,
        "opened_at": done.opened_at.timestamp(),
    }


def _submit(stack: BenchStack, n: int) -> int:
    """A signed ``/jit request`` as a user sends it; the id from the ack or its follow-up."""
    name = f"request-{n}"
    text = f"request vm-web01 22 1h from 198.51.100.{n % 200 + 2} because bench"
    body = sender.slash_command_body(
        text, user_id=REQUESTER, response_url=stack.slack.response_url(name)
    )
    _status, _headers, reply = sender.post(
        stack.bot_url + "/slack/events", body, stack.signing_secret
    )
    found = REQUEST_ID.search(reply)
    if found is None:
        answers = _wait(
            lambda: [c for c in stack.slack.calls("response_url") if c.get("name") == name]
        )
        found = REQUEST_ID.search(json.dumps(answers[0]["args"]))
    if found is None:
        raise RuntimeError(f"no request id in the answer to {text!r}: {reply}")
    return int(found.group(1))


def _wait(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting in the approval benchmark")
        time.sleep(0.002)
    return value


def _breakdown(stack: BenchStack, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Where jitbot's time goes, from the ARM stand-in's log of the calls of each grant."""
    calls = stack.arm.requests()
    before_put, after_put, per_grant = [], [], []
    kinds: Counter[str] = Counter()
    for item in rounds:
        window = [c for c in calls if item["clicked"] <= c["time"] <= item["opened_at"]]
        kinds.update(f"{c['method']} {call_kind(c['path'])}" for c in window)
        rule = f"/securityRules/jitbot-allow-r{item['id']}"
        puts = [c for c in window if c["method"] == "PUT" and c["path"].endswith(rule)]
        if puts:
            before_put.append(puts[0]["time"] - item["clicked"])
            after_put.append(item["opened_at"] - puts[0]["time"])
        per_grant.append(len(window))
    return {
        "click_to_put": percentile(before_put, 50),
        "put_to_granted": percentile(after_put, 50),
        "arm_calls_per_grant": percentile([float(n) for n in per_grant], 50),
        "calls_by_kind": {k: round(v / len(rounds), 1) for k, v in kinds.most_common()},
    }


def _report(raw: list[float], rounds: list[dict[str, Any]], breakdown: dict[str, Any]) -> dict:
    granted = [r["granted"] for r in rounds]
    acks = [r["ack"] for r in rounds]
    raw50, jit50 = percentile(raw, 50), percentile(granted, 50)
    rows = [
        ["raw create_or_update + LRO", len(raw), ms(raw50), ms(percentile(raw, 90)), ms(max(raw))],
        [
            "jitbot click -> active",
            len(granted),
            ms(jit50),
            ms(percentile(granted, 90)),
            ms(max(granted)),
        ],
        [
            "jitbot click ack",
            len(acks),
            ms(percentile(acks, 50)),
            ms(percentile(acks, 90)),
            ms(max(acks)),
        ],
    ]
    print(table(["path", "rounds", "p50", "p90", "max"], rows))
    budget = raw50 * TARGET_RATIO + TARGET_SLACK_MS / 1000
    print(
        f"ratio of medians jitbot/raw: x{jit50 / raw50:.2f}; jitbot adds {ms(jit50 - raw50)} "
        f"(target: at most x{TARGET_RATIO:.2f} + {TARGET_SLACK_MS:.0f} ms = {ms(budget)})"
    )
    print(
        f"median split: click -> PUT reaches ARM {ms(breakdown['click_to_put'])}, "
        f"PUT -> active {ms(breakdown['put_to_granted'])}; "
        f"{breakdown['arm_calls_per_grant']:.0f} ARM calls per grant"
    )
    print(
        "ARM calls per grant, by kind: "
        + ", ".join(f"{kind} {count:g}" for kind, count in breakdown["calls_by_kind"].items())
    )
    return {
        "rounds": len(raw),
        "raw_p50_ms": round(raw50 * 1000, 2),
        "jitbot_p50_ms": round(jit50 * 1000, 2),
        "ratio_p50": round(jit50 / raw50, 2),
        "added_ms": round((jit50 - raw50) * 1000, 2),
        "ack_p50_ms": round(percentile(acks, 50) * 1000, 2),
        "click_to_put_ms": round(breakdown["click_to_put"] * 1000, 2),
        "put_to_granted_ms": round(breakdown["put_to_granted"] * 1000, 2),
        "arm_calls_per_grant": breakdown["arm_calls_per_grant"],
        "arm_calls_by_kind": breakdown["calls_by_kind"],
    }
