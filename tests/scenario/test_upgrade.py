"""Upgrading from the first release with a grant in flight: the new bot migrates the
database at start and still closes the grant on time, restoring the NSG exactly."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot.sandbox import SANDBOX_ARM_TOKEN, SandboxStack
from jitcore import migrations
from jitcore.db import make_engine
from jitcore.model import RequestStatus
from jitcore.planner import comparable
from sandbox.arm.testing import network_client
from tests.scenario.harness import (
    APPROVAL_CHANNEL,
    APPROVER,
    REQUESTER,
    Driver,
    wait_until,
    write_policy,
)

GROUP = "rg-jit-demo"
NSG = "nsg-web01"
RULE = "jitbot-allow-r1"
LIFETIME = timedelta(seconds=3)


class FirstReleaseLeftovers(SandboxStack):
    """A stack whose database and NSG hold what the first release left running: before
    the new bot starts, an active request (in the 0001 schema) and its rule in the NSG."""

    def __init__(self, workdir: Path, database_url: str) -> None:
        super().__init__(
            workdir,
            database_url=database_url,
            policy_file=write_policy(workdir),
            sweep_interval=1.0,
        )
        self.seed_rules: list[dict[str, Any]] = []
        self.ends_at: datetime | None = None

    def start_bot(self) -> None:
        if self.ends_at is None:
            self.ends_at = (datetime.now(UTC) + LIFETIME).replace(microsecond=0)
            self.seed_rules = self.arm.snapshot_nsg(nsg_id(self))
            rule = allow_rule(self.ends_at)
            write_rule_as_another_writer(self, rule)
            write_first_release_rows(
                self.database_url, nsg_id(self), self.ends_at, rule, self.seed_rules
            )
        super().start_bot()


def nsg_id(stack: SandboxStack) -> str:
    return (
        f"/subscriptions/{stack.arm.subscription_id}/resourceGroups/{GROUP}"
        f"/providers/Microsoft.Network/networkSecurityGroups/{NSG}"
    )


def allow_rule(ends_at: datetime) -> dict[str, Any]:
    """The rule the first release wrote for request 1, named and described as it did."""
    return {
        "description": f"jitbot r1 until {ends_at:%Y-%m-%dT%H:%M:%SZ} for vm-web01",
        "protocol": "Tcp",
        "sourcePortRange": "*",
        "destinationPortRange": "22",
        "sourceAddressPrefix": "203.0.113.7/32",
        "destinationAddressPrefix": "10.0.1.4",
        "access": "Allow",
        "priority": 999,
        "direction": "Inbound",
    }


def write_rule_as_another_writer(stack: SandboxStack, rule: dict[str, Any]) -> None:
    client = network_client(stack.arm, token=SANDBOX_ARM_TOKEN, polling_interval=0.05)
    try:
        client.security_rules.begin_create_or_update(
            GROUP, NSG, RULE, {"properties": rule}, api_version="2025-05-01"
        ).result()
    finally:
        client.close()


def write_first_release_rows(
    database_url: str,
    nsg: str,
    ends_at: datetime,
    rule: dict[str, Any],
    baseline: list[dict[str, Any]],
) -> None:
    """Revision 0001, then the request and its grant in plain SQL of that schema."""
    engine = make_engine(database_url)
    migrations.upgrade(engine, migrations.FIRST_RELEASE)
    opened_at = ends_at - LIFETIME
    utc = sa.DateTime(timezone=True)
    request = sa.text(
        "INSERT INTO access_request (id, team_id, requester_id, vm_name, ports, protocol,"
        " source_prefix, duration_seconds, reason, policy_name, policy_version, status,"
        " row_version, created_at, decided_at, decided_by, opened_at, ends_at,"
        " approval_channel) VALUES (1, 'T0TEAM0001', :requester, 'vm-web01', '22', 'Tcp',"
        " '203.0.113.7/32', 3, 'deploy', 'web-admin', 1, 'active', 3, :opened, :opened,"
        " :approver, :opened, :ends, :channel)"
    ).bindparams(sa.bindparam("opened", type_=utc), sa.bindparam("ends", type_=utc))
    grant = sa.text(
        'INSERT INTO "grant" (id, request_id, nsg_id, rule_name, priority, state, rule,'
        " baseline, created_at, updated_at) VALUES (1, 1, :nsg, :name, 999, 'present',"
        " :rule, :baseline, :opened, :opened)"
    ).bindparams(
        sa.bindparam("rule", type_=sa.JSON),
        sa.bindparam("baseline", type_=sa.JSON),
        sa.bindparam("opened", type_=utc),
    )
    try:
        with engine.begin() as connection:
            connection.execute(
                request,
                {
                    "requester": REQUESTER,
                    "approver": APPROVER,
                    "channel": APPROVAL_CHANNEL,
                    "opened": opened_at,
                    "ends": ends_at,
                },
            )
            connection.execute(
                grant,
                {"nsg": nsg, "name": RULE, "rule": rule, "baseline": baseline, "opened": opened_at},
            )
    finally:
        engine.dispose()


@pytest.fixture
def stack(tmp_path: Path, database_url: str) -> Iterator[FirstReleaseLeftovers]:
    running = FirstReleaseLeftovers(tmp_path, database_url)
    try:
        yield running.start()
    finally:
        running.stop()


def test_a_grant_left_by_the_first_release_expires_on_time_after_the_upgrade(
    stack: FirstReleaseLeftovers,
) -> None:
    driver = Driver(stack)
    assert stack.ends_at is not None
    assert stack.bot is not None
    assert migrations.current(stack.bot.store.engine) == migrations.head()
    assert RULE in [r["name"] for r in stack.arm.snapshot_nsg(nsg_id(stack))]

    closed = driver.wait_status(1, RequestStatus.CLOSED, timeout=15)

    assert closed.ends_at == stack.ends_at
    lateness = (closed.closed_at - stack.ends_at).total_seconds()
    assert 0 <= lateness < 3, lateness
    after = stack.arm.snapshot_nsg(nsg_id(stack))
    assert RULE not in [r["name"] for r in after]
    assert comparable(after) == comparable(stack.seed_rules)
    deletes = [
        r for r in stack.arm.requests() if r["method"] == "DELETE" and r["path"].endswith(RULE)
    ]
    assert len(deletes) == 1
    [grant] = stack.bot.engine.grants_of(1)
    assert (grant.kind, grant.state) == ("nsg", "removed")
    dm = wait_until(
        lambda: [t for t in driver.dms_to(REQUESTER) if "expired" in t], what="the expiry DM"
    )
    assert "restored exactly as they were" in dm[-1]
