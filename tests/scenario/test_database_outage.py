"""The database going away for a while: nothing crashes, nothing is lost, and a grant
whose end falls in the outage is closed as soon as the database is back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from bot.sandbox import SandboxStack
from jitcore.model import RequestStatus
from tests.scenario.harness import REQUESTER, Driver, wait_until, write_policy
from tests.scenario.tcp_proxy import CuttableProxy

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
def outage(tmp_path: Path, postgres_url: str) -> Iterator[tuple[SandboxStack, CuttableProxy]]:
    """The bot on PostgreSQL through a proxy the test can cut (the outage is simulated on
    the network path, which is how a managed database disappears)."""
    from jitcore.db import make_engine
    from tests.conftest import _reset

    engine = make_engine(postgres_url)
    _reset(engine)
    engine.dispose()
    url = make_url(postgres_url)
    proxy = CuttableProxy(url.host or "127.0.0.1", url.port or 5432)
    through_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    stack = SandboxStack(
        tmp_path,
        database_url=through_proxy,
        policy_file=write_policy(tmp_path),
        sweep_interval=1.0,
    ).start()
    try:
        yield stack, proxy
    finally:
        proxy.restore()
        stack.stop()
        proxy.close()


def test_a_grant_ending_during_a_database_outage_is_closed_when_it_returns(
    outage: tuple[SandboxStack, CuttableProxy],
) -> None:
    stack, proxy = outage
    driver = Driver(stack)
    status, reply = driver.command("request vm-web01 22 5s from 203.0.113.7")
    request_id = int(reply["text"].split("#", 1)[1].split()[0])
    wait_until(lambda: driver.request(request_id).approval_ts, what="the approval message")
    driver.click("jit_approve", request_id)
    active = driver.wait_status(request_id, RequestStatus.ACTIVE)

    proxy.cut()
    status_during, _ = driver.command("list")
    time.sleep(max(0.0, (active.ends_at.timestamp() - time.time())) + 3)
    rule_names = [r["name"] for r in stack.arm.snapshot_nsg(_nsg(stack))]
    assert f"jitbot-allow-r{request_id}" in rule_names
    proxy.restore()

    closed = driver.wait_status(request_id, RequestStatus.CLOSED, timeout=20)
    assert status_during == 503
    assert f"jitbot-allow-r{request_id}" not in [
        r["name"] for r in stack.arm.snapshot_nsg(_nsg(stack))
    ]
    assert closed.closed_at > active.ends_at
    told = wait_until(
        lambda: [t for t in driver.dms_to(REQUESTER) if "expired" in t], timeout=30, what="DM"
    )
    assert len(told) == 1
    # Every notice of the request is delivered, none given up, the ones whose delivery the
    # outage interrupted included.
    notices = wait_until(
        lambda: (
            (ns := stack.bot.store.notifications(request_id))
            and all(n.sent_at is not None for n in ns)
            and ns
        ),
        timeout=30,
        what="every notice to be delivered",
    )
    assert [n.event for n in notices if n.last_error] == []
    actions = [e.action for e in stack.bot.store.audit_events(request_id)]
    assert actions[0] == "requested" and actions[-1] == "closed"
    assert "rule_removed" in actions


def _nsg(stack: SandboxStack) -> str:
    return (
        f"/subscriptions/{stack.arm.subscription_id}/resourceGroups/rg-jit-demo"
        "/providers/Microsoft.Network/networkSecurityGroups/nsg-web01"
    )
